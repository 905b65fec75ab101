"""Spec -> Ray Tune run -> MLflow: :func:`run_sweep`.

Order of work (each step fails before the next starts):

1. load and validate the spec (:class:`~merc.sweep.spec.SpecError`, exit 2) - no Ray yet;
2. resolve the dataset (``synthetic:<preset>`` is generated and cached; a directory or ``file://``
   URI as is; an ``s3://``/``gs://`` URI is copied once to the driver's cache) and read its
   manifest; after Ray starts, the dataset is shipped to every node through the object store
   (:mod:`merc.sweep.datashipping`);
3. check MLflow (an unreachable ``--mlflow-uri`` stops here, exit 3), create the experiment and
   the parent run (or find it again on ``--resume``);
4. start or join Ray (in a thread, overlapping step 3; a sweep that fails in step 3 stops the
   Ray it started), build the Tuner (studies: the grid x seeds in a fixed order, no pruning;
   searches: :class:`OptunaSearcher` + :class:`OptunaPruningScheduler` or ASHA) or restore it;
5. after ``fit``: an interrupted sweep (SIGINT) exits 130 with the resume command; a finished one
   logs tables and plots to the parent run, prints the table, and (searches) re-runs the top-K
   configurations with fresh seeds when ``confirm_top`` is set.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import functools
import importlib
import json
import logging
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from merc.sweep.spec import (MODEL_KEY, SpecError, SweepSpec, check_study_name, load_spec,
                              split_point)

log = logging.getLogger("merc.sweep")
# Read by ray.tune at its import (so here, before it): the driver logs each epoch to MLflow from a
# Tune callback, which on a loaded 2-CPU machine passes Ray's 0.5 s "performance bottleneck"
# threshold now and then (benchmarks/bench_sweep.py measures the real overhead); warn past 5 s.
os.environ.setdefault("TUNE_WARN_THRESHOLD_S", "5")

EXIT_OK, EXIT_FAILED, EXIT_SPEC, EXIT_TRACKING, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
_STOPPING: list = []   # threads stopping a finished sweep's Ray (_Sweep.release_ray)


@dataclass
class SweepOptions:
    spec: str
    study: Optional[str] = None
    search: bool = False
    dataset: Optional[str] = None        # family / synthetic preset name, or a dataset spec
    data_dir: Optional[str] = None       # a canonical dataset dir or s3://, gs:// URI
    num_samples: Optional[int] = None
    epochs: Optional[int] = None
    seeds: Optional[list[int]] = None
    overrides: dict[str, Any] = field(default_factory=dict)
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    max_concurrent: int = 0
    retries: int = 1
    checkpoint_interval: float = 30.0    # seconds between trial checkpoints (last epoch always)
    address: Optional[str] = None
    num_cpus: Optional[int] = None       # local Ray only
    mlflow_uri: Optional[str] = None
    experiment: Optional[str] = None
    storage: Optional[str] = None
    name: Optional[str] = None
    resume: bool = False
    quick: bool = False
    confirm_top: int = 0
    confirm_seeds: int = 0
    imports: list[str] = field(default_factory=list)
    verbose: int = 1                     # 0 quiet, 1 one line per trial, 2+ Ray Tune's output
    print_fn: Any = print


@dataclass
class SweepOutcome:
    exit_code: int
    name: str = ""
    experiment: str = ""
    parent_run_id: str = ""
    tracking_uri: str = ""
    sweep_dir: str = ""
    counts: dict = field(default_factory=dict)
    table_md: str = ""
    artifacts: list = field(default_factory=list)
    wall_s: float = 0.0
    trials_s: float = 0.0
    champion: Optional[dict] = None
    optuna_storage: str = ""


# ---------------------------------------------------------------------------------------------
# small helpers


@functools.lru_cache(maxsize=8)
def git_commit(cwd: Optional[str] = None) -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd or Path(__file__).parent,
                              capture_output=True, text=True, timeout=5).stdout.strip() or "unknown"
    except Exception:
        return "unknown"


def is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def materialize_data(uri: str) -> Path:
    """A node-local copy of a remote dataset dir (``s3://``, ``gs://``), made once per node."""
    import hashlib
    import pyarrow.fs as pafs
    from merc.data.synthetic import cache_root
    key = hashlib.sha256(uri.encode()).hexdigest()[:12]
    target = cache_root() / "remote" / key
    if (target / "manifest.json").is_file():
        return target
    tmp = Path(tempfile.mkdtemp(dir=target.parent if target.parent.exists() else None))
    target.parent.mkdir(parents=True, exist_ok=True)
    fs, path = pafs.FileSystem.from_uri(uri)
    pafs.copy_files(path, str(tmp), source_filesystem=fs,
                    destination_filesystem=pafs.LocalFileSystem())
    try:
        os.rename(tmp, target)
    except OSError:
        pass
    return target


def resolve_dataset(spec: SweepSpec, opts: SweepOptions) -> tuple[str, Path]:
    """(dataset spec string as recorded, local dataset root)."""
    from merc.data.synthetic import PRESETS, resolve_data
    from merc.sweep.datashipping import local_path
    if opts.data_dir:
        ds = opts.data_dir
        root = materialize_data(ds) if is_remote(ds) else local_path(ds).resolve()
        if not (root / "manifest.json").is_file():
            raise SpecError(f"--data-dir {ds}: {root} is not a merc dataset directory (no "
                            f"manifest.json); create one with `merc data synth` or "
                            f"`merc data import`")
        return ds, root
    if opts.dataset:
        ds = opts.dataset if (":" in opts.dataset or "/" in opts.dataset or
                              opts.dataset not in PRESETS) else f"synthetic:{opts.dataset}"
        if opts.quick and ds.startswith("synthetic:") and "dataset" in spec.quick:
            ds = spec.quick["dataset"]
    elif opts.quick and "dataset" in spec.quick:
        ds = spec.quick["dataset"]
    else:
        ds = spec.dataset or "synthetic:iemocap6"
    try:
        root = resolve_data(ds if ds.startswith("synthetic:") or local_path(ds) is None
                            else local_path(ds))
    except ValueError as err:
        raise SpecError(f"--dataset: {err}") from None
    if not (Path(root) / "manifest.json").is_file():
        raise SpecError(f"--dataset {ds}: {root} is not a merc dataset directory (no "
                        f"manifest.json); create one with `merc data synth` or `merc data import`")
    return ds, Path(root)


def check_options(o: SweepOptions) -> None:
    """Numeric command-line options in range (before the spec, the data and Ray): one
    SpecError (exit 2) naming the option, what it must be and what was given."""
    bounds = [("--epochs", o.epochs, 1), ("--num-samples", o.num_samples, 1),
              ("--retries", o.retries, 0), ("--max-concurrent", o.max_concurrent, 0),
              ("--confirm-top", o.confirm_top, 0), ("--confirm-seeds", o.confirm_seeds, 0),
              ("--num-cpus", o.num_cpus, 1), ("--checkpoint-interval", o.checkpoint_interval, 0),
              ("--gpus-per-trial", o.gpus_per_trial, 0)]
    for flag, value, low in bounds:
        if value is not None and not value >= low:
            raise SpecError(f"{flag}: expected a number >= {low}, found {value}")
    if not o.cpus_per_trial > 0:
        raise SpecError(f"--cpus-per-trial: expected a number > 0, found {o.cpus_per_trial}")
    if o.seeds is not None and not o.seeds:
        raise SpecError("--seeds: expected at least one seed, found none")


def reserve_name(storage: str, name: str) -> str:
    """A fresh sweep's name, unique under a local ``storage``: its directory is created with
    ``mkdir`` (atomic), and a name taken by a sweep started in the same second gets ``-2``,
    ``-3``, ... (so two drivers never share a Ray experiment, an Optuna db or a parent run)."""
    if is_remote(storage):
        return name
    root = Path(storage)
    root.mkdir(parents=True, exist_ok=True)
    for k in range(1, 1000):
        cand = name if k == 1 else f"{name}-{k}"
        try:
            (root / cand).mkdir()
            return cand
        except FileExistsError:
            continue
    raise SpecError(f"--storage {storage}: 999 sweeps named {name}-*; pass --name")


def _label(ds: str) -> str:
    return ds.replace("synthetic:", "syn-").replace(":", "-").rstrip("/").split("/")[-1]


def full_flat(model: str, flat: dict, family: str, source: str) -> dict:
    """Every TrainConfig + model + strategy key, validated (the trial's complete, explicit,
    flat config: the strategy's keys are flat keys like on the command line)."""
    from merc.config import ConfigError
    from merc.configs.train import resolve_config
    try:
        train, mcfg = resolve_config(model, flat, family, source=source)
    except ConfigError as err:
        raise SpecError(str(err)) from None
    out = train.model_dump(exclude={"strategy_config"})
    if train.strategy_config is not None:
        out.update(train.strategy_config.model_dump())
    return {**out, **mcfg.model_dump()}


def point_flat(spec: SweepSpec, base: dict, values: dict, source: str) -> tuple[str, dict]:
    """``(model, flat)`` of a trial: inherited ``base`` + the point's ``values`` (keys of other
    models / strategies dropped when inherited, see :func:`merc.sweep.spec.split_point`)."""
    from merc.config import ConfigError
    try:
        return split_point(spec.model, base, values, spec.known, source)
    except ConfigError as err:
        raise SpecError(str(err)) from None


def _in_dist(v: Any, d: dict) -> bool:
    t = d["type"]
    if t == "categorical":
        return v in d["values"]
    if t == "fixed":
        return False
    try:
        return d["low"] <= v <= d["high"]
    except TypeError:
        return False


def _prefetch_reporting(search: bool = False,
                        ray_up: Optional[threading.Event] = None) -> None:
    """Import what the end of the sweep needs (matplotlib, the report module; for a study
    scipy.stats, its paired tests; for a search Optuna's importance and plotting modules) in a
    thread, instead of after the last trial (~1 s of the fixed cost per sweep, ~1.5 s more for a
    study, ~2 s more for a search).

    When: started once the driver's set-up is done, each import runs while Ray is still starting
    (on 2 cores that leaves ~1 s of both idle); once ``ray_up`` is set, the rest waits for the
    first trial result (``tracking.TRIALS_RUNNING``). In between, the workers import the trial's
    modules (torch, Ray Tune, merc) and the driver starts Tune, and ~1.5 CPU-s of imports beside
    them (holding the GIL that Tune's start needs) delayed the first trials."""
    mods = ["matplotlib", "matplotlib.pyplot", "merc.sweep.report"] + (
        ["optuna.importance", "optuna.visualization.matplotlib"] if search else ["scipy.stats"])

    def load() -> None:
        from merc.sweep.tracking import TRIALS_RUNNING
        try:
            for m in mods:
                if ray_up is not None and ray_up.is_set():
                    TRIALS_RUNNING.wait(timeout=600)
                importlib.import_module(m)
                if m == "matplotlib":
                    sys.modules[m].use("Agg")
        except Exception:  # noqa: BLE001 - imported again (and reported) where it is used
            pass
    threading.Thread(target=load, name="merc-prefetch", daemon=True).start()


@contextlib.contextmanager
def pending_trials(n: int):
    """Let Tune stage up to ``n`` trials at once (``TUNE_MAX_PENDING_TRIALS_PG``, unless the user
    set it). With a custom searcher (ours: grid and Optuna) Tune stages one trial at a time, so
    the second slot's worker only starts importing once the first trial runs: its first trial
    starts an actor start-up later (~4 s) and the sweep ends that much later. With ``n`` = the
    slots, every slot's worker starts at once; afterwards a staged trial waits for each slot."""
    key = "TUNE_MAX_PENDING_TRIALS_PG"
    if key in os.environ:
        yield
        return
    os.environ[key] = str(max(1, int(n)))
    try:
        yield
    finally:
        os.environ.pop(key, None)


@contextlib.contextmanager
def plain_trial_actors(active: bool):
    """Trial actors without a runtime_env, so that they take the worker processes the local Ray
    prestarts (one per CPU, already up when ``ray.init`` returns). Tune gives every
    trial actor ``runtime_env={"env_vars": {"PL_DISABLE_FORK": "1"}}`` (for PyTorch Lightning; the
    driver exports it to every worker instead, :meth:`_Sweep.start_ray`); a worker started without
    that runtime_env never runs such an actor, so Ray would start (and import torch, PyG, merc into)
    one more process per slot while the prestarted ones idle. Nothing changes when Tune has more
    to pass (a variable it propagates is set in the driver) or when Ray is not this sweep's own."""
    if not active:
        yield
        return
    from ray.tune.execution import class_cache
    env = class_cache.DEFAULT_ENV_VARS
    if set(env) - {"PL_DISABLE_FORK"} or any(v in os.environ
                                             for v in class_cache.ENV_VARS_TO_PROPAGATE):
        yield
        return
    saved = dict(env)
    env.clear()
    try:
        yield
    finally:
        env.update(saved)


def worker_system_config(preload: list[str]) -> Optional[dict]:
    """Ray settings for a local Ray whose prestarted workers import ``preload`` as they start.

    Ray kills workers it has counted idle for more than ``idle_worker_killing_time_threshold_ms``
    (1 s), and a worker still importing the trial's modules counts as idle: on a busy driver (a
    search) Ray killed both prestarted workers ~2 s after starting them ("idle for a long time"
    in their logs), then started one or two more for the trial actors, which imported
    everything again (5 of 8 quick searches; none of 9 since). Idle workers live for the sweep's
    duration instead (Ray itself is stopped with it)."""
    if not preload:
        return None
    return {"preload_python_modules": preload, "idle_worker_killing_time_threshold_ms": 600_000}


class _DropMessage(logging.Filter):
    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


# ---------------------------------------------------------------------------------------------
# the sweep


class _Sweep:
    def __init__(self, opts: SweepOptions):
        self.o = opts
        self.p = opts.print_fn
        self.t0 = time.time()

    # -- 1..3: before Ray ----------------------------------------------------------------------
    def prepare(self) -> None:
        o = self.o
        if bool(o.study) == bool(o.search):
            raise SpecError(f"{o.spec}: choose exactly one of --study NAME or --search")
        check_options(o)
        self.spec = spec = load_spec(o.spec, quick=o.quick)
        if o.study:
            self.study = check_study_name(spec, o.study)
            self.kind = o.study
        else:
            if spec.search is None:
                raise SpecError(f"{o.spec}: search: this file defines no search space")
            self.study = None
            self.kind = "search"
        for mod in o.imports:
            __import__(mod)
        self.dataset, self.data_root = resolve_dataset(spec, o)
        from merc.data.format import DatasetError, check_dataset
        try:   # a broken dataset is one message (exit 2) before Ray, not N errored trials
            man = check_dataset(self.data_root)
        except DatasetError as err:
            raise SpecError(str(err)) from None
        self.manifest = man
        self.family = man.family
        upper = dict(self.study.fixed) if self.study else {}
        if o.epochs is not None:
            upper["epochs"] = o.epochs
        upper.update(o.overrides)
        self.upper = upper            # over the spec's defaults + fixed: study fixed, command line
        src = f"{o.spec} (+ command line)"
        base = spec.trial_base(self.family, o.quick, upper)
        self.model, active = point_flat(spec, base, {}, src)
        self.base = full_flat(self.model, active, self.family, src)
        self.epochs = int(self.base["epochs"])
        if self.study and o.seeds:
            self.study.seeds = list(o.seeds)
        # names and places
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        prefix = f"{spec.name}-{self.kind}-{_label(self.dataset)}" + ("-quick" if o.quick else "")
        storage = o.storage or str(Path.cwd() / "ray_results")
        if not is_remote(storage):
            storage = str(Path(storage).expanduser().resolve())
        self.storage = storage
        if o.name:
            self.name = o.name
        elif o.resume:
            self.name = self._latest(prefix)
        else:
            self.name = reserve_name(storage, f"{prefix}-{stamp}")
        self.experiment = o.experiment or f"{spec.name}-{self.kind}"
        self.tracking_uri = o.mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI") or \
            __import__("merc.sweep.tracking", fromlist=["x"]).default_tracking_uri()
        if is_remote(storage):
            odir = Path.cwd() / "optuna"
        else:
            odir = Path(storage)
        odir.mkdir(parents=True, exist_ok=True)
        self.optuna_url = f"sqlite:///{odir / (self.name + '.optuna.db')}"

    def _latest(self, prefix: str) -> str:
        if is_remote(self.storage):
            raise SpecError("--resume with remote --storage needs --name (the sweep's name)")
        cands = sorted(p.name for p in Path(self.storage).glob(prefix + "-2*") if p.is_dir()
                       and not p.name.endswith("-confirm")
                       and any(p.iterdir()))   # (an empty one: reserved, never started)
        if not cands:
            raise SpecError(f"--resume: no sweep named {prefix}-<date> under {self.storage}; "
                            f"pass --name")
        return cands[-1]

    def path(self, name: Optional[str] = None) -> str:
        return f"{self.storage.rstrip('/')}/{name or self.name}"

    def setup_tracking(self) -> None:
        from merc.sweep.tracking import (MlflowClient, check_tracking, ensure_experiment,
                                         find_runs)
        if not self.tracking_uri.startswith(("http://", "https://")):   # a server: checked in
            check_tracking(self.tracking_uri)           # run() before Ray; here the sqlite store
        # (no mlflow.set_tracking_uri: it exports MLFLOW_TRACKING_URI process-wide)
        self.client = client = MlflowClient(self.tracking_uri)
        try:
            self.exp_id = ensure_experiment(client, self.experiment)
        except Exception as err:
            from merc.sweep.tracking import TrackingError
            raise TrackingError(f"--mlflow-uri {self.tracking_uri}: cannot use the tracking "
                                f"store ({err})") from None
        parents = find_runs(client, self.exp_id, f"tags.`merc.sweep_id` = '{self.name}' and "
                                                 f"tags.`merc.role` = 'parent'", 5)
        if parents:
            if not self.o.resume:
                raise SpecError(f"sweep {self.name!r} already exists in experiment "
                                f"{self.experiment!r}; pass --resume, or another --name")
            self.parent_id = parents[0].info.run_id
            client.update_run(self.parent_id, status="RUNNING")
            return
        if self.o.resume and not self._can_restore(self.path()):
            raise SpecError(f"--resume: nothing to resume at {self.path()}")
        o = self.o
        title = self.study.title if self.study else f"search ({self.spec.search.num_samples} " \
                                                    f"samples)"
        run = client.create_run(self.exp_id, run_name=f"sweep {self.name}", tags={
            "merc.role": "parent", "merc.sweep_id": self.name, "merc.model": self.model,
            "merc.models": ",".join(self.study_models()),
            "merc.dataset": self.dataset, "merc.family": self.family, "merc.kind": self.kind,
            "merc.quick": str(o.quick), "mlflow.source.git.commit": git_commit(),
            "merc.git_commit": git_commit(), "merc.data_fingerprint": self.manifest.fingerprint,
            "merc.storage": self.path(), "merc.optuna_storage": self.optuna_url,
            "mlflow.note.content": title})
        self.parent_id = run.info.run_id
        params = {"model": self.model, "dataset": self.dataset, "family": self.family,
                  "spec_file": o.spec, "kind": self.kind, "epochs": self.epochs,
                  "data_fingerprint": self.manifest.fingerprint, "git_commit": git_commit(),
                  "cpus_per_trial": o.cpus_per_trial, "gpus_per_trial": o.gpus_per_trial,
                  "retries": o.retries, "quick": o.quick, "data_root": str(self.data_root)}
        if self.study:
            params.update({"seeds": str(self.study.seeds), "grid_points": len(self.study.points),
                           "reference": self.study.reference,
                           "curves": ",".join(self.study.curves)})
        else:
            s = self.spec.search
            params.update({"num_samples": o.num_samples or s.num_samples,
                           "sampler": json.dumps(s.sampler), "pruner": json.dumps(s.pruner),
                           "confirm_top": o.confirm_top, "confirm_seeds": o.confirm_seeds})
        from mlflow.entities import Param
        client.log_batch(self.parent_id, params=[Param(k, str(v)[:6000])
                                                 for k, v in params.items()])
        with tempfile.TemporaryDirectory() as d:
            Path(d, "spec.yaml").write_text(Path(o.spec).read_text())
            Path(d, "manifest.json").write_text(self.manifest.model_dump_json(indent=2))
            Path(d, "base_config.json").write_text(json.dumps(self.base, indent=1))
            for f in ("spec.yaml", "manifest.json", "base_config.json"):
                client.log_artifact(self.parent_id, str(Path(d, f)))

    # -- 4: Ray -----------------------------------------------------------------------------------
    def open_search_study(self) -> None:
        """Create (or open) the search's Optuna study while Ray is still starting: its RDB
        tables and sampler cost ~0.6-0.8 s, which the first trial actors otherwise wait for in
        the searcher's first suggestion."""
        from merc.sweep.optuna_glue import direction, open_study
        s = self.spec.search
        open_study(self.optuna_url, self.name, direction(self.spec.mode), s.sampler, s.pruner)

    def start_ray_background(self) -> None:
        """:meth:`start_ray` in a thread (``ray.init`` mostly waits for the GCS, the raylet and
        the prestarted workers: other processes), so that the driver's remaining set-up (data,
        config, MLflow store and parent run) overlaps it; :meth:`join_ray` waits for it."""
        import threading
        if getattr(self, "_ray_thread", None) is not None:
            return
        import ray   # (imported here, not concurrently in two threads)
        self._ray_was_up = ray.is_initialized()
        self._ray_error: Optional[BaseException] = None

        def start() -> None:
            # ("SIGTERM handler is not set ... not the main thread": run_sweep sets its own)
            quiet = logging.getLogger("ray._private.worker")
            drop = _DropMessage("SIGTERM handler is not set")
            quiet.addFilter(drop)
            try:
                self.start_ray()
            except BaseException as err:  # noqa: BLE001 - re-raised by join_ray
                self._ray_error = err
            finally:
                quiet.removeFilter(drop)
                started.set()
            # Ray starts its GCS and raylet with PR_SET_PDEATHSIG, which fires when the *thread*
            # that forked them ends: this thread lives as long as the Ray it started
            while self._ray_error is None and not self._ray_was_up and ray.is_initialized():
                time.sleep(1.0)
        started = threading.Event()
        self._ray_started = started
        self._ray_thread = threading.Thread(target=start, name="merc-ray-start", daemon=True)
        self._ray_thread.start()

    def join_ray(self, shutdown: bool = False) -> None:
        """Wait for :meth:`start_ray_background` (or start Ray now if it never ran). With
        ``shutdown`` (the sweep failed before its trials), a Ray this sweep started is stopped
        again, as if it had never been started."""
        t = getattr(self, "_ray_thread", None)
        if t is None:
            if not shutdown:
                self.start_ray()
            return
        self._ray_started.wait()
        self._ray_thread = None
        if shutdown:
            if not self._ray_was_up:
                import ray
                if ray.is_initialized():
                    ray.shutdown()
            return
        if self._ray_error is not None:
            raise self._ray_error

    def release_ray(self) -> None:
        """After the sweep's last trials: stop the local Ray this sweep started, in a thread,
        while the driver writes the tables, plots and the parent run (``ray.shutdown`` otherwise
        runs at exit, after them). The thread is not a daemon: the process, ``exit_process``
        included, waits for it; a later sweep in this process waits for it before its Ray."""
        if not getattr(self, "_own_ray", False) or getattr(self, "_ray_was_up", False):
            return
        import threading

        import ray

        def stop() -> None:
            try:
                ray.shutdown()
            except Exception as err:  # noqa: BLE001 - Ray's own exit handler tries again
                log.warning("ray.shutdown after the trials: %s", err)
        self._own_ray = False
        t = threading.Thread(target=stop, name="merc-ray-stop")
        _STOPPING.append(t)
        t.start()

    def start_ray(self) -> None:
        import ray
        while _STOPPING:          # a previous sweep's Ray, still stopping (release_ray)
            _STOPPING.pop().join()
        if ray.is_initialized():
            return
        if self.o.address:
            ray.init(address=self.o.address, log_to_driver=self.o.verbose > 1)
        else:
            os.environ.setdefault("RAY_AUTH_MODE", "disabled")
            # what Tune sets in every trial actor's runtime_env, here inherited by all workers
            # (so that the actors can take the prestarted workers: plain_trial_actors)
            os.environ.setdefault("PL_DISABLE_FORK", "1")
            kw = dict(num_cpus=self.o.num_cpus, log_to_driver=self.o.verbose > 1,
                      include_dashboard=False)
            preload = self.worker_preload()
            try:
                ray.init(**kw, _system_config=worker_system_config(preload))
            except ValueError as err:
                # RAY_ADDRESS, or a `ray start` instance on this machine: ray.init joins that
                # cluster, whose workers are its own (Ray refuses a _system_config there)
                if "_system_config" not in str(err):
                    raise
                ray.init(**kw)
            self._own_ray = True

    def worker_preload(self) -> list[str]:
        """What a trial imports (the trainable, torch, Ray Tune, the study's model modules and
        what building them imports: ``BUILD_IMPORTS``), for this sweep's local Ray to import into
        every worker as it starts: the workers Ray prestarts then import while the driver sets up
        MLflow, not after the Tuner placed the first trials on them (~4 s per slot before the
        first epoch). Best effort: a module that
        fails to import here is imported (and fails) again in the trial.

        Nothing when some prestarted workers would idle: Ray prestarts one worker per CPU, and an
        idle worker holding torch (and PyG) costs ~400 MB (e.g. 4-CPU trials on a 64-CPU machine).
        """
        o = self.o
        ncpu = o.num_cpus or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                              else os.cpu_count() or 1)
        if o.gpus_per_trial or self._slots_of(ncpu, 0.0) < ncpu:    # (GPUs: unknown before Ray)
            return []
        from merc.configs import BUILD_IMPORTS, MODEL_MODULES as MODULES
        mods = ["merc.sweep.trainable"]
        for m in self.study_models():
            mods += [MODULES[m]] if m in MODULES else []
            mods += BUILD_IMPORTS.get(m, ())
        return list(dict.fromkeys(mods))

    def slots(self) -> int:
        """Trials that can run at once: ``--max-concurrent``, else the cluster's CPUs (and GPUs)
        divided by a trial's."""
        import ray
        res = ray.cluster_resources()
        return self._slots_of(res.get("CPU", 1.0), res.get("GPU", 0.0))

    def _slots_of(self, cpus: float, gpus: float) -> int:
        o = self.o
        n = int(cpus // o.cpus_per_trial)
        if o.gpus_per_trial:
            n = min(n, int(gpus // o.gpus_per_trial))
        return max(1, min(n, o.max_concurrent) if o.max_concurrent else n)

    def _can_restore(self, path: str) -> bool:
        from ray import tune
        try:
            return tune.Tuner.can_restore(path)
        except Exception:
            return False

    def study_models(self) -> list[str]:
        """The models a study's trials train (the sweep's model unless points select others)."""
        if not self.study:
            return [self.model]
        ms = [str(p.values.get(MODEL_KEY, self.model)) for p in self.study.points]
        return list(dict.fromkeys(ms))

    def ctx(self) -> dict:
        return {"model": self.model, "family": self.family,
                "data_root": str(self.data_root), "metric": self.spec.metric,
                "imports": list(self.o.imports),
                "checkpoint_interval": float(self.o.checkpoint_interval)}

    def study_configs(self) -> list[dict]:
        st = self.study
        out = []
        ctx = self.ctx()
        # a study whose points select models carries the key `model` in every trial config
        # (an MLflow param, part of the config hash); run_trial builds that model
        per_model = any(MODEL_KEY in p.values for p in st.points)
        for seed in st.seeds:           # seed-major: partial results stay paired
            for p in st.points:
                src = f"{self.o.spec}: studies.{st.name}.{p.label}"
                base = self.spec.trial_base(self.family, self.o.quick, self.upper, p.values)
                model, flat = point_flat(self.spec, base, p.values, src)
                flat["seed"] = seed
                flat = full_flat(model, flat, self.family, src)
                if per_model:
                    flat[MODEL_KEY] = model
                out.append({**flat, "_point": p.label, "_merc": ctx})
        return out

    def trainable(self):
        """run_trial with its resources and the dataset shipped to every node (the driver's
        local path means nothing on another node: :mod:`merc.sweep.datashipping`)."""
        from ray import tune
        from merc.sweep.entry import run_trial
        res = {"cpu": self.o.cpus_per_trial}
        if self.o.gpus_per_trial:
            res["gpu"] = self.o.gpus_per_trial
        if getattr(self, "shipment", None) is None:
            from merc.sweep.datashipping import ship
            self.shipment = ship(self.dataset, self.data_root)
            self.p(f"[merc] data: {self.shipment.nbytes / 2**20:.1f} MiB in Ray's object store, "
                   f"materialised once per node (fingerprint {self.shipment.fingerprint})")
        return tune.with_resources(tune.with_parameters(run_trial, data=self.shipment), res)

    def build_tuner(self, name: str, stage: str, configs: Optional[list[dict]] = None):
        from ray import tune
        from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
        from merc.sweep.optuna_glue import GridSearcher, OptunaPruningScheduler, OptunaSearcher
        from merc.sweep.tracking import MercMLflowCallback
        spec, o = self.spec, self.o
        scheduler = None
        if configs is not None:          # study or confirm stage: fixed grid, no pruning
            searcher = GridSearcher(configs, spec.metric, spec.mode)
            num = len(configs)
            varied = sorted({k for c in configs for k in c if not k.startswith("_")
                             and any(c2.get(k) != c.get(k) for c2 in configs)})
        else:
            s = spec.search
            space = {k: d.to_dict() for k, d in s.space.items()}
            base = {**self.base, "seed": s.seed, "_merc": self.ctx()}
            start = []
            if s.start_from_defaults:
                p0 = {k: self.base[k] for k, d in space.items()
                      if d["type"] != "fixed" and _in_dist(self.base[k], d)}
                start = [p0] if p0 else []
            searcher = OptunaSearcher(space, base, metric=spec.metric, mode=spec.mode,
                                      storage_url=self.optuna_url, study_name=name,
                                      sampler=s.sampler, pruner=s.pruner, epochs=self.epochs,
                                      start_points=start)
            num = o.num_samples or s.num_samples
            if s.pruner.get("type") == "asha":
                args = {k: v for k, v in s.pruner.items() if k != "type"}
                scheduler = tune.schedulers.ASHAScheduler(
                    time_attr="epoch", max_t=self.epochs,
                    grace_period=int(args.get("grace_period", 1)),
                    reduction_factor=args.get("reduction_factor", 3),
                    brackets=int(args.get("brackets", 1)))
            elif s.pruner.get("type") != "none":
                scheduler = OptunaPruningScheduler(spec.metric, spec.mode, self.epochs,
                                                   storage_url=self.optuna_url, study_name=name,
                                                   sampler=s.sampler, pruner=s.pruner)
            varied = [k for k, d in space.items() if d["type"] != "fixed"]
        tags = {"merc.model": self.model, "merc.dataset": self.dataset, "merc.family": self.family}
        cb = MercMLflowCallback(self.tracking_uri, self.exp_id, self.parent_id, name,
                                metric=spec.metric, epochs=self.epochs, tags=tags,
                                varied=varied, stage=stage,
                                study=self.study.name if self.study else "", total=num)
        self.varied = varied
        maxc = o.max_concurrent or None
        tuner = tune.Tuner(
            self.trainable(),
            tune_config=tune.TuneConfig(
                metric=spec.metric, mode=spec.mode, search_alg=searcher, scheduler=scheduler,
                num_samples=num, max_concurrent_trials=maxc,
                # a worker process imports torch/PyG/merc once and runs trial after trial
                # (fit() re-seeds everything; the opened dataset is cached per process)
                reuse_actors=True,
                trial_dirname_creator=lambda t: f"{t.trial_id}"),
            run_config=tune.RunConfig(
                name=name, storage_path=self.storage, verbose=max(0, o.verbose - 1),
                # Tune's JSON and CSV result files, not its TensorBoard logger (run_stage)
                callbacks=[cb, JsonLoggerCallback(), CSVLoggerCallback()],
                failure_config=tune.FailureConfig(max_failures=o.retries),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1)))
        return tuner

    def run_stage(self, name: str, stage: str, configs: Optional[list[dict]] = None):
        from ray import tune
        # CheckpointConfig(num_to_keep=1) forces an experiment snapshot per trial checkpoint, by
        # design (one checkpoint on disk per trial); Ray warns about it each time unless this is 0
        os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
        # Tune adds a TensorBoard logger per trial unless this is set: tensorboardX imports torch
        # (~2 CPU-s in the driver, which otherwise never imports it, before the first trial) and
        # writes an event file per result; MLflow is this tool's record (build_tuner keeps the
        # JSON and CSV loggers)
        os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
        if self.o.verbose <= 1:   # our one line per trial event (tracking.py) instead of Ray's
            # output engine, which prints its header box even at verbose=0
            os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
        path = self.path(name)
        if self.o.resume and self._can_restore(path):
            self.p(f"[merc] resuming {path}")
            tuner = tune.Tuner.restore(path, self.trainable(),
                                       resume_unfinished=True, resume_errored=False)
            # the restored callback/searcher come from the pickle; recompute display fields
            if configs is not None:
                self.varied = sorted({k for c in configs for k in c if not k.startswith("_")
                                      and any(c2.get(k) != c.get(k) for c2 in configs)})
            else:
                self.varied = [k for k, d in self.spec.search.space.items()
                               if d.type != "fixed"]
        else:
            tuner = self.build_tuner(name, stage, configs)
        with pending_trials(self.slots()), plain_trial_actors(getattr(self, "_own_ray", False)):
            rg = tuner.fit()
        from merc.sweep.optuna_storage import flush_all
        from merc.sweep.tracking import flush_writers
        flush_writers()          # MLflow is written from a thread (tracking.py): all of it now
        flush_all()              # so is the Optuna study (optuna_storage.py)
        trials = rg._experiment_analysis.trials
        unfinished = [t for t in trials if t.status not in ("TERMINATED", "ERROR")]
        expected = len(configs) if configs is not None else (
            self.o.num_samples or self.spec.search.num_samples)
        interrupted = bool(unfinished) or len(trials) < expected
        return rg, trials, interrupted

    # -- 5: results -----------------------------------------------------------------------------
    def child_frame(self, name: str):
        from merc.sweep.report import runs_frame
        from merc.sweep.tracking import find_runs
        runs = find_runs(self.client, self.exp_id, f"tags.`merc.sweep_id` = '{name}' and "
                                                   f"tags.`mlflow.parentRunId` = "
                                                   f"'{self.parent_id}'")
        return runs_frame(runs)

    def log_art(self, path: Path, sub: str = "") -> None:
        self.client.log_artifact(self.parent_id, str(path), sub or None)
        self.artifacts.append(f"{sub + '/' if sub else ''}{path.name}")

    def finish_study(self, out: Path) -> str:
        from merc.sweep.report import (data_description, majority_baseline, plot_study,
                                       state_counts, study_table, table_markdown)
        df = self.child_frame(self.name)
        counts = state_counts(df)
        tab = study_table(df, self.study, self.family)
        floor, what = majority_baseline(self.data_root), data_description(self.manifest,
                                                                           self.dataset)
        md = table_markdown(tab, self.study, self.family, counts, baseline=floor, data=what)
        curves_note = self.study_curves(df, out) if self.study.curves else ""
        md += curves_note
        df.to_csv(out / "results.csv", index=False)
        tab.to_csv(out / f"{self.study.name}_table.csv", index=False)
        (out / f"{self.study.name}_table.md").write_text(md)
        for f in ("results.csv", f"{self.study.name}_table.csv", f"{self.study.name}_table.md"):
            self.log_art(out / f)
        for p in plot_study(tab, self.study, out / "plots", data=what, baseline=floor):
            self.log_art(p, "plots")
        self.counts = counts
        self.trials_s = float(df["trial_time_s"].fillna(0).sum()) if "trial_time_s" in df else 0.0
        return md

    def study_curves(self, df, out: Path) -> str:
        """The study's ``curves``: per-epoch histories of the completed trials -> mean/std over
        seeds per point and epoch (``<study>_curves.csv``) and one PNG per entry under plots/.
        Returns a note for the table (entries that matched no metric), or ''."""
        from merc.sweep.report import curve_table, expand_curves, plot_curves
        st = self.study
        full = df[df.status == "completed"] if len(df) else df
        names = set()
        for rid in full.run_id if len(full) else []:
            names |= set(self.client.get_run(rid).data.metrics)
        expanded = expand_curves(st.curves, names)
        wanted = sorted({m for ms in expanded.values() for m in ms})
        rows = []
        for _, r in full.iterrows() if len(full) else []:
            for m in wanted:
                for h in self.client.get_metric_history(r.run_id, m):
                    rows.append({"point": r.point, "seed": r.seed, "metric": m,
                                 "epoch": int(h.step), "value": float(h.value)})
        ctab = curve_table(rows)
        ctab.to_csv(out / f"{st.name}_curves.csv", index=False)
        self.log_art(out / f"{st.name}_curves.csv")
        for p in plot_curves(ctab, st, expanded, out / "plots"):
            self.log_art(p, "plots")
        missing = [e for e, ms in expanded.items() if not ms]
        if missing:
            return (f"Curves: no per-epoch metric matches {', '.join(missing)} (metrics logged: "
                    f"{', '.join(sorted(names)[:30])}).\n")
        return ""

    def finish_search(self, out: Path) -> str:
        from merc.sweep.report import plot_search, search_table, state_counts, to_markdown
        df = self.child_frame(self.name)
        counts = state_counts(df)
        self.counts = counts
        df.to_csv(out / "results.csv", index=False)
        self.log_art(out / "results.csv")
        tab = search_table(df, self.varied, self.spec.metric)
        md_lines = [f"### Search: {self.model} on {self.dataset}", "",
                    f"Trials: {counts.get('completed', 0)} full-budget, "
                    f"{counts.get('pruned', 0)} pruned (excluded), {counts.get('errored', 0)} "
                    f"errored (excluded). Top configurations by selected {self.spec.metric}:", ""]
        if len(tab):
            md_lines.append(to_markdown(tab))
        from merc.sweep.optuna_glue import direction
        paths, imp, ev = plot_search(self.optuna_url, self.name, out / "plots",
                                     direction(self.spec.mode))
        if imp:
            md_lines += ["", f"Parameter importance ({ev}, complete trials only): " +
                         ", ".join(f"{k} {v:.2f}" for k, v in imp.items())]
        md = "\n".join(md_lines) + "\n"
        (out / "search_table.md").write_text(md)
        if len(tab):
            tab.to_csv(out / "search_table.csv", index=False)
            self.log_art(out / "search_table.csv")
        self.log_art(out / "search_table.md")
        for p in paths:
            self.log_art(p, "plots")
        self.trials_s = float(df["trial_time_s"].fillna(0).sum()) if "trial_time_s" in df else 0.0
        return md

    def confirm(self, out: Path) -> tuple[str, Optional[dict]]:
        """Re-run the top-K completed search configs with N fresh seeds; pick by seed mean."""
        import pandas as pd
        from merc.sweep.report import runs_frame  # noqa: F401
        o = self.o
        conf = self.spec.search.confirm
        k = o.confirm_top or int(conf.get("top_k", 0))
        n = o.confirm_seeds or len(conf.get("seeds", [])) or 3
        if k <= 0:
            return "", None
        df = self.child_frame(self.name)
        sel = f"sel_{self.spec.metric}"
        full = df[df.status == "completed"].sort_values(sel, ascending=self.spec.mode == "min")
        full = full.drop_duplicates("config_hash").head(k)
        used = {int(s) for s in df.seed.dropna()}
        seeds = [s for s in (conf.get("seeds") or []) if s not in used][:n]
        nxt = max(used | set(seeds) | {999}) + 1
        while len(seeds) < n:
            seeds.append(nxt)
            nxt += 1
        ctx = self.ctx()
        configs = []
        for rank, (_, row) in enumerate(full.iterrows()):
            flat = self._typed_params(row)
            for s in seeds:
                c = {**flat, "seed": s}
                configs.append({**c, "_point": f"top{rank + 1}", "_merc": ctx,
                                "_source_run": row.run_id})
        name = f"{self.name}-confirm"
        self.p(f"[merc] confirming top {len(full)} configurations x seeds {seeds} "
               f"({len(configs)} trials)")
        self.study_for_confirm = name
        _, _, interrupted = self.run_stage(name, "confirm", configs)
        if interrupted:
            return "interrupted", None
        cdf = self.child_frame(name)
        cdf = cdf[cdf.status == "completed"]
        if not len(cdf):
            return "", None
        g = cdf.groupby("point")[sel].agg(["mean", "std", "count"])
        g["test_mean"] = cdf.groupby("point")[sel.replace("val_", "test_")].mean()
        g = g.sort_values("mean", ascending=self.spec.mode == "min")
        best_point = g.index[0]
        md = ["### Confirmation: top-K configurations with fresh seeds", "",
              f"seeds {seeds}; picked by the seed mean of {sel}", "",
              "| candidate | n | val mean ± std | test mean |", "|---|---|---|---|"]
        for pt, r in g.iterrows():
            star = " **(champion)**" if pt == best_point else ""
            md.append(f"| {pt}{star} | {int(r['count'])} | {r['mean']:.2f} ± "
                      f"{(0 if pd.isna(r['std']) else r['std']):.2f} | {r.test_mean:.2f} |")
        text = "\n".join(md) + "\n"
        (out / "confirm_table.md").write_text(text)
        cdf.to_csv(out / "confirm_results.csv", index=False)
        self.log_art(out / "confirm_table.md")
        self.log_art(out / "confirm_results.csv")
        return text, {"point": best_point, "val_mean": float(g.iloc[0]["mean"])}

    def _typed_params(self, row) -> dict:
        """A search trial's flat config, exactly as Ray ran it (from the restored trial list)."""
        from merc.sweep.entry import flat_of
        cfg = self.trial_configs.get(row.trial_id)
        if cfg is None:
            raise SpecError(f"confirm: trial {row.trial_id} of run {row.run_id} is not in the "
                            f"sweep's Ray experiment {self.path()}")
        return flat_of(cfg)

    def run(self) -> SweepOutcome:
        o = self.o
        self.artifacts: list[str] = []
        self.counts: dict = {}
        self.trials_s = 0.0
        self.prepare()
        if self.tracking_uri.startswith(("http://", "https://")):
            from merc.sweep.tracking import check_tracking
            check_tracking(self.tracking_uri)   # an unreachable server: exit 3 before Ray
        # spec, data and options are valid: Ray starts (its own processes) while this thread
        # sets up MLflow (store, experiment, parent run); joined before the Tuner
        self.start_ray_background()
        self.setup_tracking()
        if not self.study:
            self.open_search_study()
        # (as far as it gets while Ray starts; the rest once the trials run)
        _prefetch_reporting(search=not self.study, ray_up=self._ray_started)
        self.join_ray()
        self.p(f"[merc] sweep {self.name}: {'/'.join(self.study_models())} {self.kind} on "
               f"{self.dataset} "
               f"({self.data_root}), {self.epochs} epochs, storage {self.path()}")
        self.p(f"[merc] MLflow {self.tracking_uri} experiment {self.experiment!r} parent run "
               f"{self.parent_id}")
        from merc.sweep.tracking import compare_note, prepare_experiment, runs_view_url
        metric, mode = self.spec.metric, self.spec.mode
        self.view_url = runs_view_url(self.tracking_uri, self.exp_id, self.name, metric, mode)
        prepare_experiment(self.client, self.exp_id, compare_note(
            [], metric, runs_view_url(self.tracking_uri, self.exp_id, "", metric, mode)))
        self.p(f"[merc] runs table (MLflow UI): {self.view_url}")
        configs = self.study_configs() if self.study else None
        _, trials, interrupted = self.run_stage(self.name, self.kind if self.study else "search",
                                                configs)
        self.trial_configs = {t.trial_id: t.config for t in trials}
        outcome = SweepOutcome(EXIT_OK, self.name, self.experiment, self.parent_id,
                               self.tracking_uri, self.path(), optuna_storage=self.optuna_url)
        resume_cmd = f"--resume --name {self.name}"
        if interrupted:
            self.p(f"[merc] sweep interrupted; resume with the same arguments plus: {resume_cmd}")
            outcome.exit_code = EXIT_INTERRUPTED
            return outcome
        confirming = not self.study and bool(
            (o.confirm_top or self.spec.search.confirm.get("top_k")) and
            (o.confirm_top or o.confirm_seeds))
        if not confirming:
            self.release_ray()
        out = Path(tempfile.mkdtemp(prefix="merc-sweep-"))
        md = self.finish_study(out) if self.study else self.finish_search(out)
        champion = None
        if confirming:
            text, champion = self.confirm(out)
            self.release_ray()
            if text == "interrupted":
                self.p(f"[merc] confirmation interrupted; resume with: {resume_cmd}")
                outcome.exit_code = EXIT_INTERRUPTED
                return outcome
            md += "\n" + text
        wall = time.time() - self.t0
        from mlflow.entities import Metric, RunTag
        ts = int(time.time() * 1000)
        c = self.counts
        self.client.log_batch(self.parent_id, metrics=[
            Metric("sweep_wall_s", wall, ts, 0), Metric("trials_time_sum_s", self.trials_s, ts, 0),
            Metric("trials_completed", c.get("completed", 0), ts, 0),
            Metric("trials_pruned", c.get("pruned", 0), ts, 0),
            Metric("trials_errored", c.get("errored", 0), ts, 0)],
            tags=[RunTag("merc.status", "finished"),
                  RunTag("mlflow.note.content", (compare_note(
                      getattr(self, "varied", []), metric, self.view_url) + "\n" + md)[:60000])] +
                 ([RunTag("merc.champion", json.dumps(champion))] if champion else []))
        self.client.set_terminated(self.parent_id, "FINISHED")
        self.p("")
        self.p(md)
        self.p(f"[merc] trials: {c}; wall {wall:.1f}s, sum of trial times {self.trials_s:.1f}s")
        self.p(f"[merc] artifacts on parent run {self.parent_id}: {', '.join(self.artifacts)}")
        self.p(f"[merc] local copies: {out}")
        if self.tracking_uri.startswith("sqlite:"):
            self.p(f"[merc] look: mlflow ui --backend-store-uri {self.tracking_uri}   then open")
        self.p(f"[merc] runs table: {self.view_url}")
        self.p(f"[merc] pruned trials and intermediate values: optuna-dashboard "
               f"{self.optuna_url}" if not self.study else
               f"[merc] heatmap / error bars: the parent run's artifacts, plots/")
        outcome.counts, outcome.table_md = c, md
        outcome.artifacts, outcome.wall_s, outcome.trials_s = self.artifacts, wall, self.trials_s
        outcome.champion = champion
        if c and c.get("completed", 0) == 0:
            outcome.exit_code = EXIT_FAILED
        return outcome


def run_sweep(opts: SweepOptions) -> SweepOutcome:
    """Run (or resume) one sweep; raises SpecError (exit 2) / TrackingError (exit 3) early.

    The parent run never stays RUNNING after the driver returns or raises (including Ctrl-C and
    SIGTERM): it ends FAILED with ``merc.status`` interrupted | failed and ``merc.reason``;
    ``--resume`` sets it RUNNING again."""
    import signal
    import threading
    sweep = _Sweep(opts)
    prev = None
    if threading.current_thread() is threading.main_thread() and \
            signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        def _term(signum, frame):
            raise SystemExit(128 + signum)
        prev = signal.signal(signal.SIGTERM, _term)
    try:
        out = sweep.run()
    except BaseException as err:  # noqa: BLE001 - recorded, then re-raised unchanged
        kind = "interrupted" if isinstance(err, (KeyboardInterrupt, SystemExit)) else "failed"
        text = " ".join(str(err).split())[:500]
        _close_parent(sweep, kind, f"{type(err).__name__}: {text}" if text
                      else type(err).__name__)
        _release_name(sweep)
        try:   # a failure before the trials leaves no half-started Ray behind
            sweep.join_ray(shutdown=True)
        except BaseException:  # noqa: BLE001 - the original error matters
            pass
        raise
    finally:
        if prev is not None:
            signal.signal(signal.SIGTERM, prev)
    if out.exit_code == EXIT_INTERRUPTED:
        _close_parent(sweep, "interrupted", f"interrupted; resume with --resume --name "
                                            f"{out.name}")
    return out


def _release_name(sweep: "_Sweep") -> None:
    """A sweep that failed before writing anything leaves no reserved (empty) directory."""
    storage, name = getattr(sweep, "storage", None), getattr(sweep, "name", None)
    if storage and name and not is_remote(storage) and not sweep.o.resume:
        try:
            (Path(storage) / name).rmdir()   # only when empty
        except OSError:
            pass


def _close_parent(sweep: "_Sweep", status: str, reason: str) -> None:
    """Mark the sweep's parent run FAILED with the reason (best effort: never raises)."""
    rid = getattr(sweep, "parent_id", None)
    client = getattr(sweep, "client", None)
    if not rid or client is None:
        return
    try:
        if client.get_run(rid).info.status != "RUNNING":
            return
        client.set_tag(rid, "merc.status", status)
        client.set_tag(rid, "merc.reason", reason[:5000])
        client.set_terminated(rid, "FAILED")
    except Exception as err:  # noqa: BLE001 - the tracking store may be what failed
        log.warning("could not mark parent run %s FAILED: %s", rid, err)


def options_from(**kw) -> SweepOptions:
    names = {f.name for f in dataclasses.fields(SweepOptions)}
    return SweepOptions(**{k: v for k, v in kw.items() if k in names})
