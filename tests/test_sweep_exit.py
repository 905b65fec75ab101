"""``exit_process`` (the end of ``sweeps/<model>.py``): the exit code, every exit handler, the
non-daemon threads and buffered output survive skipping the interpreter's teardown."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest


@pytest.mark.parametrize("code", [0, 1, 130, None])
def test_exit_process_keeps_code_handlers_threads_and_output(tmp_path, code):
    script = textwrap.dedent(f"""
        import atexit, sys, threading, time
        from pathlib import Path
        from merc.sweep.cli import exit_process
        out = Path({str(tmp_path)!r})
        atexit.register(lambda: (out / "atexit").write_text("ran"))
        def late():
            time.sleep(0.3)
            (out / "thread").write_text("done")
        threading.Thread(target=late).start()
        sys.stdout.write("no newline, still buffered")
        print("to stderr", file=sys.stderr, end="")
        exit_process({code!r})
        (out / "after").write_text("must not run")
        """)
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       stdin=subprocess.DEVNULL)
    assert p.returncode == (code or 0)
    assert p.stdout == "no newline, still buffered"
    assert p.stderr == "to stderr"
    assert (tmp_path / "atexit").read_text() == "ran"
    assert (tmp_path / "thread").read_text() == "done"
    assert not (tmp_path / "after").exists()


def test_sweep_scripts_end_with_exit_process():
    from pathlib import Path
    repo = Path(__file__).resolve().parents[1]
    for script in sorted((repo / "sweeps").glob("*.py")):
        text = script.read_text()
        assert f'exit_process(model_script_main("{script.stem}"))' in text, script.name
