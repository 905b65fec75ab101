"""Sweep benchmarks through the sweep engine's Python API (``merc.sweep.runner.run_sweep``).

* ``sweep_overhead``: an 8-trial CORECT study run one trial at a time, with the paper-default
  (IEMOCAP-sized) model on a reduced IEMOCAP-shaped dataset, so that checkpoints have their real
  size. Its wall time is set against the summed in-trial training time (fit's epoch times), and the
  difference is broken down: driver set-up (spec, data, MLflow parent run), Ray start, per trial
  (worker launch, config/data/model set-up, per-epoch checkpoint save + persist, MLflow logging on
  the driver) and the end of the sweep (tables, plots, artifacts). Timers wrap the runner's steps
  and the MLflow callback on the driver, and :mod:`benchmarks.sweep_probe` times ``torch.save`` and
  ``tune.report`` inside the trials. The measured fixed costs are then applied to a full
  IEMOCAP-sized CORECT trial (50 epochs at the epoch time of the ``train`` benchmark).
* ``sweep_efficiency``: a CORECT window study (past x future window grid, one seed) on a reduced
  synthetic dataset and a small model, run as the full grid once, then as TPE + ASHA searches over
  the same grid values (categorical) with about 25% of the grid's epochs, for several sampler
  seeds. Trials are deterministic (same training seed, one thread), so a search trial that runs the
  full budget reproduces the grid cell exactly; the gap between the search's best and the grid's
  best is then purely the search's miss.
"""
from __future__ import annotations

import contextlib
import glob
import json
import shutil
import os
import statistics
import time
from pathlib import Path
from typing import Any, Optional

import yaml

from benchmarks.common import Clock, Context, PhaseTimer, load_average, summary, target

OVERHEAD_DOC = " ".join(__doc__.split("* ``sweep_overhead``:")[1].split("* ``sweep_efficiency``:")[0].split())
EFFICIENCY_DOC = " ".join(__doc__.split("* ``sweep_efficiency``:")[1].split())
OVERHEAD_TARGET = 0.10
GAP_TARGET = 0.5
MARGIN = 0.6
BUDGET_TARGET = 0.25


# ---------------------------------------------------------------------------------------------
# shared plumbing


def _quiet_env() -> None:
    # trials import benchmarks.sweep_probe; they run with the sweep's work directory as cwd
    from benchmarks.common import REPO
    pp = os.environ.get("PYTHONPATH", "")
    if str(REPO) not in pp.split(os.pathsep):
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), pp) if p)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    # the "experiment state snapshotting ... may become a bottleneck" warning: counted, not shown
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")


def _shutdown_ray() -> None:
    try:
        import ray
        if ray.is_initialized():
            ray.shutdown()
    except Exception:
        pass


def write_spec(path: Path, fixed: dict, studies: dict, search: Optional[dict] = None) -> Path:
    doc: dict[str, Any] = {"model": "corect", "metric": "val_wf1", "mode": "max",
                           "fixed": fixed, "studies": studies}
    if search:
        doc["search"] = search
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


class DriverTimers:
    """Wraps the runner's steps and the MLflow callback hooks (driver side) with a PhaseTimer."""

    STEPS = ("prepare", "setup_tracking", "start_ray", "join_ray", "build_tuner", "run_stage",
             "finish_study", "finish_search", "confirm")
    CB = ("on_trial_start", "on_trial_result", "on_trial_complete", "on_trial_error")

    def __init__(self, callbacks: bool = True):
        self.t = PhaseTimer()
        self._saved = []
        # callbacks=False: the runner's steps only, so that entering imports nothing heavy
        # (MLflow, Ray Tune, Optuna are then imported where the sweep itself imports them)
        self.callbacks = callbacks

    def __enter__(self):
        from merc.sweep import runner
        targets = [(runner._Sweep, s, f"runner.{s}") for s in self.STEPS]
        if self.callbacks:
            from merc.sweep import tracking
            targets += [(tracking.MercMLflowCallback, c, f"mlflow.{c}") for c in self.CB]
            try:
                from merc.sweep import optuna_glue as og
                for cls in (og.OptunaSearcher, og.GridSearcher):
                    for m in ("suggest", "on_trial_complete"):
                        targets.append((cls, m, f"searcher.{m}"))
            except Exception:
                pass
        for cls, name, label in targets:
            fn = cls.__dict__.get(name)
            if fn is None:
                continue
            self._saved.append((cls, name, fn))
            setattr(cls, name, self._wrap(label, fn))
        return self.t

    def _wrap(self, label, fn):
        t = self.t

        def wrapped(*a, **kw):
            with t.phase(label):
                return fn(*a, **kw)
        return wrapped

    def __exit__(self, *exc):
        for cls, name, fn in self._saved:
            setattr(cls, name, fn)
        return False


def child_runs(outcome, history: tuple[str, ...] = ()) -> list[dict]:
    """One dict per trial of a finished sweep, from its MLflow child runs."""
    from mlflow import MlflowClient
    from merc.sweep.report import runs_frame
    from merc.sweep.tracking import find_runs
    client = MlflowClient(outcome.tracking_uri)
    exp = client.get_experiment_by_name(outcome.experiment)
    runs = find_runs(client, exp.experiment_id, f"tags.`merc.sweep_id` = '{outcome.name}' and "
                                                f"tags.`mlflow.parentRunId` = "
                                                f"'{outcome.parent_run_id}'")
    df = runs_frame(runs)
    out = []
    for _, row in df.iterrows():
        d = {k: (None if (isinstance(v, float) and v != v) else v) for k, v in row.items()}
        for h in history:
            d[f"hist.{h}"] = [m.value for m in sorted(client.get_metric_history(d["run_id"], h),
                                                      key=lambda m: m.step)]
        out.append(d)
    return out


@contextlib.contextmanager
def _in_dir(path: Path):
    """Run a sweep from its work directory: with a sqlite tracking URI MLflow puts artifacts in
    ``./mlruns`` relative to the current directory (the runner does not set an artifact root)."""
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def _du(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) if \
        Path(path).exists() else 0


def _cleanup(work: Path) -> None:
    """Drop the sweep's checkpoints and artifacts (gigabytes) unless MERC_BENCH_KEEP is set."""
    if os.environ.get("MERC_BENCH_KEEP"):
        return
    for sub in ("ray", "mlruns"):
        shutil.rmtree(work / sub, ignore_errors=True)


def _opts(**kw):
    from merc.sweep.runner import options_from
    return options_from(**kw)


# ---------------------------------------------------------------------------------------------
# sweep overhead


def run_overhead(ctx: Context) -> dict:
    from benchmarks.bench_train import dataset
    from merc.sweep.runner import run_sweep
    la0 = load_average()
    _quiet_env()
    work = ctx.tmp(f"overhead-{int(time.time())}")
    probe = work / "probe"
    probe.mkdir()
    os.environ["MERC_BENCH_PROBE"] = str(probe)
    root, desc = dataset(Context(True, ctx.out_dir, ctx.log, ctx.work_dir))  # 10/2/2 dialogues
    epochs = 1 if ctx.quick else 3
    axes = {"window_past": [1, 2, 4, 8], "window_future": [1, 9]}
    spec = write_spec(work / "overhead.yaml", {"epochs": epochs},
                      {"overhead": {"title": "overhead", "axes": axes, "seeds": [0]}})
    opts = _opts(spec=str(spec), study="overhead", data_dir=str(root), cpus_per_trial=1,
                 max_concurrent=1, num_cpus=2, mlflow_uri=f"sqlite:///{work / 'mlflow.db'}",
                 storage=str(work / "ray"), name="overhead", verbose=0, retries=0,
                 imports=["benchmarks.sweep_probe"], print_fn=lambda *a, **k: None)
    _shutdown_ray()
    ctx.log(f"[sweep_overhead] 8 trials x {epochs} epochs, one at a time ...")
    with DriverTimers() as dt, _in_dir(work):
        with Clock() as c:
            outcome = run_sweep(opts)
    _shutdown_ray()
    os.environ.pop("MERC_BENCH_PROBE", None)
    if outcome.exit_code != 0:
        raise RuntimeError(f"overhead sweep exit code {outcome.exit_code}")
    # the MLflow store again, now that its tables exist (the sweep above created and migrated it)
    from merc.sweep.tracking import MlflowClient, check_tracking, ensure_experiment
    warm_open = []
    for _ in range(3):
        with Clock() as cm:
            check_tracking(outcome.tracking_uri)
            ensure_experiment(MlflowClient(outcome.tracking_uri), outcome.experiment)
        warm_open.append(cm.wall)
    trials = child_runs(outcome, history=("epoch_time",))
    disk = {"ray_storage_mib": _du(work / "ray") / 2**20,
            "mlflow_artifacts_mib": _du(work / "mlruns") / 2**20}
    _cleanup(work)
    n = len(trials)
    train_per_trial = [sum(t["hist.epoch_time"]) for t in trials]
    trial_total = [t.get("trial_time_s") or 0.0 for t in trials]
    train_sum = sum(train_per_trial)
    wall = c.wall
    w = dt.wall
    # probe records
    recs = []
    for f in glob.glob(str(probe / "*.jsonl")):
        recs += [json.loads(ln) for ln in open(f) if ln.strip()]
    saves = [r for r in recs if r["event"] == "save"]
    reports = [r for r in recs if r["event"] == "report" and r.get("checkpoint")]
    starts = [r for r in recs if r["event"] == "trial_start"]
    ckpt_bytes = statistics.median([r["bytes"] for r in saves]) if saves else 0
    # the state save happens every epoch; the model file on the last epoch only
    per_epoch_save = statistics.median([r["s"] for r in saves]) if saves else 0.0
    per_epoch_report = statistics.median([r["s"] for r in reports]) if reports else 0.0
    n_epochs = sum(len(t["hist.epoch_time"]) for t in trials)
    in_trial_overhead = sum(trial_total) - train_sum
    fit_s = w.get("runner.run_stage", 0.0) - w.get("runner.build_tuner", 0.0)
    mlflow_s = sum(v for k, v in w.items() if k.startswith("mlflow."))
    searcher_s = sum(v for k, v in w.items() if k.startswith("searcher."))
    setup_s = w.get("runner.prepare", 0.0) + w.get("runner.setup_tracking", 0.0)
    finish_s = w.get("runner.finish_study", 0.0)
    breakdown = {
        "driver: spec, config and data (prepare)": w.get("runner.prepare", 0.0),
        "driver: MLflow store, experiment, parent run (setup_tracking)":
            w.get("runner.setup_tracking", 0.0),
        "Ray start": w.get("runner.start_ray", 0.0),
        "Tuner build": w.get("runner.build_tuner", 0.0),
        "in-trial: rest (config, data, model build, final model file)": in_trial_overhead - n_epochs * (
            per_epoch_save + per_epoch_report),
        "in-trial: checkpoint torch.save (every epoch)": n_epochs * per_epoch_save,
        "in-trial: tune.report + checkpoint persist (every epoch)": n_epochs * per_epoch_report,
        "driver MLflow logging (callback)": mlflow_s,
        "driver searcher": searcher_s,
        "trial launch + Tune loop (rest of fit)": fit_s - sum(trial_total) - mlflow_s - searcher_s,
        "sweep end (tables, plots, artifacts)": finish_s,
        "unaccounted": wall - setup_s - w.get("runner.start_ray", 0.0) - w.get(
            "runner.run_stage", 0.0) - finish_s,
    }
    overhead = wall - train_sum
    share = overhead / wall
    sweep_fixed = setup_s + w.get("runner.start_ray", 0.0) + finish_s + w.get(
        "runner.build_tuner", 0.0)
    per_epoch = per_epoch_save + per_epoch_report
    per_trial = (overhead - sweep_fixed - n_epochs * per_epoch) / max(n, 1)
    # projection to an IEMOCAP-sized trial: 50 epochs of the full data at the train benchmark's
    # CORECT epoch time (same process, threads=1) - or scaled from this sweep's epochs by the
    # utterance count when the train benchmark did not run
    full_epoch = None
    src = ""
    tr = ctx_shared(ctx).get("train")
    if tr:
        cor = next((m for m in tr.get("models", []) if m["model"] == "corect"), None)
        if cor and not ctx.quick:
            full_epoch, src = cor["epoch_time"]["median"], "train benchmark (full data, same run)"
    if full_epoch is None:
        from merc.data.dataset import MercData
        d = MercData(root)
        small_utt = sum(int(d[s].lengths.sum()) for s in ("train", "valid", "test"))
        ep = statistics.median([e for t in trials for e in t["hist.epoch_time"]])
        full_epoch = ep * (5146 + 664 + 1623) / small_utt
        src = f"scaled from this sweep's epochs by utterances ({small_utt} -> 7433)"
    E = 50
    trials_full = 8
    proj_over = sweep_fixed + trials_full * (per_trial + E * per_epoch)
    proj_train = trials_full * E * full_epoch
    proj_share = proj_over / (proj_over + proj_train)
    rows = [[k, f"{v:.2f}", f"{100 * v / wall:.1f}%"] for k, v in breakdown.items()]
    ms = {"sweep wall": summary([wall]), "summed in-trial training (fit epochs)":
          summary([train_sum]), "trial time (Ray time_total_s)": summary(trial_total),
          "training per trial": summary(train_per_trial),
          "per-trial fixed cost": summary([per_trial]),
          "checkpoint torch.save per epoch": summary([r["s"] for r in saves]),
          "tune.report with checkpoint per epoch": summary([r["s"] for r in reports]),
          "checkpoint size": summary([r["bytes"] / 2**20 for r in saves], unit="MiB"),
          "MLflow logging per trial (driver)": summary([mlflow_s / max(n, 1)]),
          "trial set-up (open_data) per trial": summary([r["open_data_s"] for r in starts]),
          "MLflow store open + experiment, existing sqlite db": summary(warm_open),
          "disk left: Ray storage (checkpoints)": summary([disk["ray_storage_mib"]], unit="MiB"),
          "disk left: MLflow artifacts": summary([disk["mlflow_artifacts_mib"]], unit="MiB")}
    return {
        "description": OVERHEAD_DOC,
        "setup": {"trials": n, "epochs_per_trial": epochs, "model": "corect, paper defaults "
                  "(IEMOCAP-6)", "data": desc, "concurrency": "1 trial at a time, 1 CPU each "
                  "(threads=1), local Ray with 2 CPUs",
                  "tracking": "MLflow sqlite (local file)", "storage": "local directory",
                  "checkpoint": f"{ckpt_bytes / 2**20:.0f} MiB per epoch (model + Adam state + "
                                f"best-epoch copy)"},
        "measurements": ms,
        "tables": [{"title": f"Where the sweep's {wall:.0f} s went (training "
                             f"{train_sum:.0f} s = {100 * train_sum / wall:.0f}%)",
                    "columns": ["part", "seconds", "share of wall"], "rows": rows}],
        "targets": [
            target("overhead share, this sweep (small trials)", f"<= {OVERHEAD_TARGET:.0%} "
                   "for IEMOCAP-sized trials (informative here)", round(share * 100, 2), None,
                   f"{overhead:.0f} s of {wall:.0f} s; trials of {statistics.median(train_per_trial):.0f} s"),
            target("overhead share, projected IEMOCAP-sized sweep", f"<= {OVERHEAD_TARGET:.0%}",
                   round(proj_share * 100, 2), proj_share <= OVERHEAD_TARGET,
                   f"8 trials x {E} epochs x {full_epoch:.0f} s/epoch ({src}); per trial "
                   f"{per_trial:.1f} s fixed + {per_epoch:.2f} s/epoch checkpointing; sweep "
                   f"{sweep_fixed:.1f} s fixed")],
        "summary": {"overhead_share": share, "per_trial_fixed_s": per_trial,
                    "per_epoch_checkpoint_s": per_epoch, "sweep_fixed_s": sweep_fixed,
                    "projected_share_iemocap": proj_share, "full_epoch_s": full_epoch,
                    "checkpoint_mib": ckpt_bytes / 2**20, "breakdown_s": breakdown,
                    "driver_phases_s": dict(w), "driver_phase_calls": dict(dt.calls)},
        "load_average": {"start": la0, "end": load_average()},
    }


# ---------------------------------------------------------------------------------------------
# sweep efficiency


def _eff_data(ctx: Context) -> tuple[Path, str]:
    from merc.data.synthetic import PRESETS, synth
    cfg = PRESETS["iemocap6"].model_copy(update={
        "name": "synthetic-iemocap6-bench-eff", "utterances": None,
        "dialogues": {"train": 60, "valid": 20, "test": 20}, "length_mean": 20.0,
        "length_min": 6, "length_max": 40, "dims": {"audio": 16, "text": 32, "visual": 24},
        "latent_dim": 12})
    path = ctx.tmp("data") / "iemocap6-eff"
    if not (path / "manifest.json").is_file():
        synth(path, cfg, seed=0)
    return path, "synthetic IEMOCAP-6 generator, 60/20/20 dialogues of mean length 20, dims " \
                 "a16/t32/v24"


EFF_MODEL = {"hidden_size": 32, "text_encoder_ff": 64, "text_encoder_layers": 1,
             "self_att_layers": 1, "pcm_layers": 1, "gt_heads": 2, "lr": 1.0e-3,
             "batch_size": 10, "dropout": 0.3}


def _hit_probability(n: int, good: int, k: int) -> float:
    """P(at least one of k distinct cells drawn uniformly from n is among the ``good`` ones)."""
    from math import comb
    if k <= 0:
        return 0.0
    return 1.0 - comb(n - good, k) / comb(n, k) if n - good >= k else 1.0


def run_efficiency(ctx: Context) -> dict:
    from merc.sweep.runner import run_sweep
    la0 = load_average()
    _quiet_env()
    work = ctx.tmp(f"efficiency-{int(time.time())}")
    root, desc = _eff_data(ctx)
    if ctx.quick:
        values, epochs, grace, rf, seeds, startup = [1, 4, 11, 15], 4, 1, 3, [0], 2
    else:
        values, epochs, grace, rf, seeds, startup = [1, 2, 3, 5, 8, 11, 15], 10, 2, 3, [0, 1, 2], 8
    n_grid = len(values) ** 2
    grid_epochs = n_grid * epochs
    # ASHA's expected epochs per trial (synchronous approximation): every trial runs to the
    # first rung, 1/rf of them to the next, ...; asynchronous promotion lets more trials through
    # early on (the first trial to reach a rung is always promoted), hence the margin
    rungs = []
    r = grace
    while r < epochs:
        rungs.append(r)
        r *= rf
    exp_epochs, frac, prev = 0.0, 1.0, 0
    for r in rungs + [epochs]:
        exp_epochs += frac * (r - prev)
        prev, frac = r, frac / rf
    num_samples = max(2, int(MARGIN * BUDGET_TARGET * grid_epochs / exp_epochs))
    fixed = {"epochs": epochs, **EFF_MODEL}
    space = {"window_past": {"type": "categorical", "values": values},
             "window_future": {"type": "categorical", "values": values}}
    mlflow_uri = f"sqlite:///{work / 'mlflow.db'}"
    common = dict(data_dir=str(root), cpus_per_trial=1, num_cpus=2, max_concurrent=2,
                  mlflow_uri=mlflow_uri, storage=str(work / "ray"), verbose=0, retries=0,
                  print_fn=lambda *a, **k: None)
    # the grid
    spec = write_spec(work / "grid.yaml", fixed, {"window": {
        "title": "window grid", "axes": {"window_past": values, "window_future": values},
        "seeds": [0]}})
    _shutdown_ray()
    ctx.log(f"[sweep_efficiency] grid: {n_grid} points x {epochs} epochs ...")
    with Clock() as cg, _in_dir(work):
        og = run_sweep(_opts(spec=str(spec), study="window", name="grid", **common))
    if og.exit_code != 0:
        raise RuntimeError(f"grid sweep exit code {og.exit_code}")
    grid = [t for t in child_runs(og) if t["status"] == "completed"]
    key = lambda t: (int(float(t["p.window_past"])), int(float(t["p.window_future"])))  # noqa
    gmap = {key(t): t for t in grid}
    gbest = max(grid, key=lambda t: t["sel_val_wf1"])
    g_epochs = sum(int(t.get("epochs_run") or 0) for t in child_runs(og))
    vals_sorted = sorted((t["sel_val_wf1"] for t in grid), reverse=True)
    searches = []
    for s in seeds:
        search = {"num_samples": num_samples, "seed": 0,
                  "sampler": {"type": "tpe", "seed": s, "n_startup_trials": startup},
                  "pruner": {"type": "asha", "grace_period": grace, "reduction_factor": rf},
                  "start_from_defaults": False, "space": space}
        spec_s = write_spec(work / f"search{s}.yaml", fixed, {}, search)
        _shutdown_ray()
        ctx.log(f"[sweep_efficiency] TPE+ASHA search, sampler seed {s}: {num_samples} trials ...")
        with DriverTimers() as dts, Clock() as cs, _in_dir(work):
            os_ = run_sweep(_opts(spec=str(spec_s), search=True, name=f"search-seed{s}", **common))
        if os_.exit_code != 0:
            raise RuntimeError(f"search sweep (seed {s}) exit code {os_.exit_code}")
        runs = child_runs(os_)
        full = [t for t in runs if t["status"] == "completed"]
        ep = sum(int(t.get("epochs_run") or 0) for t in runs)
        best = max(full, key=lambda t: t["sel_val_wf1"]) if full else None
        mism = [abs(t["sel_val_wf1"] - gmap[key(t)]["sel_val_wf1"]) for t in full
                if key(t) in gmap]
        searches.append({
            "sampler_seed": s, "trials": len(runs), "full_budget_trials": len(full),
            "distinct_configs": len({key(t) for t in runs}), "epochs": ep,
            "epochs_share": ep / g_epochs, "wall_s": cs.wall,
            "best_config": list(key(best)) if best else None,
            "best_val_wf1": best["sel_val_wf1"] if best else None,
            "best_test_wf1": best["sel_test_wf1"] if best else None,
            "gap_val": gbest["sel_val_wf1"] - best["sel_val_wf1"] if best else None,
            "gap_test": gbest["sel_test_wf1"] - best["sel_test_wf1"] if best else None,
            "rank_in_grid": (1 + sum(v > best["sel_val_wf1"] + 1e-9 for v in vals_sorted))
            if best else None,
            "max_abs_diff_vs_grid_cell": max(mism) if mism else None,
            "repeated_full_budget_configs": len(full) - len({key(t) for t in full}),
            "random_search_hit_probability": _hit_probability(
                n_grid, sum(v >= vals_sorted[0] - GAP_TARGET for v in vals_sorted),
                len({key(t) for t in full})),
            "driver_s": {k: round(v, 3) for k, v in dts.wall.items()},
            "driver_calls": dict(dts.calls)})
    _shutdown_ray()
    _cleanup(work)
    gaps = [s["gap_val"] for s in searches if s["gap_val"] is not None]
    shares = [s["epochs_share"] for s in searches]
    rows = [["grid", n_grid, n_grid, g_epochs, "100%", f"{gbest['sel_val_wf1']:.2f}",
             f"{gbest['sel_test_wf1']:.2f}", str(list(key(gbest))), "-", "-", "1", f"{cg.wall:.0f}"]]
    for s in searches:
        rows.append([f"TPE+ASHA seed {s['sampler_seed']}", s["trials"], s["full_budget_trials"],
                     s["epochs"], f"{s['epochs_share'] * 100:.0f}%",
                     f"{s['best_val_wf1']:.2f}" if s["best_val_wf1"] is not None else "-",
                     f"{s['best_test_wf1']:.2f}" if s["best_test_wf1"] is not None else "-",
                     str(s["best_config"]),
                     f"{s['gap_val']:.2f}" if s["gap_val"] is not None else "-",
                     f"{s['gap_test']:.2f}" if s["gap_test"] is not None else "-",
                     s["rank_in_grid"], f"{s['wall_s']:.0f}"])
    met_gap = bool(gaps) and len(gaps) == len(searches) and max(gaps) <= GAP_TARGET
    met_budget = bool(shares) and max(shares) <= BUDGET_TARGET
    spread = vals_sorted[0] - vals_sorted[-1] if vals_sorted else None
    near = sum(v >= vals_sorted[0] - GAP_TARGET for v in vals_sorted)
    notes = [f"{near} of the {n_grid} grid cells lie within {GAP_TARGET} val w-F1 of the best; "
             f"'random_search_hit_probability' per search is the chance that the same number of "
             f"distinct full-budget configurations drawn uniformly at random would include one of "
             f"them (the baseline the search has to beat)",
             "a search trial that ran the full budget reproduced its grid cell exactly (max abs "
             f"difference {max((s['max_abs_diff_vs_grid_cell'] or 0) for s in searches):.2g})",
             "repeated configurations: TPE proposed configurations that had already run to the full "
             f"budget {[s['repeated_full_budget_configs'] for s in searches]} times (deterministic "
             "trials: pure waste)"]
    return {
        "description": EFFICIENCY_DOC,
        "setup": {"data": desc, "model": "corect " + ", ".join(f"{k}={v}" for k, v in
                                                               EFF_MODEL.items()),
                  "grid": f"window_past x window_future in {values} ({n_grid} points), seed 0, "
                          f"{epochs} epochs each",
                  "search": f"TPE (n_startup_trials={startup}) + ASHA (grace {grace}, reduction "
                            f"{rf}, max_t {epochs}) over the same values (categorical), "
                            f"{num_samples} trials per sampler seed, training seed 0",
                  "sampler_seeds": seeds, "concurrency": "2 trials at a time, 1 CPU each",
                  "selection": "best = highest selected val w-F1 among full-budget trials; test "
                               "w-F1 at that trial's selected epoch"},
        "measurements": {"search gap val w-F1 (grid best - search best)": summary(gaps, "pts"),
                         "search gap test w-F1": summary([s["gap_test"] for s in searches
                                                          if s["gap_test"] is not None], "pts"),
                         "search epochs share of grid": summary(shares, "x"),
                         "grid wall": summary([cg.wall]),
                         "search wall": summary([s["wall_s"] for s in searches])},
        "tables": [{"title": "Grid vs TPE + ASHA (w-F1 in %, gap = grid best - search best)",
                    "columns": ["run", "trials", "full-budget", "epochs", "of grid", "best val",
                                "its test", "best [P,F]", "gap val", "gap test",
                                "rank in grid", "wall s"], "rows": rows}],
        "targets": [target("search within 0.5 val w-F1 of the grid's best",
                           f"gap <= {GAP_TARGET} for every sampler seed",
                           round(max(gaps), 3) if gaps else None, met_gap,
                           f"gaps {[round(g, 2) for g in gaps]}; the grid's val w-F1 spans "
                           f"{spread:.2f} points over {n_grid} cells" if spread is not None else ""),
                    target("search budget", f"<= {BUDGET_TARGET:.0%} of the grid's epochs",
                           round(max(shares) * 100, 1) if shares else None, met_budget,
                           f"epochs {[s['epochs'] for s in searches]} vs grid {g_epochs}")],
        "notes": notes,
        "summary": {"grid_cells_within_gap": near, "grid_best": {"config": list(key(gbest)), "val_wf1": gbest["sel_val_wf1"],
                                  "test_wf1": gbest["sel_test_wf1"]}, "grid_epochs": g_epochs,
                    "grid_val_wf1_sorted": vals_sorted, "searches": searches,
                    "num_samples": num_samples, "expected_epochs_per_trial": exp_epochs},
        "load_average": {"start": la0, "end": load_average()},
    }


def ctx_shared(ctx: Context) -> dict:
    return getattr(ctx, "shared", {}) or {}


# ---------------------------------------------------------------------------------------------
# sweep throughput: the user's commands, this tree against an earlier commit, side by side
#
#   python -m benchmarks.bench_sweep throughput [--before REV] [--reps N] [--samples 32]
#
# Both sides run the spec of REV (search_spaces/corect.yaml there), so that they run the same
# trials; without --before, this tree's spec.
# Each run is `sweeps/corect.py` in a subprocess (a fresh local Ray with 2 CPUs = 2 slots), once
# for the quick window study and once for a --quick search of `--samples` trials; "before" runs
# the same command on the sources of REV (git archive: merc/, sweeps/, search_spaces/ first on
# PYTHONPATH), interleaved with "after" so that both see the same machine load. Per run: the wall
# time of the whole command, the driver's phases (DriverTimers), each trial's start and end (Ray's
# result.json), the CPU-seconds of the command's process tree (driver, Ray, trial workers; sampled
# every 0.5 s), and the load average. Target (issue 13): wall <= 1.15 x (sum of trial times /
# slots) + Ray start.

THROUGHPUT_TARGET = 1.15


def _code_dir(rev: Optional[str], work: Path) -> Path:
    """The sources of ``rev`` (None: this working tree) as a PYTHONPATH entry."""
    from benchmarks.common import REPO
    if rev is None:
        return REPO
    import subprocess
    out = work / f"src-{rev}"
    if not (out / "merc").is_dir():
        out.mkdir(parents=True, exist_ok=True)
        arch = subprocess.run(["git", "archive", rev, "merc", "sweeps", "search_spaces"],
                              cwd=REPO, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(out)], input=arch, check=True)
    return out


def _trial_spans(sweep_dir: Path) -> list[dict]:
    spans = []
    for f in sweep_dir.glob("*/result.json"):
        rs = [json.loads(ln) for ln in open(f) if ln.strip()]
        rs = [r for r in rs if "time_total_s" in r]
        if not rs:
            continue
        end = rs[-1]["timestamp"]
        spans.append({"trial": f.parent.name, "pid": rs[-1].get("pid"),
                      "start": end - rs[-1]["time_total_s"], "end": end,
                      "time_s": rs[-1]["time_total_s"]})
    return sorted(spans, key=lambda s: s["start"])


def _slot_starts(sweep_dir: Path, mlflow_db: Path) -> list[float]:
    """Each trial process's first trial start (epoch seconds, sorted): the MLflow child run's
    start time (ms, set when Tune starts the trial) of the earliest trial per Ray worker pid
    (result.json; the trial directory is named by the trial id). Empty when unreadable."""
    import sqlite3
    pid_of = {}
    for f in sweep_dir.glob("*/result.json"):
        for ln in open(f):
            if ln.strip():
                pid_of[f.parent.name] = json.loads(ln).get("pid")
                break
    try:
        with sqlite3.connect(str(mlflow_db)) as db:
            rows = db.execute("SELECT t.value, r.start_time FROM runs r JOIN tags t ON "
                              "t.run_uuid = r.run_uuid AND t.key = 'ray.trial_id'").fetchall()
    except sqlite3.Error:
        return []
    first: dict = {}
    for tid, ms in rows:
        pid = pid_of.get(tid)
        if pid is not None and ms:
            first[pid] = min(first.get(pid, ms / 1000), ms / 1000)
    return sorted(first.values())


def _workers_started() -> Optional[int]:
    """Worker processes the last local Ray started (its raylet log; this benchmark's runs are
    the only Ray sessions while it runs)."""
    log = Path("/tmp/ray/session_latest/logs/raylet.out")
    try:
        return log.read_text(errors="replace").count("Started worker process")
    except OSError:
        return None


def _proc_kind(q, root_pid: int) -> str:
    """driver / worker (Ray's Python workers: the trials) / ray (GCS, raylet, dashboard, agents,
    monitors) / other, for the CPU split."""
    if q.pid == root_pid:
        return "driver"
    cmd = " ".join(q.cmdline())
    if "default_worker.py" in cmd or q.name().startswith("ray::"):
        return "worker"
    return "ray" if "ray" in cmd else "other"


def _cpu_by_kind(cpu: dict, kind: dict) -> dict:
    out: dict = {}
    for pid, s in cpu.items():
        k = kind.get(pid, "other")
        out[k] = round(out.get(k, 0.0) + s, 1)
    return out


def _timed_cli(out_json: str, script: str, argv: list[str]) -> None:
    """Subprocess side: run a sweep script's main under DriverTimers (runner steps only), write
    phases to JSON, and leave the process the way that code's ``sweeps/<model>.py`` does
    (``exit_process`` where it exists, else ``sys.exit``)."""
    import sys
    t0 = time.time()
    from merc.sweep import cli
    import merc
    t_imp = time.time() - t0
    with DriverTimers(callbacks=False) as t:
        rc = cli.model_script_main(Path(script).stem, argv)
    Path(out_json).write_text(json.dumps({"rc": rc, "import_s": t_imp, "phases": dict(t.wall),
                                          "merc": merc.__file__, "t_return": time.time()}))
    getattr(cli, "exit_process", sys.exit)(rc)


def _one_run(label: str, code: Path, argv: list[str], work: Path, spec: Path) -> dict:
    import subprocess
    import sys
    import psutil
    from benchmarks.common import REPO
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(code), str(REPO)]),
               RAY_AUTH_MODE="disabled", TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S="0")
    env.pop("RAY_ADDRESS", None)
    out_json = work / "phases.json"
    cmd = [sys.executable, "-m", "benchmarks.bench_sweep", "_timed", str(out_json),
           str(code / "sweeps" / "corect.py"), "--spec", str(spec),
           *argv, "--num-cpus", "2", "--storage", str(work / "ray_results"), "--name", "bench",
           "--mlflow-uri", f"sqlite:///{work / 'mlflow.db'}", "--verbose", "0"]
    la0 = load_average()
    t0 = time.time()
    p = subprocess.Popen(cmd, cwd=work, env=env, stdout=open(work / "out.txt", "w"),
                         stderr=subprocess.STDOUT)
    root, cpu, kind = psutil.Process(p.pid), {}, {}
    while p.poll() is None:
        try:
            procs = [root] + root.children(recursive=True)
        except psutil.NoSuchProcess:
            procs = []
        for q in procs:
            try:
                ct = q.cpu_times()
                cpu[q.pid] = max(cpu.get(q.pid, 0.0), ct.user + ct.system)
                if q.pid not in kind:
                    kind[q.pid] = _proc_kind(q, root.pid)
            except psutil.Error:
                pass
        time.sleep(0.5)
    t_end = time.time()
    wall = t_end - t0
    if p.returncode != 0:
        raise RuntimeError(f"{label}: exit {p.returncode}; see {work / 'out.txt'}")
    ph = json.loads(out_json.read_text())
    spans = _trial_spans(work / "ray_results" / "bench")
    tsum = sum(s["time_s"] for s in spans)
    slots = 2
    ray_start = ph["phases"].get("runner.start_ray", 0.0)
    fit = ph["phases"].get("runner.run_stage", 0.0)
    first, last = min(s["start"] for s in spans), max(s["end"] for s in spans)
    slot0 = _slot_starts(work / "ray_results" / "bench", work / "mlflow.db")
    started = _workers_started()
    _cleanup(work)
    shutil.rmtree(work / "ray_results", ignore_errors=True)
    return {"label": label, "merc": ph["merc"], "trials": len(spans), "wall_s": wall,
            "sum_trial_s": tsum, "slots": slots, "ideal_s": tsum / slots,
            "target_s": THROUGHPUT_TARGET * tsum / slots + ray_start,
            "ratio_wall_minus_ray_start": (wall - ray_start) / (tsum / slots),
            "fit_s": fit, "ratio_fit": fit / (tsum / slots),
            "trials_span_s": last - first, "ratio_trials_span": (last - first) / (tsum / slots),
            "ray_start_s": ray_start, "import_s": ph["import_s"],
            "met": wall <= THROUGHPUT_TARGET * tsum / slots + ray_start,
            "before_fit_s": first - t0, "after_last_trial_s": t_end - last,
            "exit_s": t_end - ph["t_return"] if "t_return" in ph else None,
            "phases_s": {k: round(v, 2) for k, v in ph["phases"].items()
                         if k.startswith("runner.")},
            "workers": len({s["pid"] for s in spans}),
            # every Python worker the run's Ray started (prestarted and replacements included)
            "workers_started": started,
            # how long after the first slot the last slot's first trial started (Tune staged one
            # trial at a time before session 4: an actor start-up)
            "slot_stagger_s": slot0[-1] - slot0[0] if len(slot0) > 1 else None,
            "cpu_s_by_process": _cpu_by_kind(cpu, kind),
            "cpu_s": sum(cpu.values()), "cpu_s_per_trial": sum(cpu.values()) / len(spans),
            "trials_per_hour": 3600 * len(spans) / wall,
            "trials_per_cpu_hour": 3600 * len(spans) / max(sum(cpu.values()), 1e-9),
            "load_average": {"start": la0, "end": load_average()}}


def run_throughput(ctx: Context, before: Optional[str] = None, reps: int = 1,
                   samples: int = 32, workloads: tuple[str, ...] = ("study", "search"),
                   after: Optional[str] = None) -> dict:
    """Quick study + a ``samples``-trial quick search, ``after`` (default: this tree) vs
    ``before`` (interleaved)."""
    la0 = load_average()
    work = ctx.tmp(f"throughput-{int(time.time())}")
    sides = [("after", _code_dir(after, work))]
    if before:
        sides.insert(0, ("before", _code_dir(before, work)))
    # one workload for both sides: the spec of the earlier revision (the quick budgets change)
    spec = sides[0][1] / "search_spaces" / "corect.yaml"
    loads = {"study": ["--study", "window", "--quick"],
             "search": ["--search", "--quick", "--num-samples", str(samples)],
             # the quick study with trials of the size issue 13 measured (8 trials, 144 s of trial
             # time: ~18 s each; quick-study trials are now ~3x shorter, so the sweep's fixed
             # start weighs 3x more against the 15% allowance)
             "study-long": ["--study", "window", "--quick", "--epochs", "30"],
             # the 32-trial quick search with trials of that size (the median pruner stops many)
             "search-long": ["--search", "--quick", "--num-samples", str(samples),
                             "--epochs", "30"]}
    loads = {k: v for k, v in loads.items() if k in workloads}
    runs = []
    for rep in range(reps):
        for wl, argv in loads.items():
            for side, code in sides:
                ctx.log(f"[sweep_throughput] {wl} {side} (rep {rep + 1}/{reps}) ...")
                r = _one_run(side, code, argv, work / f"{wl}-{side}-{rep}", spec)
                r["workload"] = wl
                ctx.log(f"  wall {r['wall_s']:.1f}s, trials {r['trials']} sum {r['sum_trial_s']:.1f}s"
                        f" -> target {r['target_s']:.1f}s; fit {r['fit_s']:.1f}s "
                        f"(x{r['ratio_fit']:.2f}); {r['trials_per_hour']:.0f} trials/h; "
                        f"CPU {r['cpu_s']:.0f}s; load {r['load_average']}")
                runs.append(r)
    rows = [[r["workload"], r["label"], r["trials"], f"{r['wall_s']:.1f}", f"{r['sum_trial_s']:.1f}",
             f"{r['target_s']:.1f}" + (" met" if r["met"] else ""),
             f"{r['before_fit_s']:.1f} / {r['after_last_trial_s']:.1f}",
             f"{r['fit_s']:.1f} (x{r['ratio_fit']:.2f})",
             f"{r['trials_span_s']:.1f} (x{r['ratio_trials_span']:.2f})",
             "-" if r.get("slot_stagger_s") is None else f"{r['slot_stagger_s']:.1f}",
             f"{r['ray_start_s']:.1f}",
             f"{r['workers']} ({r.get('workers_started', '?')})",
             f"{r['trials_per_hour']:.0f}", f"{r['cpu_s']:.0f}",
             f"{r['trials_per_cpu_hour']:.0f}", str(r["load_average"]["start"])] for r in runs]
    return {"description": "quick study + quick search on a local 2-CPU Ray, before/after",
            "setup": {"before": before, "reps": reps, "search_samples": samples, "slots": 2,
                      "spec": str(spec)},
            "runs": runs,
            "tables": [{"title": "Sweep throughput (2 slots)",
                        "columns": ["workload", "code", "trials", "wall s", "sum trial s",
                                    "target s", "start..first trial / last trial..exit s",
                                    "Tune fit s (x ideal)", "first start..last end "
                                    "(x ideal)", "2nd slot's first trial after the 1st s",
                                    "Ray start s", "worker procs (started)", "trials/h",
                                    "CPU s", "trials/CPU-h", "load"], "rows": rows}],
            "load_average": {"start": la0, "end": load_average()}}


def run_throughput_bench(ctx: Context) -> dict:
    """``python -m benchmarks run --only sweep_throughput``: this tree's quick study (as run.sh
    runs it) and a 32-trial quick search (8 with --quick), one run each, with the issue-13 target
    per workload: wall <= 1.15 x (sum of trial times / 2 slots) + Ray start."""
    res = run_throughput(ctx, samples=8 if ctx.quick else 32,
                         workloads=("search",) if ctx.quick else ("study", "search"))
    res["targets"] = [target(
        f"sweep wall, {r['workload']} ({r['trials']} trials)",
        f"<= {THROUGHPUT_TARGET} x sum of trial times / {r['slots']} + Ray start",
        round(r["wall_s"], 1), r["met"],
        f"target {r['target_s']:.1f} s (trials {r['sum_trial_s']:.1f} s, Ray start "
        f"{r['ray_start_s']:.1f} s); {r['trials_per_hour']:.0f} trials/h; CPU {r['cpu_s']:.0f} s")
        for r in res["runs"]]
    res["measurements"] = {f"{r['workload']} trials per hour": summary([r["trials_per_hour"]],
                                                                       unit="trials/h")
                           for r in res["runs"]}
    return res


if __name__ == "__main__":
    import sys
    if len(sys.argv) > 1 and sys.argv[1] == "_timed":
        _timed_cli(sys.argv[2], sys.argv[3], sys.argv[4:])
    import argparse
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_sweep")
    ap.add_argument("what", choices=["throughput"])
    ap.add_argument("--before", help="git revision to compare against (e.g. 0b17c75)")
    ap.add_argument("--after", help="git revision of the 'after' side (default: this tree)")
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--out", help="write the section as JSON here")
    ap.add_argument("--workloads", default="study,search",
                    help="comma-separated: study, search, study-long, search-long (the quick "
                         "study / search at 30 epochs: trials of the size issue 13 measured)")
    a = ap.parse_args()
    from benchmarks.common import Context as _C
    res = run_throughput(_C(quick=True, out_dir=Path(".")), a.before, a.reps, a.samples,
                         tuple(a.workloads.split(",")), a.after)
    for t in res["tables"]:
        print("| " + " | ".join(t["columns"]) + " |")
        for row in t["rows"]:
            print("| " + " | ".join(str(x) for x in row) + " |")
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=1, default=str))
