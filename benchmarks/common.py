"""Shared helpers: environment record, robust statistics, phase timers, results files.

Timing discipline (the machine is shared and noisy): every comparison runs both sides in the same
process, interleaved (A, B, A, B, ...), and reports the median with min, max and n. Wall time and
process CPU time are both recorded where it matters: CPU time is far less sensitive to other
people's jobs on the same cores, wall time is what a user waits for. The load average is recorded
at the start and end of every benchmark and of the whole run.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "benchmarks" / "results"
SCHEMA = "merc-benchmarks/1"


# ---------------------------------------------------------------------------------------------
# environment


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_gib() -> Optional[float]:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def _version(mod: str) -> Optional[str]:
    try:
        from importlib.metadata import version
        return version(mod)
    except Exception:
        return None


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except Exception:
        return ""


def environment() -> dict[str, Any]:
    import torch
    gpu = None
    if torch.cuda.is_available():
        gpu = {"name": torch.cuda.get_device_name(0), "count": torch.cuda.device_count()}
    return {
        "machine": {"cpu_model": _cpu_model(), "logical_cores": os.cpu_count(),
                    "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                    else os.cpu_count(), "ram_gib": _ram_gib(), "platform": platform.platform(),
                    "hostname": platform.node(), "gpu": gpu,
                    "torch_threads": torch.get_num_threads()},
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "torch_geometric": _version("torch-geometric"), "ray": _version("ray"),
                     "optuna": _version("optuna"), "mlflow": _version("mlflow"),
                     "numpy": _version("numpy"), "merc_sweeps": _version("merc-sweeps")},
        "git": {"commit": _git("rev-parse", "HEAD") or "unknown",
                "branch": _git("rev-parse", "--abbrev-ref", "HEAD"),
                "dirty_files": [ln[3:] for ln in _git("status", "--porcelain").splitlines()
                                if ln.strip()][:50]},
    }


# ---------------------------------------------------------------------------------------------
# statistics


def summary(values: Iterable[float], unit: str = "s", **extra: Any) -> dict[str, Any]:
    """median, min, max, n (and the raw values) of repeated measurements."""
    xs = [float(v) for v in values]
    if not xs:
        return {"median": None, "min": None, "max": None, "n": 0, "unit": unit, **extra}
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs),
            "unit": unit, "values": [round(x, 6) for x in xs], **extra}


def interleaved_epochs(steppers: dict[str, Callable], split, batch_size: int, epochs: int,
                       ref: str, log=print, tag: str = "", batches: Optional[int] = None
                       ) -> dict[str, Any]:
    """Train epochs of several ``step(batch)`` closures on the same shuffled batches, interleaved
    step by step (the order rotates every step, so no variant always runs first or after the
    same neighbour), ``batches`` per epoch (None: all): process CPU-seconds and wall per epoch,
    medians over epochs, and each variant's speed-up against ``ref`` as the median of paired
    per-epoch ratios (the pairs ran interleaved, so they saw the same load)."""
    import torch
    names = list(steppers)
    cpu = {n: [] for n in names}
    wall = {n: [] for n in names}
    gen = torch.Generator().manual_seed(0)
    la0 = load_average()
    n_batches = 0
    for ep in range(epochs):
        ec, ew = dict.fromkeys(names, 0.0), dict.fromkeys(names, 0.0)
        for i, b in enumerate(split.batches(batch_size, True, gen)):
            if batches and i >= batches:
                break
            for n in names[i % len(names):] + names[:i % len(names)]:
                with Clock() as c:
                    steppers[n](b)
                ec[n] += c.cpu
                ew[n] += c.wall
            n_batches = i + 1
        for n in names:
            cpu[n].append(ec[n])
            wall[n].append(ew[n])
        log(f"{tag} epoch {ep + 1}/{epochs} ({n_batches} batches): " +
            ", ".join(f"{n} {ec[n]:.1f} CPU-s" for n in names))
    return {"epochs": epochs, "batches_per_epoch": n_batches,
            "load_average": {"start": la0, "end": load_average()},
            "cpu_s_per_epoch": {n: summary(v) for n, v in cpu.items()},
            "wall_s_per_epoch": {n: summary(v) for n, v in wall.items()},
            "speedup_vs_official_cpu": {n: summary([a / b for a, b in zip(cpu[ref], cpu[n])],
                                                   unit="x") for n in names if n != ref},
            "speedup_vs_official_wall": {n: summary([a / b for a, b in zip(wall[ref], wall[n])],
                                                    unit="x") for n in names if n != ref}}


def ratio_summary(num: list[float], den: list[float], **extra: Any) -> dict[str, Any]:
    """Ratio of medians plus the median of paired ratios (pairs were measured interleaved)."""
    pairs = [a / b for a, b in zip(num, den) if b > 0]
    med = statistics.median(num) / statistics.median(den) if num and den and \
        statistics.median(den) > 0 else None
    out = summary(pairs, unit="x", **extra)
    out["ratio_of_medians"] = med
    return out


@dataclass
class Clock:
    """Wall + process CPU time of a block (``with Clock() as c: ...; c.wall, c.cpu``)."""

    wall: float = 0.0
    cpu: float = 0.0

    def __enter__(self):
        self._w, self._c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self._w
        self.cpu = time.process_time() - self._c
        return False


@dataclass
class PhaseTimer:
    """Accumulates wall and CPU seconds per named phase; nested phases may be subtracted later.

    ``sync`` (e.g. ``torch.cuda.synchronize``) is called at both ends of every timed block so that
    asynchronous device work is charged to the phase that launched it.
    """

    sync: Optional[Callable[[], None]] = None
    wall: dict[str, float] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)
    enabled: bool = True

    @contextmanager
    def phase(self, name: str):
        if not self.enabled:
            yield
            return
        if self.sync:
            self.sync()
        w, c = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            if self.sync:
                self.sync()
            self.wall[name] = self.wall.get(name, 0.0) + time.perf_counter() - w
            self.cpu[name] = self.cpu.get(name, 0.0) + time.process_time() - c
            self.calls[name] = self.calls.get(name, 0) + 1

    def reset(self) -> None:
        self.wall.clear()
        self.cpu.clear()
        self.calls.clear()

    def wrap(self, name: str, fn: Callable) -> Callable:
        def wrapped(*a, **kw):
            with self.phase(name):
                return fn(*a, **kw)
        wrapped.__wrapped__ = fn
        return wrapped


# ---------------------------------------------------------------------------------------------
# a benchmark's context and the results files


@dataclass
class Context:
    quick: bool
    out_dir: Path
    log: Callable[[str], None] = print
    work_dir: Optional[Path] = None

    def tmp(self, name: str) -> Path:
        base = self.work_dir or Path(os.environ.get("MERC_BENCH_TMP", "/tmp/merc-bench"))
        p = base / name
        p.mkdir(parents=True, exist_ok=True)
        return p


def target(name: str, goal: str, value: Any, met: Optional[bool], note: str = "") -> dict:
    return {"name": name, "target": goal, "value": value, "met": met, "note": note}


def command_line() -> str:
    return "python -m benchmarks " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def now() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


def write_results(doc: dict, out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    j = out_dir / "latest.json"
    m = out_dir / "latest.md"
    j.write_text(json.dumps(doc, indent=1, sort_keys=False, default=str) + "\n")
    m.write_text(render_markdown(doc))
    return j, m


def _fmt(v: Any, unit: str = "") -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if unit == "s" and abs(v) < 0.01:
            return f"{v * 1e3:.3g} ms"
        if unit == "s":
            return f"{v:.3g} s"
        if unit == "%":
            return f"{v:.2f} %"
        return f"{v:.4g}{(' ' + unit) if unit and unit != 'x' else ('x' if unit == 'x' else '')}"
    return f"{v}{(' ' + unit) if unit else ''}"


def render_markdown(doc: dict) -> str:
    env = doc["environment"]
    mach, ver = env["machine"], env["versions"]
    L = [f"# merc-sweeps benchmarks ({'quick' if doc['quick'] else 'full'} run)", "",
         f"- command: `{doc['command']}`",
         f"- started {doc['started']}, finished {doc['finished']} "
         f"({doc['duration_s']:.0f} s)",
         f"- git commit `{env['git']['commit']}`" +
         (f" (+ {len(env['git']['dirty_files'])} uncommitted files)" if env['git']['dirty_files']
          else ""),
         f"- machine: {mach['cpu_model']}, {mach['logical_cores']} cores, {mach['ram_gib']} GiB "
         f"RAM, GPU: {mach['gpu'] or 'none'}",
         "- versions: " + ", ".join(f"{k} {v}" for k, v in ver.items() if v),
         f"- load average (1/5/15 min) at start {doc['load_average']['start']}, at end "
         f"{doc['load_average']['end']} (the machine is shared: compare only numbers measured "
         f"side by side in one run)", ""]
    tg = [t | {"bench": b} for b, sec in doc["benchmarks"].items() for t in sec.get("targets", [])]
    if tg:
        L += ["## Targets", "", "| benchmark | target | value | met | note |", "|---|---|---|---|---|"]
        for t in tg:
            met = {True: "yes", False: "**no**", None: "n/a"}[t["met"]]
            val = t["value"]
            val = f"{val:.4g}" if isinstance(val, float) else val
            L.append(f"| {t['bench']} | {t['name']}: {t['target']} | {val} | {met} | "
                     f"{t.get('note', '')} |")
        L.append("")
    for b, sec in doc["benchmarks"].items():
        L += [f"## {b}", ""]
        if sec.get("error"):
            L += [f"**failed**: `{sec['error']}`", ""]
        if sec.get("description"):
            L += [sec["description"], ""]
        if sec.get("setup"):
            L += ["Setup: " + "; ".join(f"{k} = {v}" for k, v in sec["setup"].items()), ""]
        L.append(f"Load average at start {sec.get('load_average', {}).get('start')}, at end "
                 f"{sec.get('load_average', {}).get('end')}; {sec.get('duration_s', 0):.0f} s.")
        L.append("")
        for tab in sec.get("tables", []):
            L += [f"**{tab['title']}**", "", "| " + " | ".join(tab["columns"]) + " |",
                  "|" + "---|" * len(tab["columns"])]
            for row in tab["rows"]:
                L.append("| " + " | ".join(str(c) for c in row) + " |")
            L.append("")
        ms = sec.get("measurements", {})
        if ms:
            L += ["| measurement | median | min | max | n |", "|---|---|---|---|---|"]
            for k, m in ms.items():
                u = m.get("unit", "")
                L.append(f"| {k} | {_fmt(m.get('median'), u)} | {_fmt(m.get('min'), u)} | "
                         f"{_fmt(m.get('max'), u)} | {m.get('n')} |")
            L.append("")
        for n in sec.get("notes", []):
            L.append(f"- {n}")
        if sec.get("notes"):
            L.append("")
    return "\n".join(L) + "\n"
