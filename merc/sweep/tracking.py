"""MLflow from the Ray driver: one parent run per sweep, one nested child run per trial.

One writer (the driver) keeps SQLite safe. :class:`MercMLflowCallback` is our own Tune callback,
not Ray's ``MLflowLoggerCallback`` (which has no state and duplicates runs on ``Tuner.restore``):

* a child run is found again by its tags (``merc.sweep_id`` + ``ray.trial_id``) before one is
  created, so a restored sweep - after SIGINT, and after SIGKILL when the callback's saved state
  is stale - reuses the run instead of duplicating it; ``get_state``/``set_state`` keep the map
  and the last logged epoch per trial so a resumed trial logs no epoch twice;
* per-epoch metrics use ``step = epoch``; at the end the selected (best-val-epoch) metrics are
  logged without step, and tags say ``merc.status`` = completed | pruned | errored with
  ``merc.reason``;
* the last checkpoint's ``model.pt`` (state dict + JSON config) becomes the child's ``model/``
  artifact for completed trials, which ``merc best`` registers.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Optional

import mlflow
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from ray.tune import Callback

from merc.sweep.trainable import MODEL_FILE, flat_of

log = logging.getLogger(__name__)

RESULT_SKIP = {"epoch", "merc_last", "training_iteration", "time_this_iter_s", "time_total_s",
               "timestamp", "time_since_restore", "iterations_since_restore", "pid", "done",
               "checkpoint_dir_name", "should_checkpoint"}


class TrackingError(RuntimeError):
    """MLflow cannot be reached / used; the sweep stops before any trial runs (exit code 3)."""

    exit_code = 3


def default_tracking_uri(workdir: Optional[str] = None) -> str:
    return f"sqlite:///{Path(workdir or os.getcwd()).resolve() / 'mlflow.db'}"


def check_tracking(uri: str, timeout: float = 5.0) -> None:
    """Fail fast (before Ray starts) when a tracking server is unreachable."""
    if uri.startswith(("http://", "https://")):
        url = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 (user's URI)
                if r.status >= 400:
                    raise TrackingError(f"--mlflow-uri {uri}: {url} answered HTTP {r.status}")
        except TrackingError:
            raise
        except urllib.error.HTTPError as err:
            if err.code == 404:  # an older/proxied server without /health: try the REST API
                return _check_api(uri)
            raise TrackingError(f"--mlflow-uri {uri}: {url} answered HTTP {err.code}") from None
        except Exception as err:
            raise TrackingError(f"--mlflow-uri {uri}: tracking server unreachable ({err}); start "
                                f"it (mlflow server --host ... --port ...) or drop --mlflow-uri "
                                f"to use a local sqlite store") from None
    elif uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///"):])
        if not path.parent.is_dir():
            raise TrackingError(f"--mlflow-uri {uri}: directory {path.parent} does not exist")
        init_sqlite_store(uri)


def init_sqlite_store(uri: str) -> None:
    """Create / migrate a sqlite store under an exclusive lock on ``<db>.lock``: two sweeps
    started at once on a new ``mlflow.db`` otherwise both run the schema migration and one dies
    (``duplicate column name``). Once the store exists this costs one lock and one query."""
    import fcntl
    path = Path(uri[len("sqlite:///"):])
    with open(f"{path}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            MlflowClient(uri).search_experiments(max_results=1)   # creates and migrates
        except Exception as err:
            raise TrackingError(f"--mlflow-uri {uri}: cannot open the sqlite store "
                                f"({' '.join(str(err).split())[:300]})") from None
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _check_api(uri: str) -> None:
    try:
        MlflowClient(uri).search_experiments(max_results=1)
    except Exception as err:
        raise TrackingError(f"--mlflow-uri {uri}: not an MLflow tracking server ({err})") from None


def ensure_experiment(client: MlflowClient, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    try:
        return client.create_experiment(name)
    except Exception:  # created concurrently
        return client.get_experiment_by_name(name).experiment_id


def find_runs(client: MlflowClient, experiment_id: str, filter_string: str,
              max_results: int = 5000) -> list:
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string, max_results=min(max_results, 1000),
                                  page_token=token)
        runs.extend(page)
        token = page.token
        if not token or len(runs) >= max_results:
            return runs


def config_hash(flat: dict, drop=("seed",)) -> str:
    """Identity of a configuration across seeds (groups a study cell / a confirm candidate)."""
    d = {k: v for k, v in sorted(flat.items()) if k not in drop}
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


class MercMLflowCallback(Callback):
    """Driver-side, restore-safe MLflow logging (see module doc)."""

    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str, sweep_id: str,
                 *, metric: str, epochs: int, tags: dict[str, str], varied: list[str],
                 stage: str, study: str = "", total: int = 0, progress: bool = True):
        self.total = total
        self.progress = progress
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.sweep_id = sweep_id
        self.metric = metric
        self.epochs = epochs
        self.tags = tags
        self.varied = varied
        self.stage = stage
        self.study = study
        self._runs: dict[str, str] = {}
        self._steps: dict[str, int] = {}
        self._done: set[str] = set()
        self._client: Optional[MlflowClient] = None

    def __getstate__(self):
        d = dict(self.__dict__)
        d["_client"] = None
        return d

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(self.tracking_uri)
        return self._client

    # ---- state (saved with the experiment snapshot) ------------------------------------------
    def get_state(self) -> dict:
        return {"runs": dict(self._runs), "steps": dict(self._steps), "done": sorted(self._done)}

    def set_state(self, state: dict) -> None:
        self._runs = dict(state.get("runs", {}))
        # the snapshot can be older than what a killed driver logged: re-read steps from MLflow
        self._steps = {}
        self._done = set(state.get("done", []))

    # ---- helpers ------------------------------------------------------------------------------
    def _run_name(self, trial) -> str:
        cfg = trial.config
        seed = cfg.get("seed")
        if cfg.get("_point") is not None:
            return f"{self.study or self.stage}: {cfg['_point']} | seed {seed}"
        o = cfg.get("_optuna")
        num = f"#{o['number']:03d}" if o else trial.trial_id
        parts = ", ".join(f"{k}={_fmt(cfg[k])}" for k in self.varied if k in cfg)
        name = f"{self.stage} {num} | seed {seed} | {parts}"
        return name[:240]

    @staticmethod
    def trial_key(config: dict) -> str:
        """A trial's identity that survives a driver crash: grid point + seed for studies (the
        grid searcher re-suggests a config whose trial was never snapshotted, under a new trial
        id), the Optuna trial number for searches."""
        if config.get("_point") is not None:
            return f"{config['_point']}|seed={config.get('seed')}"
        if config.get("_optuna"):
            return f"optuna#{config['_optuna']['number']}"
        return ""

    def _lookup(self, trial) -> Optional[str]:
        base = f"tags.`merc.sweep_id` = '{self.sweep_id}' and "
        runs = find_runs(self.client, self.experiment_id,
                         base + f"tags.`ray.trial_id` = '{trial.trial_id}'", max_results=10)
        if runs:
            return runs[0].info.run_id
        key = self.trial_key(trial.config)
        if key and trial.config.get("_point") is not None:
            runs = find_runs(self.client, self.experiment_id,
                             base + f"tags.`merc.trial_key` = '{key}'", max_results=10)
            if runs:   # same grid cell, new Ray trial id: adopt the run
                rid = runs[0].info.run_id
                self.client.set_tag(rid, "ray.trial_id", trial.trial_id)
                return rid
        return None

    @staticmethod
    def _final(run) -> bool:
        return run.info.status in ("FINISHED", "FAILED") and \
            run.data.tags.get("merc.status") in ("completed", "pruned", "errored")

    def _last_step(self, run_id: str) -> int:
        try:
            hist = self.client.get_metric_history(run_id, self.metric)
        except Exception:
            return 0
        return max((int(m.step) for m in hist), default=0)

    def run_for(self, trial) -> str:
        tid = trial.trial_id
        if tid in self._runs:
            if tid not in self._steps:   # first touch after a restore
                self._steps[tid] = self._last_step(self._runs[tid])
                if self._final(self.client.get_run(self._runs[tid])):
                    self._done.add(tid)
            return self._runs[tid]
        rid = self._lookup(trial)
        if rid is not None:
            self._runs[tid] = rid
            self._steps[tid] = self._last_step(rid)
            run = self.client.get_run(rid)
            if self._final(run):
                # finished under a driver that was killed before its snapshot recorded it: Ray
                # replays the trial from its last snapshotted checkpoint; MLflow keeps the record
                self._done.add(tid)
            elif run.info.status != "RUNNING":
                self.client.update_run(rid, status="RUNNING")
            return rid
        cfg = trial.config
        flat = flat_of(cfg)
        tags = {"mlflow.parentRunId": self.parent_run_id, "merc.sweep_id": self.sweep_id,
                "ray.trial_id": tid, "merc.stage": self.stage, "merc.seed": str(cfg.get("seed")),
                "merc.config_hash": config_hash(flat), "merc.status": "running",
                "merc.trial_key": self.trial_key(cfg), **self.tags}
        if flat.get("model"):   # a study that selects the model per point
            tags["merc.model"] = str(flat["model"])
        if self.study:
            tags["merc.study"] = self.study
        if cfg.get("_point") is not None:
            tags["merc.point"] = str(cfg["_point"])
        if cfg.get("_optuna"):
            tags["optuna.trial_number"] = str(cfg["_optuna"]["number"])
            tags["optuna.study"] = cfg["_optuna"]["study"]
        run = self.client.create_run(self.experiment_id, run_name=self._run_name(trial),
                                     tags=tags)
        rid = run.info.run_id
        params = [Param(k, str(v)[:6000]) for k, v in sorted(flat.items())]
        for i in range(0, len(params), 100):
            self.client.log_batch(rid, params=params[i:i + 100])
        self._runs[tid] = rid
        self._steps[tid] = 0
        return rid

    # ---- Tune hooks ---------------------------------------------------------------------------
    def on_trial_start(self, iteration, trials, trial, **info):
        self.run_for(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if "merc_status" in result:
            return
        rid = self.run_for(trial)
        if trial.trial_id in self._done:
            return
        step = int(result.get("epoch", result.get("training_iteration", 0)))
        if step <= self._steps.get(trial.trial_id, 0):
            return  # already logged (a resumed trial replays from its checkpoint)
        ts = int(time.time() * 1000)
        ms = [Metric(k, float(v), ts, step) for k, v in result.items()
              if k not in RESULT_SKIP and isinstance(v, (int, float)) and not isinstance(v, bool)
              and math.isfinite(v) and not k.startswith(("config/", "sel_"))]
        for i in range(0, len(ms), 500):
            self.client.log_batch(rid, metrics=ms[i:i + 500])
        self._steps[trial.trial_id] = step

    def classify(self, trial, error: Optional[str]) -> tuple[str, str, str]:
        """(status, fit_status, reason) for a finished trial."""
        r = trial.last_result or {}
        if error is not None:
            return "errored", "error", error
        if r.get("merc_status") == "diverged":
            return "errored", "diverged", str(r.get("merc_reason", "diverged"))
        epoch = int(r.get("epoch", 0))
        if epoch >= self.epochs:
            return "completed", "completed", ""
        if r.get("merc_last"):
            return "completed", "early_stopped", f"early stopping after epoch {epoch}"
        from merc.sweep.optuna_glue import pruned_reason
        reason = pruned_reason(trial.config)
        return "pruned", "stopped", reason or f"stopped by the Ray scheduler at epoch {epoch} " \
                                              f"of {self.epochs} (low fidelity)"

    def _finish(self, trial, error: Optional[str]) -> None:
        tid = trial.trial_id
        rid = self.run_for(trial)
        if tid in self._done and self._final(self.client.get_run(rid)):
            return   # recorded already (a replay after a driver crash): keep the first record
        status, fit_status, reason = self.classify(trial, error)
        r = trial.last_result or {}
        tags = [RunTag("merc.status", status), RunTag("merc.fit_status", fit_status),
                RunTag("merc.reason", reason[:5000]),
                RunTag("merc.full_budget", "1" if status == "completed" else "0")]
        if r.get("node_id"):
            tags.append(RunTag("ray.node_id", str(r["node_id"])))
        if r.get("hostname"):
            tags.append(RunTag("ray.hostname", str(r["hostname"])))
        ts = int(time.time() * 1000)
        finals = [Metric(k, float(v), ts, 0) for k, v in r.items()
                  if k.startswith("sel_") and isinstance(v, (int, float)) and math.isfinite(v)]
        finals.append(Metric("epochs_run", float(r.get("epoch", 0)), ts, 0))
        if "time_total_s" in r:
            finals.append(Metric("trial_time_s", float(r["time_total_s"]), ts, 0))
        self.client.log_batch(rid, metrics=finals, tags=tags)
        if status == "completed":
            self._log_model(trial, rid)
        self.client.set_terminated(rid, "FINISHED" if status != "errored" else "FAILED")
        self._done.add(tid)
        if self.progress:
            sel = r.get(f"sel_{self.metric}")
            val = f"sel {self.metric} {sel:.2f}" if isinstance(sel, float) else ""
            t = f"{r.get('time_total_s', 0):.1f}s"
            print(f"[merc] {len(self._done)}/{self.total or '?'} {self._run_name(trial)[:90]}: "
                  f"{status} {val} {t} {('- ' + reason[:120]) if reason else ''}", flush=True)

    def _log_model(self, trial, rid: str) -> None:
        ck = trial.checkpoint
        if ck is None:
            return
        try:
            with ck.as_directory() as d:
                p = Path(d) / MODEL_FILE
                if p.is_file():
                    self.client.log_artifact(rid, str(p), "model")
        except Exception as err:  # never let artifact upload kill the sweep
            log.warning("trial %s: could not log model artifact: %s", trial.trial_id, err)

    def on_experiment_end(self, trials, **info):
        """Runs of trials the restored experiment never knew (started by a killed driver after
        its last snapshot; a search re-samples instead) are closed and soft-deleted, so the
        sweep keeps one child per trial."""
        known = {t.trial_id for t in trials}
        try:
            runs = find_runs(self.client, self.experiment_id,
                             f"tags.`merc.sweep_id` = '{self.sweep_id}' and "
                             f"attributes.status = 'RUNNING'")
        except Exception:
            return
        for r in runs:
            tid = r.data.tags.get("ray.trial_id")
            if tid and r.data.tags.get("mlflow.parentRunId") and tid not in known:
                self.client.set_tag(r.info.run_id, "merc.status", "lost")
                self.client.set_tag(r.info.run_id, "merc.reason", "started by a driver that was "
                                    "killed before its experiment snapshot; not resumable")
                self.client.set_terminated(r.info.run_id, "KILLED")
                self.client.delete_run(r.info.run_id)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._finish(trial, None)

    def on_trial_error(self, iteration, trials, trial, **info):
        err = None
        try:   # written driver-side just before this hook; synced to storage only later
            if trial.error_file and Path(trial.error_file).is_file():
                err = Path(trial.error_file).read_text()
            else:
                err = trial.get_error()
        except Exception:
            pass
        text = str(err or "trial raised")
        lines = [ln for ln in text.strip().splitlines() if ln.strip()]
        # the exception line, not the whole traceback (that stays in the Ray trial dir)
        reason = next((ln for ln in reversed(lines) if "Error" in ln or "Exception" in ln),
                      lines[-1] if lines else "trial raised")
        self._finish(trial, reason.strip())
