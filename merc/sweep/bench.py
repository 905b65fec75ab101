"""Measure Ray Tune's per-trial start-up cost on this machine: ``python -m merc.sweep.bench``.

Runs N no-op trials (one ``tune.report``) with fresh worker processes (``reuse_actors=False``)
and with reused ones, and N trials that import the training stack (torch, PyG, merc) the way a
real trial does, and prints seconds per trial. The sweep overhead of a real sweep (wall time vs
the sum of its trials' times) is logged on every parent run as ``sweep_wall_s`` and
``trials_time_sum_s``.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time


def _noop(config):
    from ray import tune
    tune.report({"x": 1.0})


def _imports(config):
    from ray import tune
    import merc.train  # noqa: F401  (torch, PyG, models)
    import merc.models
    merc.models.get_entry("corect")
    tune.report({"x": 1.0})


def measure(n: int = 8, num_cpus: int = 2) -> dict[str, float]:
    import ray
    from ray import tune
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    t = time.perf_counter()
    if not ray.is_initialized():
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    out = {"ray_init_s": time.perf_counter() - t}
    store = tempfile.mkdtemp()
    for label, fn, reuse in (("noop_fresh", _noop, False), ("noop_reuse", _noop, True),
                             ("imports_fresh", _imports, False),
                             ("imports_reuse", _imports, True)):
        t = time.perf_counter()
        tune.Tuner(fn, tune_config=tune.TuneConfig(num_samples=n, reuse_actors=reuse,
                                                   max_concurrent_trials=num_cpus),
                   run_config=tune.RunConfig(name=label, storage_path=store, verbose=0)).fit()
        wall = time.perf_counter() - t
        out[f"{label}_wall_s"] = wall
        out[f"{label}_per_trial_s"] = wall * num_cpus / n   # per trial per concurrent slot
    return out


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m merc.sweep.bench")
    p.add_argument("-n", type=int, default=8)
    p.add_argument("--num-cpus", type=int, default=2)
    a = p.parse_args()
    for k, v in measure(a.n, a.num_cpus).items():
        print(f"{k:28s} {v:8.2f}")


if __name__ == "__main__":
    main()
