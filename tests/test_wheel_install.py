"""A normal (non-editable) install runs the sweep scripts: the wheel ships ``search_spaces/`` as
package data, and ``sweeps/spcl.py`` copied alone into an empty directory finds its spec inside
the installed package and runs a quick study on an existing Ray cluster (``--address``).

The wheel is built from a copy of the project's sources (no build artefacts in the working tree)
and installed with ``pip install --no-deps --target DIR``; the script runs with the project's
interpreter and ``PYTHONPATH=DIR``, so ``merc`` comes from DIR (it precedes the editable install's
finder, which sits at the end of ``sys.meta_path``), while torch, Ray etc. come from the venv.
The script runs with DIR as its working directory: Ray puts the driver's working directory first
on its workers' ``sys.path``, so the trials import the installed ``merc`` too.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.integration
def test_wheel_installed_script_runs_a_study(tmp_path, ray_local):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(REPO / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(REPO / "merc", src / "merc", ignore=ignore)
    shutil.copytree(REPO / "search_spaces", src / "search_spaces", ignore=ignore)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    r = subprocess.run(pip + ["wheel", "--no-deps", "--no-build-isolation", str(src), "-w",
                              str(tmp_path / "dist")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    wheel = next((tmp_path / "dist").glob("merc_sweeps-*.whl"))
    shipped = {n for n in zipfile.ZipFile(wheel).namelist() if n.startswith("merc/search_spaces/")}
    assert shipped == {f"merc/search_spaces/{p.name}" for p in (REPO / "search_spaces").glob("*.yaml")}
    site = tmp_path / "site"
    r = subprocess.run(pip + ["install", "--no-deps", "--target", str(site), str(wheel)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(REPO / "sweeps" / "spcl.py", alone / "spcl.py")
    env = dict(os.environ, PYTHONPATH=str(site), RAY_AUTH_MODE="disabled",
               TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S="0")
    env.pop("RAY_ADDRESS", None)
    where = subprocess.run([sys.executable, "-c", "import merc.sweep.cli as c; print(c.__file__)"],
                           cwd=site, env=env, capture_output=True, text=True, timeout=120)
    assert Path(where.stdout.strip()).is_relative_to(site), where.stdout + where.stderr
    r = subprocess.run([sys.executable, str(alone / "spcl.py"), "--study", "pacing", "--quick",
                        "--epochs", "1", "--address", ray_local["address"], "--max-concurrent", "2",
                        "--mlflow-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
                        "--storage", str(tmp_path / "ray_results")],
                       cwd=site, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    from mlflow.tracking import MlflowClient
    c = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = c.get_experiment_by_name("spcl-pacing")
    parent = c.search_runs([exp.experiment_id], "tags.`merc.role` = 'parent'")[0]
    # the spec came from the installed package, not from the repository
    assert parent.data.params["spec_file"] == str(site / "merc" / "search_spaces" / "spcl.yaml")
    runs = c.search_runs([exp.experiment_id], "tags.`merc.stage` = 'pacing'")
    assert len(runs) == 4 and all(x.data.tags["merc.status"] == "completed" for x in runs)
    # trial processes are reused (reuse_actors): 4 trials on 2 slots ran in at most 2 processes
    import json
    pids = {json.loads(ln)["pid"] for f in (tmp_path / "ray_results").glob("*/*/result.json")
            for ln in f.read_text().splitlines() if ln.strip()}
    assert 1 <= len(pids) <= 2, pids
    # Tune's JSON and CSV result files, no TensorBoard event files (tensorboardX imports torch
    # into the driver; MLflow is the record)
    trial_dirs = [f.parent for f in (tmp_path / "ray_results").glob("*/*/result.json")]
    assert len(trial_dirs) == 4 and all((d / "progress.csv").is_file() for d in trial_dirs)
    assert not list((tmp_path / "ray_results").glob("*/*/events.out.tfevents*"))
