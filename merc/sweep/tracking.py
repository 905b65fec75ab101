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

The hooks hand their MLflow calls, in order, to one writer thread and return: Tune holds every
trial's training thread in ``tune.report`` until its loop has run the result's callbacks, so a
synchronous ``log_batch`` (~15 ms on a sqlite store, more on a busy driver) stalled each trial
once per epoch (issue 13). The writer is still the only thread that writes; the state Tune
snapshots (``get_state``) and the end of the experiment wait for it, and its first error is
raised in the Tune loop at the next hook. It writes the epochs of the last ``BATCH_S`` seconds
in one ``log_batch`` per run: most of a call's cost is per call, not per metric.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import queue
import threading
import time
import types
import urllib.error
import urllib.request
import weakref
from pathlib import Path
from typing import Any, Optional

import mlflow
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from ray.tune import Callback

from merc.sweep.entry import MODEL_FILE, flat_of

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
    (``duplicate column name``). Once the store exists this costs one lock and one query. A new
    store starts as a copy of a cached, pre-migrated empty one (:mod:`merc.sweep.mlflow_store`)."""
    import fcntl
    from merc.sweep.mlflow_store import seed_new_store
    path = Path(uri[len("sqlite:///"):])
    with open(f"{path}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            seeded = seed_new_store(path)
            try:
                MlflowClient(uri).search_experiments(max_results=1)   # creates and migrates
            except Exception:
                if not seeded:
                    raise
                path.unlink()          # the copy was refused: MLflow's own creation path
                MlflowClient(uri).search_experiments(max_results=1)
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


UI_DEFAULT = "http://127.0.0.1:5000"


def ui_base(tracking_uri: str) -> str:
    """Where the MLflow UI of a store is: the server itself, or ``mlflow ui``'s default."""
    if tracking_uri.startswith(("http://", "https://")):
        return tracking_uri.rstrip("/")
    return UI_DEFAULT


def runs_view_url(tracking_uri: str, experiment_id: str, sweep_id: str = "",
                  metric: str = "val_wf1", mode: str = "max", view: str = "TABLE") -> str:
    """A link that opens the experiment's classic runs view in MLflow 3 (which otherwise opens
    an experiment in its GenAI mode): ``#/experiments/<id>/runs`` with ``workflowType=
    machine_learning`` and ``compareRunsMode=TABLE`` (or ``CHART``: parallel coordinates,
    contour, ...), filtered to the sweep's runs and sorted by the selected objective. These
    are the view settings the UI takes from a URL; the shown columns live in the browser."""
    from urllib.parse import urlencode
    q = {"workflowType": "machine_learning", "compareRunsMode": view}
    if sweep_id:
        q["searchFilter"] = f"tags.`merc.sweep_id` = '{sweep_id}'"
    q["orderByKey"] = f"metrics.`sel_{metric}`"
    q["orderByAsc"] = "true" if mode == "min" else "false"
    return f"{ui_base(tracking_uri)}/#/experiments/{experiment_id}/runs?{urlencode(q)}"


def compare_note(varied: list[str], metric: str, url: str) -> str:
    """How to compare this sweep's trials (the parent run's note and the experiment's)."""
    cols = ", ".join(f"`params.{k}`" for k in varied) or "(none varied)"
    return (f"**Compare the trials.** Runs table: {url} (sorted by `sel_{metric}`, the "
            f"validation-selected objective; pruned trials are named `{PRUNED_PREFIX.strip()} "
            f"...` with status KILLED and carry no `sel_*`). Columns to show: {cols}, "
            f"`metrics.sel_{metric}`, `metrics.sel_{metric.replace('val_', 'test_')}`, "
            f"`metrics.sel_epoch`. Charts (`compareRunsMode=CHART`): add a parallel-coordinates "
            f"chart over those params with `sel_{metric}` as the metric; select runs and "
            f"press *Compare* for contour and scatter plots.\n")


def prepare_experiment(client: MlflowClient, experiment_id: str, note: str) -> None:
    """Open the experiment in MLflow 3's classic (machine learning) mode rather than GenAI
    (experiment tag ``mlflow.experimentKind``) and describe it (``mlflow.note.content``), unless
    a user set either already."""
    try:
        tags = client.get_experiment(experiment_id).tags
        if "mlflow.experimentKind" not in tags:
            client.set_experiment_tag(experiment_id, "mlflow.experimentKind",
                                      "custom_model_development")
        if "mlflow.note.content" not in tags:
            client.set_experiment_tag(experiment_id, "mlflow.note.content", note)
    except Exception as err:  # cosmetic: never stop a sweep for it
        log.warning("experiment %s: could not set its view tags: %s", experiment_id, err)


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


#: short names of swept keys in run names (MLflow's runs table cuts names at ~20 characters)
SHORT_KEYS = {"window_past": "P", "window_future": "F", "spcl_epsilon": "ε", "spcl_alpha": "α",
              "missing_rate": "ρ", "learning_rate": "lr", "hidden_size": "h", "dropout": "drop",
              "modalities": "", "model": "", "strategy": "", "seed": "s"}
PRUNED_PREFIX = "✂ "
#: MLflow run status per merc.status: a pruned trial is KILLED (stopped early), not FINISHED
RUN_STATUS = {"completed": "FINISHED", "pruned": "KILLED", "errored": "FAILED"}


def short_key(k: str) -> str:
    if k in SHORT_KEYS:
        return SHORT_KEYS[k]
    for pre in ("spcl_", "use_"):
        if k.startswith(pre):
            return k[len(pre):]
    return k


def short_point(label: str) -> str:
    """A grid point's label for a run name: ``window_past=11,window_future=9`` -> ``P11 F9``,
    ``model=mmgcn,spcl_pacing=cosine`` -> ``mmgcn pacing=cosine``; a named point stays as is."""
    if "=" not in label:
        return label
    parts = []
    for kv in label.split(","):
        k, _, v = kv.partition("=")
        sk = short_key(k.strip())
        if not sk:                              # the value names itself (mmgcn, ATV, spcl)
            parts.append(v)
        elif len(sk) == 1:                      # P11, F9, ε0.8, α1.1
            parts.append(f"{sk}{v}")
        else:
            parts.append(f"{sk}={v}")
    return " ".join(parts)


def run_name(point: Optional[str], seed: Any, *, study: str = "", stage: str = "",
             number: Optional[int] = None, params: str = "") -> str:
    """Point and seed first (``P11 F9 · s0 · window``), so the runs table's cut keeps them;
    search trials lead with the Optuna trial number (``#007 · s0 · lr=0.001 h=16``)."""
    if point is not None:
        name = f"{short_point(str(point))} · s{seed}"
        tail = study or stage
    else:
        name = f"#{number:03d} · s{seed}" if number is not None else f"{stage} · s{seed}"
        tail = params
    return (f"{name} · {tail}" if tail else name)[:240]


#: how long the writer holds a trial's epoch metrics to write several epochs in one ``log_batch``
#: (the MLflow UI shows an epoch at most this late; the end of a trial, a flush and Tune's state
#: snapshot write them at once)
BATCH_S = 2.0

#: set at the first trial result any sweep of this process receives: the driver's optional work
#: waits for it rather than compete with the start of the first trials (runner._prefetch_reporting)
TRIALS_RUNNING = threading.Event()

#: callbacks whose writer thread has started (flush_writers waits for them)
_WRITERS: "weakref.WeakSet[MercMLflowCallback]" = weakref.WeakSet()


def flush_writers() -> None:
    """Wait until every MLflow callback of this process has written what it was handed (after
    ``Tuner.fit`` returns, also when Tune ended without ``on_experiment_end``, e.g. Ctrl-C)."""
    for cb in list(_WRITERS):
        cb.flush()


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
        self._started: set[str] = set()
        self._t0: Optional[float] = None
        self._n0 = 0
        self._client: Optional[MlflowClient] = None
        self._queue: Optional[queue.Queue] = None
        self._error: Optional[BaseException] = None
        self._batch: dict[str, list] = {}     # run id -> epoch metrics not written yet
        self._batch_t0 = 0.0

    def __getstate__(self):
        d = dict(self.__dict__)
        d["_client"] = d["_queue"] = d["_error"] = None
        d["_batch"] = {}
        return d

    # ---- the writer thread --------------------------------------------------------------------
    def _submit(self, fn, *args) -> None:
        """Run ``fn(*args)`` on the writer thread, after everything submitted before it."""
        self._raise_pending()
        if self._queue is None:
            self._queue = queue.Queue()
            threading.Thread(target=self._drain, args=(self._queue,), name="merc-mlflow",
                             daemon=True).start()
            _WRITERS.add(self)
        self._queue.put((fn, args))

    def _drain(self, q: queue.Queue) -> None:
        while True:
            try:
                fn, args = q.get(timeout=BATCH_S if self._batch else None)
            except queue.Empty:              # batched epochs waited BATCH_S: write them
                self._run(self._write_batch)
                continue
            try:
                self._run(fn, *args)
            finally:
                q.task_done()

    def _run(self, fn, *args) -> None:
        try:
            if self._error is None:          # after an error, skip until the Tune loop saw it
                if self._batch and fn != self._result:
                    self._write_batch()      # the epochs go first: calls keep their order
                fn(*args)
        except BaseException as err:  # noqa: BLE001 - re-raised in the Tune loop
            self._error = err

    def flush(self) -> None:
        """Wait until every submitted MLflow call ran, the batched epochs included; raise the
        first that failed."""
        if self._queue is not None:
            self._submit(self._write_batch)
            self._queue.join()
        self._raise_pending()

    def _raise_pending(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    @staticmethod
    def _snapshot(trial, ended: bool = False) -> types.SimpleNamespace:
        """What the hooks read of a trial, as it is now (Tune keeps changing the object); the
        checkpoint only when the trial ``ended`` (its model artifact)."""
        ck = None
        if ended:
            try:
                ck = trial.checkpoint
            except Exception as err:  # noqa: BLE001 - no model artifact, the run is still closed
                log.warning("trial %s: no checkpoint to log: %s", trial.trial_id, err)
        return types.SimpleNamespace(trial_id=trial.trial_id, config=trial.config,
                                     last_result=dict(trial.last_result or {}), checkpoint=ck,
                                     num_failures=getattr(trial, "num_failures", 0))

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(self.tracking_uri)
        return self._client

    # ---- state (saved with the experiment snapshot) ------------------------------------------
    def get_state(self) -> dict:
        self.flush()
        return {"runs": dict(self._runs), "steps": dict(self._steps), "done": sorted(self._done)}

    def set_state(self, state: dict) -> None:
        self._runs = dict(state.get("runs", {}))
        # the snapshot can be older than what a killed driver logged: re-read steps from MLflow
        self._steps = {}
        self._done = set(state.get("done", []))
        self._started, self._t0 = set(), None    # progress / ETA count this session only

    # ---- helpers ------------------------------------------------------------------------------
    def _run_name(self, trial) -> str:
        cfg = trial.config
        seed = cfg.get("seed")
        if cfg.get("_point") is not None:
            return run_name(str(cfg["_point"]), seed, study=self.study, stage=self.stage)
        o = cfg.get("_optuna")
        parts = " ".join(f"{short_key(k) or k}={_fmt(cfg[k])}" for k in self.varied if k in cfg)
        if o:
            return run_name(None, seed, number=int(o["number"]), params=parts)
        return run_name(None, seed, stage=f"{self.stage} {trial.trial_id}", params=parts)

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
        return run.info.status in ("FINISHED", "FAILED", "KILLED") and \
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
        self._submit(self._start, self._snapshot(trial))

    def _start(self, trial) -> None:
        self.run_for(trial)
        if trial.trial_id not in self._started:
            self._started.add(trial.trial_id)
            if self.progress and trial.trial_id not in self._done:
                self._say(f"start  {self._run_name(trial)[:60]}")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        TRIALS_RUNNING.set()
        if "merc_status" not in result:
            self._submit(self._result, self._snapshot(trial), dict(result))

    def _result(self, trial, result: dict) -> None:
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
        if not self._batch:
            self._batch_t0 = time.monotonic()
        self._batch.setdefault(rid, []).extend(ms)
        self._steps[trial.trial_id] = step
        if time.monotonic() - self._batch_t0 >= BATCH_S:
            self._write_batch()

    def _write_batch(self) -> None:
        """Write the batched epochs, one ``log_batch`` per run (each call costs ~15-40 ms of the
        driver, mostly per call, not per metric: SQL session, run lookup, commit)."""
        batch, self._batch = self._batch, {}
        for rid, ms in batch.items():
            for i in range(0, len(ms), 500):
                self.client.log_batch(rid, metrics=ms[i:i + 500])

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
                RunTag("merc.full_budget", "1" if status == "completed" else "0"),
                RunTag("merc.attempts", str(_attempts(trial, failed=error is not None)))]
        if r.get("node_id"):
            tags.append(RunTag("ray.node_id", str(r["node_id"])))
        if r.get("hostname"):
            tags.append(RunTag("ray.hostname", str(r["hostname"])))
        ts = int(time.time() * 1000)
        # a pruned / errored trial's selection is over a partial budget: no sel_* for it
        finals = [Metric(k, float(v), ts, 0) for k, v in r.items()
                  if status == "completed" and k.startswith("sel_") and
                  isinstance(v, (int, float)) and math.isfinite(v)]
        finals.append(Metric("epochs_run", float(r.get("epoch", 0)), ts, 0))
        if "time_total_s" in r:
            finals.append(Metric("trial_time_s", float(r["time_total_s"]), ts, 0))
        self.client.log_batch(rid, metrics=finals, tags=tags)
        if status == "completed":
            self._log_model(trial, rid)
        if status == "pruned":   # at a glance in the runs table: ✂ name, KILLED (not green)
            self.client.update_run(rid, name=PRUNED_PREFIX + self._run_name(trial))
        self.client.set_terminated(rid, RUN_STATUS[status])
        self._done.add(tid)
        if self.progress:
            sel = r.get(f"sel_{self.metric}")
            val = (f"{self.metric} {sel:.2f} (epoch {int(r.get('sel_epoch', 0))})"
                   if status == "completed" and isinstance(sel, float) else
                   f"at epoch {int(r.get('epoch', 0))}/{self.epochs}")
            word = {"completed": "done  ", "pruned": "pruned", "errored": "ERROR "}[status]
            self._say(f"{word} {self._run_name(trial)[:60]}: {val}, "
                      f"{r.get('time_total_s', 0):.0f}s" +
                      (f" - {reason[:100]}" if reason and status != "completed" else ""))

    def _say(self, what: str) -> None:
        """One progress line per trial event: running count, done / total, ETA."""
        now = time.time()
        if self._t0 is None:
            self._t0, self._n0 = now, len(self._done)
        done, running = len(self._done), len(self._started - self._done)
        eta = ""
        if self.total and self._n0 < done < self.total:   # trials done in this session
            left = (now - self._t0) / (done - self._n0) * (self.total - done)
            eta = f", ETA {int(left // 60)}m{int(left % 60):02d}s"
        print(f"[merc] {done}/{self.total or '?'} done, {running} running{eta} | {what}",
              flush=True)

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
        self._submit(self._experiment_end, {t.trial_id for t in trials})
        self.flush()

    def _experiment_end(self, known: set) -> None:
        """Runs of trials the restored experiment never knew (started by a killed driver after
        its last snapshot; a search re-samples instead) are closed and soft-deleted, so the
        sweep keeps one child per trial."""
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
        self._submit(self._finish, self._snapshot(trial, ended=True), None)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._submit(self._finish, self._snapshot(trial, ended=True), _error_line(trial))

    def on_trial_recover(self, iteration, trials, trial, **info):
        self._submit(self._recover, self._snapshot(trial), _error_line(trial))

    def _recover(self, trial, error: str) -> None:
        """A failed trial Ray retries (``--retries``, e.g. a killed worker): its run says which
        attempt is running and why the last one failed."""
        try:
            rid = self.run_for(trial)
            self.client.log_batch(rid, tags=[
                RunTag("merc.attempts", str(_attempts(trial, failed=False))),
                RunTag("merc.last_failure", error[:5000])])
        except Exception as err:  # never let tracking kill the sweep
            log.warning("trial %s: could not tag the retry: %s", trial.trial_id, err)


def _attempts(trial, failed: bool) -> int:
    """Attempts a trial has made: its failures, plus the running / completed one."""
    n = int(getattr(trial, "num_failures", 0) or 0)
    return max(1, n if failed else n + 1)


def _error_line(trial) -> str:
    """The exception line of a trial's last error, not the whole traceback (that stays in the
    Ray trial dir)."""
    err = None
    try:   # written driver-side just before the hook; synced to storage only later
        if trial.error_file and Path(trial.error_file).is_file():
            err = Path(trial.error_file).read_text()
        else:
            err = trial.get_error()
    except Exception:
        pass
    text = str(err or "trial raised")
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return next((ln for ln in reversed(lines) if "Error" in ln or "Exception" in ln),
                lines[-1] if lines else "trial raised").strip()
