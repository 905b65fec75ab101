"""Integration tests of the sweep engine on the tiny synthetic data (one shared local Ray).

Budget: every sweep here uses ``synthetic:tiny`` with 1-3 epochs and tiny models.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]
SPEC = str(REPO / "search_spaces" / "corect.yaml")
SCRIPT = str(REPO / "sweeps" / "corect.py")


def _client(uri):
    from mlflow.tracking import MlflowClient
    return MlflowClient(uri)


def _runs(uri, experiment, extra=""):
    c = _client(uri)
    exp = c.get_experiment_by_name(experiment)
    if exp is None:
        return [], []
    runs = c.search_runs([exp.experiment_id], extra, max_results=1000)
    parents = [r for r in runs if r.data.tags.get("merc.role") == "parent"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return parents, children


def _main(argv):
    from merc.sweep.cli import model_script_main
    return model_script_main("corect", ["--spec", SPEC] + argv)


def test_study_window_quick(ray_local, tmp_path, monkeypatch):
    """`python sweeps/corect.py --study window --quick`: one parent, one child per (point, seed)
    with per-epoch metrics; table (CSV + Markdown) and heatmap on the parent."""
    monkeypatch.chdir(tmp_path)
    assert _main(["--study", "window", "--quick"]) == 0
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    parents, children = _runs(uri, "corect-window")
    assert len(parents) == 1
    keys = sorted((r.data.tags["merc.point"], r.data.tags["merc.seed"]) for r in children)
    assert len(keys) == 18 and len(set(keys)) == 18                     # 3 x 3 x 2 seeds
    assert {k[1] for k in keys} == {"0", "1"}
    c = _client(uri)
    for r in children:
        assert r.data.tags["merc.status"] == "completed"
        assert r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        hist = c.get_metric_history(r.info.run_id, "val_wf1")
        assert sorted(m.step for m in hist) == list(range(1, 11))        # quick: 10 epochs
        assert r.info.run_name.startswith("P") and " · s" in r.info.run_name
    arts = {a.path for a in c.list_artifacts(parents[0].info.run_id)}
    arts |= {a.path for a in c.list_artifacts(parents[0].info.run_id, "plots")}
    assert {"window_table.csv", "window_table.md", "results.csv", "spec.yaml",
            "plots/window_heatmap.png"} <= arts
    md = c.download_artifacts(parents[0].info.run_id, "window_table.md", str(tmp_path))
    text = Path(md).read_text()
    assert "window_past=11,window_future=9" in text and "reference" in text
    assert "synthetic IEMOCAP-6-shaped data" in text.splitlines()[0]
    # the study's shape on the demo data: every cell far above the majority class, and past
    # context beats future context (P=11, F=0 over P=0, F=9)
    import pandas as pd
    floor = float(text.split("| *majority class (")[1].split("|")[3])
    tab = pd.read_csv(c.download_artifacts(parents[0].info.run_id, "window_table.csv",
                                           str(tmp_path))).set_index("point")
    assert (tab.test_mean > floor + 15).all(), (tab.test_mean.to_dict(), floor)
    assert tab.test_mean["window_past=11,window_future=0"] > \
        tab.test_mean["window_past=0,window_future=9"]


def test_search_quick_prunes_and_best_reproduces(ray_local, tmp_path, monkeypatch):
    """A quick search prunes with Optuna's pruner (PRUNED in Optuna, tagged in MLflow);
    `merc best` writes best.yaml, registers the champion; retraining reproduces its val w-F1."""
    import optuna
    import yaml
    monkeypatch.chdir(tmp_path)
    assert _main(["--search", "--quick", "--num-samples", "8", "--confirm-top", "2",
                  "--confirm-seeds", "1"]) == 0
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    parents, children = _runs(uri, "corect-search")
    confirm = [r for r in children if r.data.tags["merc.stage"] == "confirm"]
    children = [r for r in children if r.data.tags["merc.stage"] == "search"]
    assert len(parents) == 1 and len(children) == 8
    # top-2 completed configurations re-run with one fresh seed each
    assert len(confirm) == 2 and {r.data.tags["merc.seed"] for r in confirm} == {"100"}
    assert all(r.data.tags["merc.status"] == "completed" for r in confirm)
    pruned = [r for r in children if r.data.tags["merc.status"] == "pruned"]
    assert pruned, [r.data.tags["merc.status"] for r in children]
    assert "optuna MedianPruner" in pruned[0].data.tags["merc.reason"]
    ostore = parents[0].data.tags["merc.optuna_storage"]
    study = optuna.load_study(study_name=parents[0].data.tags["merc.sweep_id"], storage=ostore)
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.PRUNED) == len(pruned)
    assert states.count(optuna.trial.TrialState.COMPLETE) == \
        sum(r.data.tags["merc.status"] == "completed" for r in children)
    # merc best
    from merc.sweep.cli import main
    assert main(["best", "--experiment", "corect-search", "--out", "best.yaml"]) == 0
    best = yaml.safe_load(Path("best.yaml").read_text())
    assert best["selected_from"].startswith("confirmation")
    assert best["champion"]["run_id"] in {r.info.run_id for r in confirm}
    mv = _client(uri).get_model_version_by_alias("merc-corect", "champion")
    assert mv.run_id == best["champion"]["run_id"]
    from merc.sweep.spec import load_fixed_config
    model, ds, flat = load_fixed_config("best.yaml")
    assert model == "corect" and ds == "synthetic:demo" and flat["seed"] == best["champion"]["seed"]
    from merc.sweep.best import reproduce
    got = reproduce("best.yaml")
    assert got["val_wf1"] == best["champion"]["sel_val_wf1"]   # exactly, on CPU
    import json
    r = subprocess.run([sys.executable, "-m", "merc.cli", "train", "--config", "best.yaml",
                        "--json", "--quiet"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout.strip().splitlines()[-1])["val_wf1"] == \
        best["champion"]["sel_val_wf1"]
    # the registered artifact rebuilds the model from state dict + JSON config
    from merc.train import load_model
    local = _client(uri).download_artifacts(mv.run_id, "model/model.pt", str(tmp_path))
    m, cfg = load_model(local)
    assert cfg["flat"]["seed"] == flat["seed"]
    # ... and as an MLflow pyfunc model (models from code): load by alias, predict on a batch
    import mlflow.pyfunc
    from mlflow.tracking import MlflowClient as _C  # noqa: F401
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        pf = mlflow.pyfunc.load_model("models:/merc-corect@champion")
    finally:
        del os.environ["MLFLOW_TRACKING_URI"]
    from merc.data.dataset import MercData
    from merc.data.synthetic import resolve_data
    data = MercData(resolve_data("synthetic:demo"), flat["modalities"])
    batch = data["test"].batch([0, 1, 2])
    pred = pf.predict({**{k: v.numpy() for k, v in batch.features.items()},
                       "lengths": batch.lengths.numpy(), "speakers": batch.speakers.numpy()})
    assert len(pred) == int(batch.lengths.sum()) and set(pred.label) <= set(data.meta.label_names)
    # pruned trials: ✂ name, KILLED, no partial sel_* metrics
    for r in pruned:
        assert r.info.run_name.startswith("✂ #") and r.info.status == "KILLED"
        assert not any(k.startswith("sel_") for k in r.data.metrics)


FAULTS = """
model: corect
fixed: {epochs: 2, hidden_size: 16, text_encoder_ff: 32, self_att_layers: 1,
        text_encoder_layers: 1, pcm_layers: 1, batch_size: 4}
studies:
  faults:
    points:
      ok: {}
      raises: {pcm_heads: 3}        # CORECT raises: pcm_heads must divide hidden_size
      nan: {lr: 1.0e+10}            # the loss goes NaN: fit returns 'diverged'
    seeds: [0]
    reference: ok
"""


def test_failing_trials_end_errored(ray_local, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = tmp_path / "faults.yaml"
    spec.write_text(FAULTS)
    from merc.sweep.cli import model_script_main
    rc = model_script_main("corect", ["--spec", str(spec), "--study", "faults",
                                      "--dataset", "tiny", "--retries", "0"])
    assert rc == 0
    _, children = _runs(f"sqlite:///{tmp_path / 'mlflow.db'}", "corect-faults")
    by = {r.data.tags["merc.point"]: r for r in children}
    assert set(by) == {"ok", "raises", "nan"}
    assert by["ok"].data.tags["merc.status"] == "completed" and by["ok"].info.status == "FINISHED"
    for k, frag in (("raises", "pcm_heads"), ("nan", "non-finite")):
        r = by[k]
        assert r.data.tags["merc.status"] == "errored", k
        assert r.info.status == "FAILED"
        assert frag in r.data.tags["merc.reason"], r.data.tags["merc.reason"]
    assert by["nan"].data.tags["merc.fit_status"] == "diverged"


def _wait_children(uri, experiment, n, timeout=240, status="FINISHED"):
    t0 = time.time()
    while time.time() - t0 < timeout:
        try:
            _, ch = _runs(uri, experiment)
        except Exception:
            ch = []
        done = [r for r in ch if r.info.status == status]
        if len(done) >= n:
            return done
        time.sleep(1.0)
    raise AssertionError(f"no {n} finished children after {timeout}s")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_interrupt_and_resume(ray_local, tmp_path, monkeypatch, sig):
    """Interrupt the driver mid-sweep, then --resume: the sweep finishes; no finished trial is
    rerun or lost; no MLflow child run is duplicated."""
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["--study", "speaker", "--quick", "--name", "resume-me", "--max-concurrent", "1"]
    env = dict(os.environ, RAY_ADDRESS=ray_local["address"], PYTHONUNBUFFERED="1")
    log = open(tmp_path / "driver.log", "w")
    proc = subprocess.Popen([sys.executable, SCRIPT, "--spec", SPEC, *args,
                             "--address", ray_local["address"]], cwd=tmp_path, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    killed_worker, own = None, set()
    try:
        done_before = _wait_children(uri, "corect-speaker", 1)
        if sig == signal.SIGKILL:
            # a killed trial worker: Ray retries the trial (--retries 1), MLflow counts attempts
            killed_worker = _trial_pids(tmp_path)[-1]
            os.kill(killed_worker, signal.SIGKILL)
            _wait_children(uri, "corect-speaker", 2)
            own = set(_trial_pids(tmp_path)) - {killed_worker}   # this driver's workers
        proc.send_signal(sig)
        rc = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    log.close()
    if sig == signal.SIGINT:
        assert rc == 130, (tmp_path / "driver.log").read_text()[-3000:]
    before = {r.data.tags["ray.trial_id"]: r.info.end_time for r in
              _runs(uri, "corect-speaker")[1] if r.info.status == "FINISHED"}
    assert before and len(before) < 4
    assert _main(args + ["--resume"]) == 0
    parents, children = _runs(uri, "corect-speaker")
    assert len(parents) == 1
    tids = [r.data.tags["ray.trial_id"] for r in children]
    assert len(tids) == 4 and len(set(tids)) == 4, tids          # none duplicated, none lost
    keys = {(r.data.tags["merc.point"], r.data.tags["merc.seed"]) for r in children}
    assert len(keys) == 4
    c = _client(uri)
    for r in children:
        assert r.info.status == "FINISHED" and r.data.tags["merc.status"] == "completed"
        steps = [m.step for m in c.get_metric_history(r.info.run_id, "val_wf1")]
        epochs = int(r.data.params["epochs"])
        assert sorted(steps) == list(range(1, epochs + 1)), steps   # no epoch logged twice
        tid = r.data.tags["ray.trial_id"]
        if tid in before:
            assert r.info.end_time == before[tid]                # finished trial not rerun
    attempts = sorted(int(r.data.tags["merc.attempts"]) for r in children)
    if sig == signal.SIGKILL:
        assert attempts[-1] == 2 and attempts[:-1] == [1, 1, 1], attempts   # the retried one
        # the killed driver's trial workers went with it: no orphaned Ray processes of its own
        assert own and not [p for p in own if _alive(p)], own
    else:
        assert attempts == [1, 1, 1, 1], attempts


def _trial_pids(tmp_path) -> list:
    """Worker pids of the trials so far, from the results Tune logged (oldest first)."""
    import json
    pids = []
    for f in sorted((tmp_path / "ray_results").glob("resume-me/*/result.json"),
                    key=lambda f: f.stat().st_mtime):
        for line in f.read_text().splitlines():
            pid = json.loads(line).get("pid") if line.strip() else None
            if pid and pid not in pids:
                pids.append(pid)
    return pids


def _alive(pid: int, grace: float = 20.0) -> bool:
    t0 = time.time()
    while time.time() - t0 < grace:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        try:    # a zombie is dead: reaped by its parent later
            if Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z":
                return False
        except OSError:
            return False
        time.sleep(0.5)
    return True


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_mlflow_fails_fast(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    from merc.sweep.cli import model_script_main
    t0 = time.time()
    rc = model_script_main("corect", ["--spec", SPEC, "--study", "speaker", "--quick",
                                      "--mlflow-uri", f"http://127.0.0.1:{_free_port()}"])
    assert rc == 3 and time.time() - t0 < 30
    assert not (tmp_path / "ray_results").exists() or not any((tmp_path / "ray_results").iterdir())


def test_real_mlflow_server(ray_local, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    port = _free_port()
    srv = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
         f"sqlite:///{tmp_path / 'server.db'}", "--artifacts-destination",
         str(tmp_path / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"], cwd=tmp_path, stdout=open(tmp_path / "server.log", "w"),
        stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        import urllib.request
        t0 = time.time()
        while True:
            try:
                urllib.request.urlopen(uri + "/health", timeout=2)
                break
            except Exception:
                assert time.time() - t0 < 120, (tmp_path / "server.log").read_text()[-2000:]
                time.sleep(1)
        rc = _main(["--study", "speaker", "--quick", "--seeds", "0", "--epochs", "1",
                    "--mlflow-uri", uri])
        assert rc == 0
        parents, children = _runs(uri, "corect-speaker")
        assert len(parents) == 1 and len(children) == 2
        arts = {a.path for a in _client(uri).list_artifacts(parents[0].info.run_id)}
        assert "speaker_table.md" in arts
    finally:
        os.killpg(srv.pid, signal.SIGTERM)   # the server's own process group (uvicorn + huey)
        try:
            srv.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(srv.pid, signal.SIGKILL)


CONCURRENT = """
model: mmgcn
dataset: synthetic:tiny
fixed: {epochs: 1, batch_size: 8}
studies:
  pair:
    axes: {dropout: [0.1, 0.3]}
    seeds: [0]
"""


def test_concurrent_sweeps_on_a_fresh_store(ray_local, tmp_path):
    """Two drivers started at once on a new mlflow.db (same experiment, same second): the store
    is created under a file lock (no `duplicate column name`), the second sweep gets its own
    name, and both finish with all their runs (issue 10)."""
    spec = tmp_path / "pair.yaml"
    spec.write_text(CONCURRENT)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = dict(os.environ, RAY_ADDRESS=ray_local["address"], PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "merc.cli", "sweep", "run", str(spec), "--study", "pair",
           "--address", ray_local["address"], "--max-concurrent", "1", "-v", "0"]
    logs = [open(tmp_path / f"driver{i}.log", "w") for i in range(2)]
    procs = [subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=lg, stderr=subprocess.STDOUT)
             for lg in logs]
    try:
        rcs = [p.wait(timeout=600) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        for lg in logs:
            lg.close()
    out = [(tmp_path / f"driver{i}.log").read_text()[-3000:] for i in range(2)]
    assert rcs == [0, 0], out
    parents, children = _runs(uri, "mmgcn-pair")
    assert len(parents) == 2, out
    names = {p.data.tags["merc.sweep_id"] for p in parents}
    assert len(names) == 2 and all(p.info.status == "FINISHED" for p in parents)
    for p in parents:
        mine = [c for c in children if c.data.tags["mlflow.parentRunId"] == p.info.run_id]
        assert len(mine) == 2 and all(c.info.status == "FINISHED" for c in mine), out
