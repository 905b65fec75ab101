"""The Optuna glue without a Ray cluster: the searcher's ask/tell bookkeeping and the pruning
scheduler's decisions, driven with stand-in trial objects."""
from __future__ import annotations

from types import SimpleNamespace

import optuna
from optuna.trial import TrialState
from ray.tune.schedulers import TrialScheduler

from merc.sweep.optuna_glue import OptunaPruningScheduler, OptunaSearcher, sample
from merc.sweep.optuna_storage import flush_all

SPACE = {"lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2},
         "window_past": {"type": "int", "low": 1, "high": 15, "step": 1},
         "modalities": {"type": "categorical", "values": ["T", "ATV"]},
         "missing_rate": {"type": "uniform", "low": 0.0, "high": 0.6},
         "batch_size": {"type": "fixed", "value": 4}}


def _glue(tmp_path, pruner):
    url = f"sqlite:///{tmp_path / 'o.db'}"
    kw = dict(storage_url=url, study_name="s", sampler={"type": "tpe", "seed": 0},
              pruner=pruner)
    s = OptunaSearcher(SPACE, {"seed": 0}, metric="val_wf1", mode="max", epochs=4,
                       start_points=[{"lr": 1e-3, "window_past": 11}], **kw)
    sch = OptunaPruningScheduler("val_wf1", "max", 4, **kw)
    return s, sch


def _res(epoch, v, last=0.0):
    return {"val_wf1": v, "sel_val_wf1": v, "epoch": float(epoch), "merc_last": last}


def test_searcher_scheduler_states(tmp_path):
    s, sch = _glue(tmp_path, {"type": "median", "n_startup_trials": 2, "n_warmup_steps": 0})
    cfgs = {f"t{i}": s.suggest(f"t{i}") for i in range(6)}
    assert cfgs["t0"]["lr"] == 1e-3 and cfgs["t0"]["window_past"] == 11   # paper default first
    assert all(c["batch_size"] == 4 and c["seed"] == 0 for c in cfgs.values())
    for c in cfgs.values():   # missing_rate bounded by (M-1)/M of the sampled subset
        assert c["missing_rate"] <= (len(c["modalities"]) - 1) / len(c["modalities"]) + 1e-12
    tr = {k: SimpleNamespace(trial_id=k, config=c) for k, c in cfgs.items()}
    # two full trials
    for k, v in (("t0", 50.0), ("t1", 60.0)):
        for e in range(1, 5):
            assert sch.on_trial_result(None, tr[k], _res(e, v + e, float(e == 4))) == \
                TrialScheduler.CONTINUE
        s.on_trial_complete(k, _res(4, v + 4, 1.0))
    # a bad trial is pruned at epoch 1 by the median pruner
    assert sch.on_trial_result(None, tr["t2"], _res(1, 10.0)) == TrialScheduler.STOP
    s.on_trial_complete("t2", _res(1, 10.0))            # already PRUNED: left alone
    # ASHA-style stop (no Optuna decision): told PRUNED by the searcher
    s.on_trial_complete("t3", _res(2, 55.0))
    s.on_trial_complete("t4", None, error=True)          # errored -> FAIL
    s.on_trial_complete("t5", {"val_wf1": 0.0, "epoch": 2.0, "merc_status": "diverged"})
    flush_all()        # the driver writes the study behind (optuna_storage.py); a reader waits
    study = optuna.load_study(study_name="s", storage=s.storage_url)
    st = {t.number: t.state for t in study.trials}
    assert [st[i] for i in range(6)] == [TrialState.COMPLETE, TrialState.COMPLETE,
                                         TrialState.PRUNED, TrialState.PRUNED, TrialState.FAIL,
                                         TrialState.FAIL]
    assert study.trials[1].value == 64.0 and study.trials[0].intermediate_values[3] == 53.0
    # restore: an Optuna trial asked after the last snapshot (not in the saved map) -> FAIL
    state = s.get_state()
    s.suggest("t6")
    s.set_state(state)
    flush_all()
    assert optuna.load_study(study_name="s", storage=s.storage_url).trials[6].state == \
        TrialState.FAIL


def test_sample_types():
    study = optuna.create_study()
    t = study.ask()
    out = sample(t, SPACE)
    assert isinstance(out["window_past"], int) and 1e-4 <= out["lr"] <= 1e-2
