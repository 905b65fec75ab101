"""Bad sweep / train arguments and specs: exit 2 with one line naming the argument, key or file,
before Ray or MLflow starts; a sweep that stops after its parent run exists leaves it FAILED with
the reason, never RUNNING (issue 10)."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SPEC = """
model: mmgcn
dataset: synthetic:tiny
metric: val_wf1
fixed: {epochs: 1}
search:
  num_samples: 2
  space:
    dropout: {type: uniform, low: 0.1, high: 0.5}
studies:
  s:
    axes: {dropout: [0.1, 0.2]}
    seeds: [0]
"""

# name: (spec text or None for SPEC, argv after `sweep run SPEC`, text the line must contain)
SWEEP_CASES = {
    "epochs-0": (None, ["--study", "s", "--epochs", "0"], "--epochs"),
    "epochs-negative": (None, ["--study", "s", "--epochs", "-3"], "--epochs"),
    "num-samples-0": (None, ["--search", "--num-samples", "0"], "--num-samples"),
    "num-samples-negative": (None, ["--search", "--num-samples", "-2"], "--num-samples"),
    "cpus-per-trial-0": (None, ["--study", "s", "--cpus-per-trial", "0"], "--cpus-per-trial"),
    "set-modalities-XYZ": (None, ["--study", "s", "--set", "modalities=XYZ"], "modalities"),
    "missing-data-dir": (None, ["--study", "s", "--data-dir", "/nonexistent/merc-data"],
                         "--data-dir"),
    "unknown-study": (None, ["--study", "nope"], "nope"),
    "categorical-modalities-XYZ": (SPEC.replace("dropout: [0.1, 0.2]", "modalities: [AT, XYZ]"),
                                   ["--study", "s"], "modalities"),
    "search-categorical-XYZ": (SPEC.replace("dropout: {type: uniform, low: 0.1, high: 0.5}",
                                            "modalities: {type: categorical, values: [T, XYZ]}"),
                               ["--search"], "modalities"),
    "metric-is-a-test-metric": (SPEC.replace("metric: val_wf1", "metric: test_wf1"),
                                ["--study", "s"], "test metric"),
    "spec-not-yaml": ("model: [unclosed\n", ["--study", "s"], "spec.yaml"),
    "spec-epochs-0": (SPEC.replace("epochs: 1", "epochs: 0"), ["--study", "s"], "epochs"),
}


def _run(args, cwd):
    return subprocess.run([sys.executable, "-m", "merc.cli", *args], capture_output=True,
                          text=True, timeout=180, cwd=cwd)


class _Result:
    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def _run_in_process(args, cwd, capsys, monkeypatch):
    """``merc`` in this process (its torch/model imports are already paid for); used for the
    cases that parse a spec or a training config - nothing there can raise a signal."""
    from merc.cli import main
    monkeypatch.chdir(cwd)
    capsys.readouterr()
    try:
        code = main(args)
    except SystemExit as err:   # argparse
        code = err.code
    out = capsys.readouterr()
    return _Result(code, out.out, out.err)


def _one_line(r, needle):
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2, (r.returncode, r.stdout[-1500:], r.stderr[-1500:])
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert needle in lines[0], lines[0]
    return lines[0]


#: checked before the spec is read: run in a subprocess (fast, no torch import)
EARLY = {"epochs-0", "epochs-negative", "num-samples-0", "num-samples-negative",
         "cpus-per-trial-0"}


@pytest.mark.parametrize("name", sorted(SWEEP_CASES))
def test_bad_sweep_argument_exit_2_before_ray(tmp_path, name, capsys, monkeypatch):
    text, argv, needle = SWEEP_CASES[name]
    spec = tmp_path / "spec.yaml"
    spec.write_text(textwrap.dedent(text if text is not None else SPEC))
    args = ["sweep", "run", str(spec), *argv, "--storage", str(tmp_path / "ray")]
    r = _run(args, tmp_path) if name in EARLY else \
        _run_in_process(args, tmp_path, capsys, monkeypatch)
    _one_line(r, needle)
    assert "Ray" not in r.stdout + r.stderr
    assert not (tmp_path / "mlflow.db").exists()      # no tracking store touched
    assert not (tmp_path / "ray").exists()            # no sweep directory reserved


@pytest.mark.parametrize("argv,needle", [
    (["--epochs", "0"], "epochs"),
    (["--set", "modalities=XYZ"], "modalities"),
    (["--set", "batch_size=0"], "batch_size"),
    (["--data", "/nonexistent/merc-data"], "/nonexistent/merc-data"),
])
def test_bad_train_argument_exit_2(tmp_path, tiny_dir, argv, needle, capsys, monkeypatch):
    args = ["train", "mmgcn", "--data", str(tiny_dir), *argv]
    _one_line(_run_in_process(args, tmp_path, capsys, monkeypatch), needle)


def test_validate_refuses_test_metric(tmp_path, capsys, monkeypatch):
    spec = tmp_path / "spec.yaml"
    spec.write_text(textwrap.dedent(SPEC.replace("metric: val_wf1", "metric: test_acc")))
    line = _one_line(_run_in_process(["sweep", "validate", str(spec)], tmp_path, capsys,
                                     monkeypatch), "metric")
    assert "val_acc" in line


@pytest.mark.parametrize("fault", [KeyboardInterrupt, RuntimeError])
def test_parent_run_marked_failed_on_any_exit(tmp_path, monkeypatch, fault):
    """A Ctrl-C or an error after the parent run exists (here injected where the trials would
    run; Ray itself is not needed for that) leaves the parent FAILED with merc.status and
    merc.reason, not RUNNING."""
    from mlflow.tracking import MlflowClient

    from merc.sweep.runner import _Sweep, options_from, run_sweep

    def boom(self, *args, **kw):
        raise fault("injected at the trials")
    monkeypatch.setattr(_Sweep, "start_ray", lambda self: None)
    monkeypatch.setattr(_Sweep, "run_stage", boom)
    monkeypatch.chdir(tmp_path)
    spec = tmp_path / "spec.yaml"
    spec.write_text(textwrap.dedent(SPEC))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    opts = options_from(spec=str(spec), study="s", mlflow_uri=uri, storage=str(tmp_path / "ray"),
                        print_fn=lambda *a: None)
    with pytest.raises(fault):
        run_sweep(opts)
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("mmgcn-s")
    (parent,) = client.search_runs([exp.experiment_id], "tags.`merc.role` = 'parent'")
    assert parent.info.status == "FAILED"
    assert parent.data.tags["merc.status"] == ("interrupted" if fault is KeyboardInterrupt
                                               else "failed")
    assert "injected at the trials" in parent.data.tags["merc.reason"]


def test_sweep_on_a_broken_dataset_is_one_line_before_ray(tmp_path, tiny_dir, capsys,
                                                          monkeypatch):
    """The driver checks the dataset as a trial would open it: one message, not N errored
    trials."""
    import shutil

    import numpy as np
    d = tmp_path / "broken"
    shutil.copytree(tiny_dir, d)
    lab = np.load(d / "valid" / "labels.npy")
    np.save(d / "valid" / "labels.npy", lab + 50)
    spec = tmp_path / "spec.yaml"
    spec.write_text(textwrap.dedent(SPEC))
    r = _run_in_process(["sweep", "run", str(spec), "--study", "s", "--data-dir", str(d),
                         "--storage", str(tmp_path / "ray")], tmp_path, capsys, monkeypatch)
    _one_line(r, str(d / "valid" / "labels.npy"))
    assert not (tmp_path / "mlflow.db").exists()


def test_best_refuses_a_test_metric(tmp_path, monkeypatch, capsys):
    """`merc best --metric test_wf1` would pick the champion on the test split: exit 2, one
    line naming --metric, before any tracking store is opened."""
    monkeypatch.chdir(tmp_path)
    from merc.sweep.cli import main
    rc = main(["best", "--experiment", "x", "--metric", "test_wf1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--metric" in err[0] and "test_wf1" in err[0], err
    assert not (tmp_path / "mlflow.db").exists()
