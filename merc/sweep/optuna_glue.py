"""Optuna inside Ray Tune, with Optuna's pruners actually pruning.

Ray's ``OptunaSearch`` hard-codes ``NopPruner`` and tells Optuna every scheduler-stopped trial as
COMPLETE with its low-fidelity value (research/sweep_notes.md 1.8). So we do not use it. Instead:

* :class:`OptunaSearcher` is a plain Ray ``Searcher`` that drives Optuna's ask/tell interface
  itself on a *persistent* study (SQLite RDB storage under the sweep directory, one writer: the
  driver, which reads it from memory and writes it behind: :mod:`merc.sweep.optuna_storage`).
  ``suggest`` asks a trial and samples the spec's space define-by-run; the Optuna trial number
  travels in the Ray trial's config (``_optuna``), which is how the scheduler and the MLflow
  callback find the Optuna record (the Ray trial id is also stored as a user attribute).
  ``on_trial_complete`` tells COMPLETE with the trial's selected (best-epoch) value, FAIL for an
  errored or diverged trial, PRUNED for a trial that a Ray scheduler (ASHA) stopped early - and
  nothing if the scheduler below already told PRUNED.
* :class:`OptunaPruningScheduler` (a ``FIFOScheduler``) reports every epoch's validation metric to
  the trial's Optuna record (``intermediate_values``, step = epoch), asks the study's pruner
  (median, percentile, successive halving, Hyperband, Wilcoxon - built from the spec with its
  arguments) through ``optuna.Trial.should_prune``, and on a prune decision tells Optuna PRUNED
  and returns STOP.

This is more robust than subclassing ``OptunaSearch``: the study lives in storage, so the driver
can be killed and restored (``Tuner.restore``) without losing trials - the searcher's own state is
only the Ray-trial-id -> Optuna-number map (saved with the experiment state), and Optuna trials
that were asked after the last experiment snapshot are marked FAIL on restore. TPE, importance and
contour plots then see PRUNED trials as pruned, not as complete low-fidelity results.
"""
from __future__ import annotations

import json
import logging
import math
from typing import Any, Optional

import optuna
from optuna.trial import TrialState
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher

from merc.sweep.optuna_storage import WriteBehindStorage, flush_all

log = logging.getLogger(__name__)
optuna.logging.set_verbosity(optuna.logging.WARNING)

_STUDIES: dict[tuple, optuna.Study] = {}


def make_sampler(cfg: dict) -> optuna.samplers.BaseSampler:
    args = {k: v for k, v in cfg.items() if k != "type"}
    if cfg.get("type", "tpe") == "random":
        return optuna.samplers.RandomSampler(**args)
    return optuna.samplers.TPESampler(**args)


def make_pruner(cfg: dict) -> optuna.pruners.BasePruner:
    from merc.sweep.spec import PRUNERS
    t = cfg.get("type", "median")
    if t == "asha" or PRUNERS.get(t) is None:
        return optuna.pruners.NopPruner()
    args = {k: v for k, v in cfg.items() if k != "type"}
    return getattr(optuna.pruners, PRUNERS[t])(**args)


def direction(mode: str) -> str:
    """Optuna's study direction for a spec's ``mode`` ("max" / "min")."""
    return "maximize" if mode == "max" else "minimize"


def open_study(storage_url: str, study_name: str, direction: str = "maximize",
               sampler: Optional[dict] = None, pruner: Optional[dict] = None) -> optuna.Study:
    """The driver's one handle on a persistent study (cached per process, created if absent):
    read from memory, written behind (:mod:`merc.sweep.optuna_storage`)."""
    key = (storage_url, study_name)
    if key not in _STUDIES:
        storage = WriteBehindStorage(optuna.storages.RDBStorage(
            storage_url, engine_kwargs={"connect_args": {"timeout": 60}}))
        _STUDIES[key] = optuna.create_study(
            storage=storage, study_name=study_name, direction=direction, load_if_exists=True,
            sampler=make_sampler(sampler or {"type": "tpe"}), pruner=make_pruner(pruner or {}))
    return _STUDIES[key]


def frozen(study: optuna.Study, number: int) -> optuna.trial.FrozenTrial:
    st = study._storage
    return st.get_trial(st.get_trial_id_from_study_id_trial_number(study._study_id, number))


def sample(trial: optuna.Trial, space: dict[str, dict]) -> dict[str, Any]:
    """Define-by-run sampling of the spec's space. ``missing_rate`` is bounded by (M-1)/M of the
    modality subset sampled before it (at least one modality is always kept)."""
    out: dict[str, Any] = {}
    for name, d in space.items():
        t = d["type"]
        if t == "fixed":
            out[name] = d["value"]
        elif t == "categorical":
            out[name] = trial.suggest_categorical(name, d["values"])
        elif t == "int":
            out[name] = trial.suggest_int(name, d["low"], d["high"], step=d.get("step") or 1,
                                          log=bool(d.get("log")))
        else:
            low, high = float(d["low"]), float(d["high"])
            if name == "missing_rate" and "modalities" in out:
                m = len(str(out["modalities"]))
                high = min(high, (m - 1) / m)
                low = min(low, high)
            if t == "loguniform":
                out[name] = trial.suggest_float(name, low, high, log=True)
            else:
                out[name] = trial.suggest_float(name, low, high, step=d.get("step"))
    return out



class JsonStateMixin:
    """Searcher checkpoints as JSON (never pickles): ``get_state`` holds plain values only."""

    def save(self, checkpoint_path: str) -> None:
        flush_all()   # the persistent study holds everything this state refers to
        with open(checkpoint_path, "w") as f:
            json.dump(self.get_state(), f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path) as f:
            self.set_state(json.load(f))

class OptunaSearcher(JsonStateMixin, Searcher):
    """A Ray Tune searcher that drives a persistent Optuna study by ask/tell (see module doc)."""

    def __init__(self, space: dict[str, dict], base_config: dict, *, metric: str, mode: str,
                 storage_url: str, study_name: str, sampler: dict, pruner: dict, epochs: int,
                 start_points: Optional[list[dict]] = None):
        super().__init__(metric=metric, mode=mode)
        self.space = space
        self.base_config = base_config
        self.storage_url = storage_url
        self.study_name = study_name
        self.sampler_cfg = sampler
        self.pruner_cfg = pruner
        self.epochs = epochs
        self.start_points = list(start_points or [])
        self.direction = direction(mode)
        self._ids: dict[str, int] = {}
        self._enqueued = False

    @property
    def study(self) -> optuna.Study:
        return open_study(self.storage_url, self.study_name, self.direction, self.sampler_cfg,
                          self.pruner_cfg)

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True  # metric/mode are ours; the space comes from the spec

    def suggest(self, trial_id: str) -> Optional[dict]:
        study = self.study
        if not self._enqueued:
            for p in self.start_points:
                study.enqueue_trial(p, skip_if_exists=True)
            self._enqueued = True
        ot = study.ask()
        params = sample(ot, self.space)
        ot.set_user_attr("ray_trial_id", trial_id)
        self._ids[trial_id] = ot.number
        cfg = dict(self.base_config)
        cfg.update(params)
        cfg["_optuna"] = {"number": ot.number, "study": self.study_name,
                          "storage": self.storage_url}
        return cfg

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        pass  # intermediate values are written by OptunaPruningScheduler (or below on completion)

    def on_trial_complete(self, trial_id: str, result: Optional[dict] = None,
                          error: bool = False) -> None:
        number = self._ids.get(trial_id)
        if number is None:
            return
        study = self.study
        ft = frozen(study, number)
        if ft.state.is_finished():
            return  # already told (PRUNED by the scheduler, or a replayed completion)
        if error or result is None or result.get("merc_status") == "diverged":
            study.tell(number, state=TrialState.FAIL)
            return
        epoch = int(result.get("epoch", 0))
        value = result.get(self.metric)
        if value is not None and math.isfinite(value) and epoch not in ft.intermediate_values:
            study._storage.set_trial_intermediate_value(ft._trial_id, epoch, float(value))
        if epoch < self.epochs and not result.get("merc_last"):
            study.tell(number, state=TrialState.PRUNED)   # stopped by a Ray scheduler (ASHA)
            return
        sel = result.get(f"sel_{self.metric}", value)
        if sel is None or not math.isfinite(sel):
            study.tell(number, state=TrialState.FAIL)
        else:
            study.tell(number, float(sel))

    # -- state: the study itself is in storage; we keep the id map --------------------------
    def get_state(self) -> dict:
        return {"ids": dict(self._ids), "enqueued": self._enqueued}

    def set_state(self, state: dict) -> None:
        self._ids = dict(state.get("ids", {}))
        self._enqueued = bool(state.get("enqueued", False))
        self._fail_orphans()


    def _fail_orphans(self) -> None:
        """Optuna trials asked after the last experiment snapshot have no Ray trial: FAIL them."""
        known = set(self._ids.values())
        study = self.study
        for ft in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if ft.number not in known:
                study.tell(ft.number, state=TrialState.FAIL)


class OptunaPruningScheduler(FIFOScheduler):
    """Makes the study's Optuna pruner decide, per epoch, whether a trial stops (as PRUNED)."""

    def __init__(self, metric: str, mode: str, epochs: int, *, storage_url: str, study_name: str,
                 sampler: dict, pruner: dict):
        super().__init__()
        self._metric, self._mode = metric, mode
        self.epochs = epochs
        self.storage_url, self.study_name = storage_url, study_name
        self.sampler_cfg, self.pruner_cfg = sampler, pruner
        self.pruned: dict[str, str] = {}

    @property
    def supports_buffered_results(self) -> bool:
        return False

    def set_search_properties(self, metric, mode, **spec) -> bool:
        return True

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        o = trial.config.get("_optuna")
        if o is None or "merc_status" in result or self._metric not in result:
            return TrialScheduler.CONTINUE
        study = open_study(self.storage_url, self.study_name,
                           direction(self._mode),
                           self.sampler_cfg, self.pruner_cfg)
        ft = frozen(study, o["number"])
        if ft.state == TrialState.PRUNED:
            return TrialScheduler.STOP   # pruned before a driver restart
        if ft.state.is_finished():
            return TrialScheduler.CONTINUE
        step = int(result.get("epoch", result.get("training_iteration", 0)))
        value = float(result[self._metric])
        if not math.isfinite(value):
            return TrialScheduler.CONTINUE
        if step not in ft.intermediate_values:
            study._storage.set_trial_intermediate_value(ft._trial_id, step, value)
        if step >= self.epochs or result.get("merc_last"):
            return TrialScheduler.CONTINUE
        if optuna.trial.Trial(study, ft._trial_id).should_prune():
            study.tell(o["number"], state=TrialState.PRUNED)
            reason = (f"pruned by optuna {type(study.pruner).__name__} at epoch {step} "
                      f"({self._metric}={value:.4g})")
            self.pruned[trial.trial_id] = reason
            log.info("trial %s: %s", trial.trial_id, reason)
            return TrialScheduler.STOP
        return TrialScheduler.CONTINUE

    def debug_string(self) -> str:
        return f"Using OptunaPruningScheduler: {len(self.pruned)} trials pruned."


def pruned_reason(config: dict) -> Optional[str]:
    """If the trial's Optuna record is PRUNED, a readable reason (for the MLflow tags)."""
    o = config.get("_optuna")
    if not o:
        return None
    study = _STUDIES.get((o["storage"], o["study"]))
    if study is None:
        try:
            study = optuna.load_study(study_name=o["study"], storage=o["storage"])
        except Exception:
            return None
    ft = frozen(study, o["number"])
    if ft.state != TrialState.PRUNED:
        return None
    steps = sorted(ft.intermediate_values)
    at = steps[-1] if steps else 0
    if isinstance(study.pruner, optuna.pruners.NopPruner):   # the spec chose ASHA instead
        return f"stopped by ASHA at epoch {at} (recorded PRUNED in Optuna)"
    return f"pruned by optuna {type(study.pruner).__name__} at epoch {at}"


class GridSearcher(JsonStateMixin, Searcher):
    """Emits a fixed list of configs (a study's grid x seeds) in order; resumable."""

    def __init__(self, configs: list[dict], metric: str, mode: str):
        super().__init__(metric=metric, mode=mode)
        self.configs = configs
        self._next = 0

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True

    def suggest(self, trial_id: str):
        if self._next >= len(self.configs):
            return Searcher.FINISHED
        cfg = self.configs[self._next]
        self._next += 1
        return dict(cfg)

    def on_trial_complete(self, trial_id, result=None, error=False) -> None:
        pass

    def get_state(self) -> dict:
        return {"next": self._next}

    def set_state(self, state: dict) -> None:
        self._next = int(state.get("next", 0))

