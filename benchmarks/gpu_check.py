"""GPU check for a lent GPU machine (run through ``benchmarks/gpu_check.sh``; see its header).

Phases, all CORECT at the IEMOCAP-6 paper defaults on the full synthetic IEMOCAP-shaped data:

A. ``phases``: one trial alone, with the phase timers of :mod:`benchmarks.instrument` (each phase
   boundary synchronises the device, so this run is only for the step breakdown);
B. ``one-per-gpu``: N trials (windows [1,1], [4,4], [11,9], [15,15]) one after another, each
   alone on the GPU - what ``--gpus-per-trial 1`` gives on a one-GPU machine;
C. ``fractional``: the same N trials at once, as N processes on the one GPU, each capping its
   memory with ``torch.cuda.set_per_process_memory_fraction(1/N)`` - exactly what Ray does for
   ``--gpus-per-trial 1/N`` (a scheduling share; ``merc.sweep.trainable`` sets the same cap).
   Ray itself cannot travel to the machine (its wheel is larger than the 64 MiB that a call can
   carry), so the processes are started here; if ``ray`` is importable there, the shell script
   also runs the real engine with fractional GPUs.

Per trial: epoch times (train part and eval part), ``torch.cuda.max_memory_allocated`` /
``max_memory_reserved``; GPU utilisation and memory are sampled by ``nvidia-smi`` in the
background every 200 ms and summarised per phase. Everything goes to ``$OUT`` (gpu_check.json,
gpu_check.md, gpu_util.csv). ``--device cpu`` runs the same plumbing without a GPU (dry run).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

WINDOWS = [(1, 1), (4, 4), (11, 9), (15, 15)]


def _data(kind: str) -> Path:
    from merc.data.synthetic import PRESETS, resolve_data, synth
    if kind == "full":
        return resolve_data("synthetic:iemocap6")
    cfg = PRESETS["iemocap6"].model_copy(update={
        "name": "synthetic-iemocap6-gpu-dry", "utterances": None,
        "dialogues": {"train": 10, "valid": 2, "test": 2}})
    path = Path(os.environ.get("MERC_CACHE", "/tmp/merc-cache")) / "iemocap6-gpu-dry"
    if not (path / "manifest.json").is_file():
        synth(path, cfg, seed=0)
    return path


def trial(a) -> None:
    """One trial in its own process; writes a JSON result."""
    import torch
    from benchmarks.common import PhaseTimer
    from benchmarks.instrument import instrumented, step_shares
    from merc.data.dataset import MercData
    from merc.train import fit, resolve_config
    cuda = a.device.startswith("cuda")
    if cuda and a.mem_fraction < 1:
        torch.cuda.set_per_process_memory_fraction(a.mem_fraction)
    t_start = time.time()
    train, mcfg = resolve_config("corect", {"epochs": a.epochs, "threads": a.threads,
                                            "device": a.device, "window_past": a.wp,
                                            "window_future": a.wf}, "iemocap6", "gpu_check")
    data = MercData(a.data)
    timer = PhaseTimer(sync=torch.cuda.synchronize if cuda else None, enabled=a.phases)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t_fit = time.time()
    if a.phases:
        with instrumented(timer):
            res = fit("corect", data, train, mcfg)
    else:
        res = fit("corect", data, train, mcfg)
    t_end = time.time()
    h = res.history
    out = {"window": [a.wp, a.wf], "device": a.device, "mem_fraction": a.mem_fraction,
           "threads": a.threads, "epochs": len(h), "status": res.status,
           "epoch_time": [m["epoch_time"] for m in h], "train_time": [m["train_time"] for m in h],
           "eval_time": [m["epoch_time"] - m["train_time"] for m in h],
           "t_start": t_start, "t_fit": t_fit, "t_end": t_end,
           "setup_s": t_fit - t_start, "fit_s": t_end - t_fit,
           "val_wf1": h[-1]["val_wf1"] if h else None}
    if cuda:
        out["max_memory_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
        out["max_memory_reserved_mib"] = torch.cuda.max_memory_reserved() / 2**20
        out["gpu_name"] = torch.cuda.get_device_name(0)
    if a.phases and h:
        tot = sum(out["train_time"])
        out["step_share"] = {k: v / tot for k, v in step_shares(timer, tot).items()}
    Path(a.result).write_text(json.dumps(out, indent=1))


class Sampler:
    """nvidia-smi --query-gpu ... -lms 200 in the background, to a CSV."""

    FIELDS = "timestamp,utilization.gpu,utilization.memory,memory.used,memory.total"

    def __init__(self, path: Path):
        self.path = path
        self.proc = None
        if shutil.which("nvidia-smi"):
            self.f = open(path, "w")
            self.proc = subprocess.Popen(["nvidia-smi", f"--query-gpu={self.FIELDS}",
                                          "--format=csv,noheader,nounits", "-lms", "200"],
                                         stdout=self.f, stderr=subprocess.DEVNULL)

    def stop(self) -> None:
        if self.proc:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.f.close()

    def samples(self) -> list[tuple[float, float, float, float]]:
        """(unix time, util %, memory util %, memory used MiB)."""
        out = []
        if not self.path.exists():
            return out
        for line in self.path.read_text().splitlines():
            parts = [p.strip() for p in line.split(",")]
            try:
                t = _dt.datetime.strptime(parts[0], "%Y/%m/%d %H:%M:%S.%f").timestamp()
                out.append((t, float(parts[1]), float(parts[2]), float(parts[3])))
            except (ValueError, IndexError):
                continue
        return out


def _stats(xs):
    xs = list(xs)
    if not xs:
        return None
    return {"median": statistics.median(xs), "mean": sum(xs) / len(xs), "min": min(xs),
            "max": max(xs), "n": len(xs)}


def _spawn(a, out: Path, name: str, wp: int, wf: int, frac: float, phases: bool, epochs: int):
    res = out.parent / "trials" / f"{name}.json"
    res.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "benchmarks.gpu_check", "trial", "--device", a.device,
           "--data", str(a.data_root), "--epochs", str(epochs), "--threads", str(a.threads),
           "--wp", str(wp), "--wf", str(wf), "--mem-fraction", str(frac), "--result", str(res)]
    if phases:
        cmd.append("--phases")
    log = open(out.parent / "trials" / f"{name}.log", "w")
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), res


def main_run(a) -> int:
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    a.data_root = _data(a.data)
    sampler = Sampler(out / "gpu_util.csv")
    phases, results = {}, {}
    N = a.trials
    try:
        # A: one trial alone with phase timers
        t0 = time.time()
        p, r = _spawn(a, work / "x", "A_phases", 11, 9, 1.0, True, a.phase_epochs)
        p.wait()
        phases["A_phases"] = (t0, time.time())
        results["A_phases"] = [json.loads(r.read_text())] if r.exists() else []
        # B: N trials one after another, each alone
        t0 = time.time()
        results["B_one_per_gpu"] = []
        for i, (wp, wf) in enumerate(WINDOWS[:N]):
            p, r = _spawn(a, work / "x", f"B_{i}", wp, wf, 1.0, False, a.epochs)
            p.wait()
            if r.exists():
                results["B_one_per_gpu"].append(json.loads(r.read_text()))
        phases["B_one_per_gpu"] = (t0, time.time())
        # C: the same N trials at once, 1/N of the GPU each
        t0 = time.time()
        procs = [_spawn(a, work / "x", f"C_{i}", wp, wf, 1.0 / N, False, a.epochs)
                 for i, (wp, wf) in enumerate(WINDOWS[:N])]
        for p, _ in procs:
            p.wait()
        phases["C_fractional"] = (t0, time.time())
        results["C_fractional"] = [json.loads(r.read_text()) for _, r in procs if r.exists()]
    finally:
        sampler.stop()
    samples = sampler.samples()
    summary = {}
    for ph, (s, e) in phases.items():
        rs = results.get(ph, [])
        win = [x for x in samples if s <= x[0] <= e]
        summary[ph] = {
            "wall_s": e - s, "trials_ok": len(rs),
            "epoch_time_s": _stats(t for r in rs for t in r["epoch_time"][1:] or r["epoch_time"]),
            "train_part_s": _stats(t for r in rs for t in r["train_time"][1:] or r["train_time"]),
            "eval_part_s": _stats(t for r in rs for t in r["eval_time"][1:] or r["eval_time"]),
            "trial_setup_s": _stats(r["setup_s"] for r in rs),
            "peak_mem_allocated_mib": [r.get("max_memory_allocated_mib") for r in rs],
            "peak_mem_reserved_mib": [r.get("max_memory_reserved_mib") for r in rs],
            "gpu_util_pct": _stats(x[1] for x in win), "gpu_mem_used_mib": _stats(x[3] for x in win),
            "epochs_per_hour": (sum(r["epochs"] for r in rs) / (e - s) * 3600) if rs else None}
        if ph == "A_phases" and rs:
            summary[ph]["step_share"] = rs[0].get("step_share")
    doc = {"command": " ".join(sys.argv), "device": a.device, "trials": N, "epochs": a.epochs,
           "threads_per_trial": a.threads, "data": str(a.data_root), "phases": summary,
           "trials_raw": results, "load_average": os.getloadavg(),
           "note": "epoch statistics skip each trial's first epoch (CUDA/cuDNN warm-up) when it "
                   "has more than one"}
    try:
        import torch
        doc["torch"] = torch.__version__
        doc["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:
        pass
    (out / "gpu_check.json").write_text(json.dumps(doc, indent=1))
    md = [f"# GPU check ({doc.get('gpu') or a.device})", "", f"`{doc['command']}`", "",
          "| phase | wall s | trials | epoch s (median) | train s | eval s | epochs/hour | "
          "GPU util % (median / max) | peak alloc MiB per trial |", "|---|---|---|---|---|---|---|---|---|"]
    def f(d):
        return f"{d['median']:.2f}" if d else "-"
    for ph, s in summary.items():
        u = s["gpu_util_pct"]
        util = f"{u['median']:.0f} / {u['max']:.0f}" if u else "-"
        mem = ", ".join(f"{m:.0f}" for m in s["peak_mem_allocated_mib"] if m is not None) or "-"
        md.append(f"| {ph} | {s['wall_s']:.0f} | {s['trials_ok']} | {f(s['epoch_time_s'])} | "
                  f"{f(s['train_part_s'])} | {f(s['eval_part_s'])} | "
                  f"{(s['epochs_per_hour'] or 0):.0f} | {util} | {mem} |")
    if summary.get("A_phases", {}).get("step_share"):
        md += ["", "Step shares (phase A, synchronised timers): " + ", ".join(
            f"{k} {v * 100:.1f}%" for k, v in summary["A_phases"]["step_share"].items())]
    (out / "gpu_check.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    ok = all(summary[p]["trials_ok"] == (1 if p == "A_phases" else N) for p in summary)
    return 0 if ok else 1


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--out", default=os.environ.get("OUT", "benchmarks/out/gpu"))
    r.add_argument("--work", default="/tmp/merc-gpu-check")
    r.add_argument("--device", default="cuda")
    r.add_argument("--data", choices=["full", "dry"], default="full")
    r.add_argument("--trials", type=int, default=4)
    r.add_argument("--epochs", type=int, default=3)
    r.add_argument("--phase-epochs", type=int, default=2)
    r.add_argument("--threads", type=int, default=4)
    t = sub.add_parser("trial")
    t.add_argument("--device", default="cuda")
    t.add_argument("--data", required=True)
    t.add_argument("--epochs", type=int, default=3)
    t.add_argument("--threads", type=int, default=4)
    t.add_argument("--wp", type=int, default=11)
    t.add_argument("--wf", type=int, default=9)
    t.add_argument("--mem-fraction", type=float, default=1.0)
    t.add_argument("--phases", action="store_true")
    t.add_argument("--result", required=True)
    a = p.parse_args(argv)
    if a.cmd == "trial":
        trial(a)
        return 0
    return main_run(a)


if __name__ == "__main__":
    sys.exit(main())
