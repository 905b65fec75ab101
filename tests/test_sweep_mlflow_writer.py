"""The MLflow callback writes from one thread (a trial waits in ``tune.report`` while the driver
runs the result's callbacks, so the hooks must return at once): the calls keep their order,
``flush`` makes all of them visible, and a failed write surfaces in the caller, once."""
from __future__ import annotations

import threading
import types

import pytest
from mlflow.tracking import MlflowClient

from merc.sweep.tracking import MercMLflowCallback, flush_writers, init_sqlite_store


def _trial(tid: str, result: dict):
    return types.SimpleNamespace(trial_id=tid, config={"seed": 0, "lr": 1e-3},
                                 last_result=dict(result), checkpoint=None, num_failures=0)


def test_hooks_queue_in_order_and_flush_writes_them(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    init_sqlite_store(uri)
    client = MlflowClient(uri)
    exp = client.create_experiment("x")
    parent = client.create_run(exp).info.run_id
    cb = MercMLflowCallback(uri, exp, parent, "sweep", metric="val_wf1", epochs=3, tags={},
                            varied=["lr"], stage="search", progress=False)
    gate = threading.Event()
    cb._submit(gate.wait, 60)       # the writer is busy: the hooks below must not wait for it
    trial = _trial("t1", {})
    cb.on_trial_start(0, [], trial)
    for epoch in (1, 2, 3):
        res = {"epoch": float(epoch), "val_wf1": 50.0 + epoch, "sel_val_wf1": 53.0}
        trial.last_result = res
        cb.on_trial_result(0, [], trial, res)
    cb.on_trial_complete(0, [], trial)
    assert client.search_runs([exp], "tags.`ray.trial_id` = 't1'") == []    # nothing written yet
    gate.set()
    flush_writers()
    (run,) = client.search_runs([exp], "tags.`ray.trial_id` = 't1'")
    hist = client.get_metric_history(run.info.run_id, "val_wf1")
    assert [(int(m.step), m.value) for m in hist] == [(1, 51.0), (2, 52.0), (3, 53.0)]
    assert run.info.status == "FINISHED"
    assert run.data.tags["merc.status"] == "completed"
    assert run.data.metrics["sel_val_wf1"] == 53.0
    assert cb.get_state()["done"] == ["t1"]


def test_a_failed_write_is_raised_once_in_the_caller(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    init_sqlite_store(uri)
    cb = MercMLflowCallback(uri, "0", "parent", "sweep", metric="val_wf1", epochs=1, tags={},
                            varied=[], stage="search", progress=False)
    ran = []

    def boom():
        raise RuntimeError("store went away")
    cb._submit(boom)
    cb._submit(ran.append, "skipped")        # after a failure: skipped until it is raised
    with pytest.raises(RuntimeError, match="store went away"):
        cb.flush()
    cb._submit(ran.append, "runs again")
    cb.flush()
    assert ran == ["runs again"]


def test_epochs_are_written_in_batches_in_order_and_a_trial_end_writes_them(tmp_path, monkeypatch):
    """Epoch metrics of the last BATCH_S seconds go out in one log_batch per run; what comes
    after them (the trial's end, a flush) writes them first, so nothing is lost or reordered."""
    import merc.sweep.tracking as tracking
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    init_sqlite_store(uri)
    client = MlflowClient(uri)
    exp = client.create_experiment("x")
    parent = client.create_run(exp).info.run_id
    monkeypatch.setattr(tracking, "BATCH_S", 60.0)    # nothing is written for its age here
    cb = MercMLflowCallback(uri, exp, parent, "sweep", metric="val_wf1", epochs=3, tags={},
                            varied=["lr"], stage="search", progress=False)
    calls = []
    real = cb.client.log_batch

    def counting(rid, metrics=(), **kw):
        calls.append([int(m.step) for m in metrics if m.key == "val_wf1"])
        return real(rid, metrics=metrics, **kw)
    monkeypatch.setattr(cb.client, "log_batch", counting)
    a, b = _trial("a", {}), _trial("b", {})
    cb.on_trial_start(0, [], a)
    cb.on_trial_start(0, [], b)
    for epoch in (1, 2, 3):
        for t, base in ((a, 50.0), (b, 40.0)):
            res = {"epoch": float(epoch), "val_wf1": base + epoch, "sel_val_wf1": base + 3}
            t.last_result = res
            cb.on_trial_result(0, [], t, res)
    cb.on_trial_complete(0, [], a)        # a's end: its 3 epochs (and b's) are written first
    cb.flush()
    runs = {r.data.tags["ray.trial_id"]: r for r in client.search_runs([exp])
            if "ray.trial_id" in r.data.tags}
    hist = client.get_metric_history(runs["a"].info.run_id, "val_wf1")
    assert [(int(m.step), m.value) for m in hist] == [(1, 51.0), (2, 52.0), (3, 53.0)]
    assert runs["a"].data.tags["merc.status"] == "completed"
    hist = client.get_metric_history(runs["b"].info.run_id, "val_wf1")
    assert [(int(m.step), m.value) for m in hist] == [(1, 41.0), (2, 42.0), (3, 43.0)]
    # one call per run with its 3 epochs, not one call per epoch
    assert [c for c in calls if c] == [[1, 2, 3], [1, 2, 3]], calls
    # the batch is also written when it is BATCH_S old, without any later call
    monkeypatch.setattr(tracking, "BATCH_S", 0.05)
    res = {"epoch": 4.0, "val_wf1": 44.0}
    cb.on_trial_result(0, [], b, res)
    import time
    deadline = time.time() + 10
    while time.time() < deadline and len(client.get_metric_history(runs["b"].info.run_id,
                                                                   "val_wf1")) < 4:
        time.sleep(0.05)
    hist = client.get_metric_history(runs["b"].info.run_id, "val_wf1")
    assert [m.value for m in hist][-1] == 44.0
