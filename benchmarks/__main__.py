"""``python -m benchmarks run [--quick] [--only NAME[,NAME]] [--out DIR]``.

Benchmarks (in this order): graph, train, backbones, sweep_overhead, sweep_efficiency,
sweep_throughput (real_data only with --only). Results go to
``DIR/latest.json`` and ``DIR/latest.md`` (default ``benchmarks/results``), rewritten after every
benchmark so that an interrupted run keeps what it measured.
"""
from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path

from benchmarks.common import (RESULTS_DIR, SCHEMA, Context, command_line, environment,
                               load_average, now, write_results)


def _registry():
    from benchmarks import bench_backbones, bench_graph, bench_sweep, bench_train
    return {"graph": bench_graph.run, "train": bench_train.run, "backbones": bench_backbones.run,
            "sweep_overhead": bench_sweep.run_overhead,
            "sweep_efficiency": bench_sweep.run_efficiency,
            "sweep_throughput": bench_sweep.run_throughput_bench,
            "real_data": __import__("benchmarks.real_data", fromlist=["run"]).run}


NAMES = ["graph", "train", "backbones", "sweep_overhead", "sweep_efficiency", "sweep_throughput"]


def run(quick: bool = False, only: list[str] | None = None, out: Path = RESULTS_DIR,
        log=print, command: str | None = None, work_dir: Path | None = None) -> dict:
    reg = _registry()
    names = only or NAMES
    unknown = [n for n in names if n not in reg]
    if unknown:
        raise SystemExit(f"unknown benchmark(s) {unknown}; choose from {NAMES}")
    ctx = Context(quick=quick, out_dir=Path(out), log=log, work_dir=work_dir)
    ctx.shared = {}
    t0 = time.time()
    doc = {"schema": SCHEMA, "command": command or command_line(), "quick": quick,
           "only": only, "started": now(), "finished": None, "duration_s": 0.0,
           "environment": environment(), "load_average": {"start": load_average(), "end": None},
           "benchmarks": {}}
    for name in names:
        log(f"== {name} ({'quick' if quick else 'full'}) ==")
        b0 = time.time()
        la = load_average()
        try:
            sec = reg[name](ctx)
        except Exception as err:
            log(traceback.format_exc())
            sec = {"error": f"{type(err).__name__}: {err}", "measurements": {}, "targets": [],
                   "traceback": traceback.format_exc()[-4000:],
                   "load_average": {"start": la, "end": load_average()}}
        sec["duration_s"] = time.time() - b0
        ctx.shared[name] = sec
        doc["benchmarks"][name] = sec
        doc["finished"], doc["duration_s"] = now(), time.time() - t0
        doc["load_average"]["end"] = load_average()
        write_results(doc, Path(out))
    return doc


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run the benchmarks and write the results files")
    r.add_argument("--quick", action="store_true", help="small workloads (a few minutes)")
    r.add_argument("--only", help=f"comma-separated subset of {','.join(NAMES)}")
    r.add_argument("--out", default=str(RESULTS_DIR), help="results directory")
    a = p.parse_args(argv)
    only = [s.strip() for s in a.only.split(",") if s.strip()] if a.only else None
    doc = run(a.quick, only, Path(a.out), log=lambda s: print(s, flush=True))
    failed = [n for n, s in doc["benchmarks"].items() if s.get("error")]
    print(f"results: {Path(a.out) / 'latest.json'}, {Path(a.out) / 'latest.md'}")
    for n, s in doc["benchmarks"].items():
        for t in s.get("targets", []):
            met = {True: "met", False: "NOT MET", None: "info"}[t["met"]]
            print(f"  [{met}] {n}: {t['name']} ({t['target']}): {t['value']}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
