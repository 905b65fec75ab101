"""In-trial probe for the sweep-overhead benchmark (imported into every trial with ``--import``).

When ``MERC_BENCH_PROBE`` names a directory, this module wraps, inside the trial process, the
names ``merc.sweep.trainable`` looks up at call time: ``open_data`` (called once per trial, right
after the config is resolved: marks the trial's start), ``torch.save`` (the per-epoch resume
state and the final model file) and ``tune.report`` (which persists the checkpoint directory to
the run's storage). Each call appends one JSON line to ``$MERC_BENCH_PROBE/<pid>.jsonl``. Nothing
in the library changes; without the variable the import does nothing.
"""
from __future__ import annotations

import json
import os
import time

_DIR = os.environ.get("MERC_BENCH_PROBE")


def _trial_id() -> str:
    try:
        from ray import tune
        return tune.get_context().get_trial_id() or ""
    except Exception:
        return ""


def _emit(rec: dict) -> None:
    rec.setdefault("pid", os.getpid())
    rec.setdefault("trial_id", _trial_id())
    with open(os.path.join(_DIR, f"{os.getpid()}.jsonl"), "a") as f:
        f.write(json.dumps(rec) + "\n")


class _Proxy:
    def __init__(self, target, **overrides):
        self._target = target
        self.__dict__.update(overrides)

    def __getattr__(self, name):
        return getattr(self._target, name)


def _install() -> None:
    import merc.sweep.trainable as tr
    if getattr(tr, "_merc_bench_probe", False):
        return
    tr._merc_bench_probe = True
    open_data, torch_mod, tune_mod = tr.open_data, tr.torch, tr.tune

    def timed_open_data(*a, **kw):
        t0 = time.time()
        out = open_data(*a, **kw)
        _emit({"event": "trial_start", "t": t0, "open_data_s": time.time() - t0})
        return out

    def timed_save(obj, f, *a, **kw):
        t0 = time.perf_counter()
        out = torch_mod.save(obj, f, *a, **kw)
        size = os.path.getsize(f) if isinstance(f, (str, os.PathLike)) and os.path.exists(f) else 0
        _emit({"event": "save", "t": time.time(), "s": time.perf_counter() - t0, "bytes": size})
        return out

    def timed_report(metrics, *a, **kw):
        t0 = time.perf_counter()
        out = tune_mod.report(metrics, *a, **kw)
        _emit({"event": "report", "t": time.time(), "s": time.perf_counter() - t0,
               "epoch": metrics.get("epoch"), "checkpoint": kw.get("checkpoint") is not None,
               "epoch_time": metrics.get("epoch_time")})
        return out

    tr.open_data = timed_open_data
    tr.torch = _Proxy(torch_mod, save=timed_save)
    tr.tune = _Proxy(tune_mod, report=timed_report)


if _DIR:
    os.makedirs(_DIR, exist_ok=True)
    _install()
