"""The driver's write-behind Optuna storage (merc.sweep.optuna_storage): what the driver did in
memory is, after a flush, exactly what a fresh reader of the sqlite study sees; a restored driver
continues the study; a second writer is caught, not silently renumbered."""
from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from merc.sweep.optuna_storage import WriteBehindStorage


def _open(url: str, name: str = "s") -> optuna.Study:
    return optuna.create_study(storage=WriteBehindStorage(optuna.storages.RDBStorage(url)),
                               study_name=name, load_if_exists=True, direction="maximize",
                               sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=3),
                               pruner=optuna.pruners.MedianPruner(n_startup_trials=2,
                                                                  n_warmup_steps=0))


def _drive(study: optuna.Study, n: int) -> None:
    """ask / define-by-run suggest / report / prune / tell, like the searcher and scheduler."""
    study.enqueue_trial({"lr": 1e-3, "layers": 2, "act": "relu"}, skip_if_exists=True)
    for i in range(n):
        t = study.ask()
        lr = t.suggest_float("lr", 1e-4, 1e-1, log=True)
        layers = t.suggest_int("layers", 1, 4)
        t.suggest_categorical("act", ["relu", "gelu"])
        t.set_user_attr("ray_trial_id", f"t{i}")
        for step in range(1, 4):
            t.report(lr * layers * step, step)
            if t.should_prune():
                study.tell(t, state=TrialState.PRUNED)
                break
        else:
            study.tell(t, lr * layers) if i % 4 else study.tell(t, state=TrialState.FAIL)


def _record(study: optuna.Study) -> list[tuple]:
    return [(t.number, t.state, t.params, t.distributions, t.values, t.intermediate_values,
             t.user_attrs) for t in study.get_trials(deepcopy=False)]


def test_flushed_study_equals_what_the_driver_saw_and_a_restore_continues_it(tmp_path):
    url = f"sqlite:///{tmp_path}/optuna.db"
    study = _open(url)
    _drive(study, 12)
    study._storage.flush()
    seen = _record(study)
    assert {s[1] for s in seen} >= {TrialState.COMPLETE, TrialState.FAIL}
    on_disk = optuna.load_study(study_name="s", storage=url)
    assert _record(on_disk) == seen
    assert on_disk.best_trial.number == study.best_trial.number

    # a restored driver (new process state, same file) loads every trial, numbering goes on
    again = _open(url)
    assert again._storage is not study._storage
    assert _record(again) == seen
    _drive(again, 3)
    again._storage.flush()
    assert [t.number for t in optuna.load_study(study_name="s", storage=url).trials] == \
        list(range(len(seen) + 3))


def test_a_trial_read_is_a_copy_the_caller_may_edit(tmp_path):
    """optuna.Trial edits the FrozenTrial it read in place while the writer thread copies the
    stored record to the RDB storage: a read must never hand out the stored object."""
    study = _open(f"sqlite:///{tmp_path}/optuna.db")
    t = study.ask()
    st = study._storage
    held = st.get_trial(t._trial_id)
    assert held is not st.get_trial(t._trial_id)
    held.params["x"] = 1.0
    held.user_attrs["y"] = 2
    assert st.get_trial(t._trial_id).params == {} and st.get_trial(t._trial_id).user_attrs == {}
    t.suggest_float("lr", 0.1, 1.0)
    st.flush()
    assert list(optuna.load_study(study_name="s", storage=st.backend.url).trials[0].params) == \
        ["lr"]


def test_a_second_writer_to_the_same_study_fails_the_sweep_naming_the_study(tmp_path):
    url = f"sqlite:///{tmp_path}/optuna.db"
    study = _open(url, "shared")
    study.ask()
    study._storage.flush()
    optuna.load_study(study_name="shared", storage=url).ask()     # another process's trial
    study.ask()                                                     # memory says number 1
    with pytest.raises(RuntimeError, match="'shared'.*another process writes to this study"):
        study._storage.flush()


def test_a_failed_write_is_raised_once_and_later_writes_are_dropped(tmp_path):
    url = f"sqlite:///{tmp_path}/optuna.db"
    study = _open(url, "x")
    t = study.ask()
    study._storage.flush()
    study._storage.backend.engine.dispose()
    (tmp_path / "optuna.db").unlink()                               # the file is gone
    t.set_user_attr("k", 1)
    with pytest.raises(RuntimeError, match=r"optuna storage sqlite:///.*optuna\.db: writing the "
                                           r"study failed"):
        study._storage.flush()
    study._storage.flush()                                          # reported once
    assert study.trials[0].user_attrs == {"k": 1}                   # memory still has it
