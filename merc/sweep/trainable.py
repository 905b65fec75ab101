"""The function every Ray trial runs: resolve the flat config, train with :func:`merc.train.fit`,
report each epoch to Tune with a resumable checkpoint.

The trial's config is the *full* flat config (every TrainConfig, model and strategy key) plus
``_merc``, a small dict of sweep context (model, dataset root, family, modules to import) and, for
searches, ``_optuna`` (study and trial number). Keys starting with ``_`` are bookkeeping, never
model keys. A study whose points select the model carries the key ``model`` too (it overrides
``_merc``'s model and is not passed to resolve_config).

Per epoch the trial reports fit's metrics plus ``epoch`` (1-based, the step MLflow and Optuna
use) and ``merc_last`` (1.0 on the epoch after which fit stops by itself), with a checkpoint
holding fit's resume state every ``checkpoint_interval`` seconds (``--checkpoint-interval``); the last epoch's checkpoint also holds ``model.pt``
(:func:`merc.train.save_model`: state dict + JSON config of the selected epoch). A diverged fit
(non-finite loss) ends with one extra result carrying ``merc_status='diverged'`` and the reason;
the driver tags the trial errored and tells Optuna FAIL. Exceptions propagate: Ray retries the
trial from its last checkpoint (``--retries``), then marks it ERROR.

Data: the driver ships the dataset through Ray's object store (:mod:`merc.sweep.datashipping`);
the first trial on a node materialises it in the node's cache, keyed by the fingerprint. Arrays
are memory-mapped (``MercData`` opens ``.npy`` with ``mmap_mode='r'``) so every trial on a node
shares the page cache; the opened dataset is also cached per worker process.
"""
from __future__ import annotations

import importlib
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from ray import tune

from merc.sweep.entry import MODEL_FILE, STATE_FILE, flat_of

_DATA_CACHE: dict[tuple, Any] = {}


def open_data(root: str, train) -> Any:
    """``MercData`` for a train config; the same call ``merc train`` must make to reproduce a trial:
    ``MercData(root, train.modalities, train.missing_rate, train.seed, train.missing_redraw)``."""
    from merc.data.dataset import MercData
    key = (str(root), train.modalities, float(train.missing_rate), int(train.seed),
           bool(train.missing_redraw))
    if key not in _DATA_CACHE:
        if len(_DATA_CACHE) > 8:
            _DATA_CACHE.clear()
        _DATA_CACHE[key] = MercData(root, train.modalities, train.missing_rate, train.seed,
                                    train.missing_redraw)
    return _DATA_CACHE[key]


def _trial_cpus_gpus() -> tuple[float, float]:
    try:
        res = tune.get_context().get_trial_resources()
        req = res.required_resources
        return float(req.get("CPU", 1)), float(req.get("GPU", 0))
    except Exception:  # outside Tune (unit tests)
        return 1.0, 0.0


def _clean(metrics: dict) -> dict[str, float]:
    out = {}
    for k, v in metrics.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out[k] = float(v)
    return out


def data_root(ctx: dict, data: Any = None) -> str:
    """This node's directory of the sweep's dataset: the shipped copy of a
    :class:`~merc.sweep.datashipping.DataHandle` (materialised once per node), else the driver's
    ``data_root`` (the trainable called outside a sweep, e.g. in unit tests)."""
    if data is None:
        return ctx["data_root"]
    from merc.sweep.datashipping import node_root
    return str(node_root(data))


def run_trial(config: dict, data: Any = None) -> None:
    """The Ray Tune function trainable (``data``: the sweep's DataHandle, through
    ``tune.with_parameters``)."""
    from merc.train import fit, resolve_config, save_model
    ctx = config["_merc"]
    for mod in ctx.get("imports", []):
        importlib.import_module(mod)
    flat = flat_of(config)
    model_name = str(flat.pop("model", ctx["model"]))   # a study may select the model per point
    cpus, gpus = _trial_cpus_gpus()
    if not flat.get("threads"):
        flat["threads"] = max(1, int(cpus))
    if gpus > 0 and flat.get("device", "cpu") == "cpu":
        flat["device"] = "cuda"
        if gpus < 1:  # fractional GPU: a scheduling share only; cap this process's memory
            try:
                torch.cuda.set_per_process_memory_fraction(gpus)
            except Exception:
                pass
    train, model_cfg = resolve_config(model_name, flat, ctx["family"], source="trial config")
    data = open_data(data_root(ctx, data), train)

    resume = None
    ck = tune.get_checkpoint()
    if ck is not None:
        with ck.as_directory() as d:
            p = Path(d) / STATE_FILE
            if p.is_file():
                resume = torch.load(p, map_location="cpu", weights_only=True)

    pending: dict[str, Any] = {}
    try:
        import ray
        node_id = ray.get_runtime_context().get_node_id()
    except Exception:
        node_id = ""

    # Resume checkpoints are large (model + optimizer + the selected epoch's weights), and Ray
    # copies each to storage: save one every `checkpoint_interval` seconds and at the last epoch.
    # A retried trial replays the epochs since (deterministically; the MLflow callback and the
    # Optuna glue skip steps they already have).
    interval = float(ctx.get("checkpoint_interval", 0.0))
    clock = {"last": time.monotonic()}

    def checkpoint(state: dict, epoch: int) -> None:
        pending["state"] = state

    def report(metrics: dict, epoch: int) -> None:
        m = _clean(metrics)
        m["epoch"] = float(epoch + 1)
        stop_es = bool(train.early_stopping) and (epoch + 1 - int(metrics.get("sel_epoch",
                                                                              epoch + 1))
                                                  >= train.early_stopping)   # sel_epoch: 1-based
        last = epoch + 1 >= train.epochs or stop_es
        m["merc_last"] = 1.0 if last else 0.0
        m["node_id"] = node_id
        state = pending.pop("state", None)
        if state is None or not (last or time.monotonic() - clock["last"] >= interval):
            tune.report(m)
            return
        clock["last"] = time.monotonic()
        with tempfile.TemporaryDirectory() as d:
            torch.save(state, os.path.join(d, STATE_FILE))
            if last and state.get("best_state") is not None:
                save_model(os.path.join(d, MODEL_FILE), model_name, train, model_cfg, data.meta,
                           state["best_state"],
                           extra={"flat": flat, "best_epoch": state["best_epoch"],
                                  "best": state["best"], "data_fingerprint": data.meta.fingerprint})
            tune.report(m, checkpoint=tune.Checkpoint.from_directory(d))

    result = fit(model_name, data, train, model_cfg, report=report, checkpoint=checkpoint,
                 resume=resume)
    if result.status == "diverged":
        last = result.history[-1] if result.history else {}
        metric = ctx.get("metric", "val_wf1")
        value = last.get(metric, 0.0)
        tune.report({metric: float(value) if math.isfinite(value) else 0.0,
                     "epoch": float(len(result.history) + 1), "merc_last": 1.0,
                     "merc_status": "diverged", "merc_reason": result.reason})
