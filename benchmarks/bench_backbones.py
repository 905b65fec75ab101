"""The four SPCL backbones at the released size (issue 13, item 2): train epochs of the
official-shaped step (:mod:`benchmarks.spcl_official_shaped`, same parameter count as ours) and of
this project's backbone, side by side, and a bf16 seed-noise quality check.

Speed (``run`` / ``python -m benchmarks.bench_backbones speed``): per backbone, the official-shaped
step and ours (the default configuration and, where the model config has the keys, ``kernels``
``modules`` / ``fused`` and fused + ``autocast_bf16``), each with its own Adam, on the same shuffled
batches, interleaved step by step (the order rotates every step), 1 torch thread, process
CPU-seconds and wall per train epoch, medians over epochs. Both sides run the SPCL loss every
step (the released ``get_loss``; ours: the ``spcl`` strategy at the released pacing and
``spcl_normalise: all``), ``clip_grad_norm_(2)``, Adam lr 2e-4, batch 16 (the SPCL released
defaults, ``SPCL_IEMOCAP``). Data: the ``iemocap6`` synthetic preset (108/12/31 IEMOCAP-length
dialogues) with the SPCL feature dims a512/t768/v1024, so the networks have the released
parameter counts. When ``batches`` is set, an "epoch" is that many batches of the shuffled train
split (the same for every side), which the results say.

Quality (``python -m benchmarks.bench_backbones quality``): each backbone trained fp32 vs
``autocast_bf16`` for a few epochs over 3 seeds on a synthetic preset; the selected val w-F1
(mean +- std over seeds) of each, and whether the difference is within seed noise.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from benchmarks.common import (RESULTS_DIR, SCHEMA, Context, command_line, environment,
                               interleaved_epochs, load_average, now, render_markdown, target)

BACKBONES = ["mmgcn", "mmdfn", "dialoguegcn", "biddin"]
SPCL_DIMS = {"audio": 512, "text": 768, "visual": 1024}     # the released IEMOCAP features
OFF = "official-shaped"
TARGET = 3.0
DEFAULT_BATCHES = 2          # timed batches per "epoch" (a full epoch is 7)


def dataset(ctx: Context) -> tuple[Path, str]:
    """The iemocap6 preset at the SPCL dims (quick: 10/2/2 dialogues), generated once."""
    from merc.data.synthetic import PRESETS, synth
    upd = {"name": "synthetic-iemocap6-spcl-dims", "dims": dict(SPCL_DIMS)}
    desc = "synthetic iemocap6 preset (108/12/31 dialogues, 5146 train utterances) at a512/t768/v1024"
    if ctx.quick:
        upd |= {"name": "synthetic-iemocap6-spcl-dims-quick", "utterances": None,
                "dialogues": {"train": 10, "valid": 2, "test": 2}}
        desc = "synthetic iemocap6 preset reduced to 10/2/2 dialogues, at a512/t768/v1024"
    path = ctx.tmp("data") / upd["name"]
    if not (path / "manifest.json").is_file():
        synth(path, PRESETS["iemocap6"].model_copy(update=upd), seed=0)
    return path, desc


def variants(name: str) -> tuple[dict[str, dict], str]:
    """Our configurations to time ({label: model overrides}) and the label of the default."""
    from merc.models import get_entry
    fields = get_entry(name).config_cls.model_fields
    if "kernels" not in fields:
        return {"ours (default)": {}}, "ours (default)"
    out = {"ours modules": {"kernels": "modules"}, "ours fused": {"kernels": "fused"}}
    if "autocast_bf16" in fields:
        out["ours fused+bf16"] = {"kernels": "fused", "autocast_bf16": True}
    default = f"ours {fields['kernels'].default}"
    return out, default if default in out else next(iter(out))


def _ours_stepper(name: str, over: dict, meta):
    """step(batch) for our backbone: forward, SPCL weights, backward, clip 2, Adam (as ``fit``)."""
    from merc.models import build_model
    from merc.strategies import build_strategy
    from merc.strategies.spcl import RELEASED_PACING
    from merc.train import _per_utterance_loss, make_optimizer, resolve_config
    eps, alpha = RELEASED_PACING["iemocap6"][name]
    flat = {"strategy": "spcl", "spcl_epsilon": eps, "spcl_alpha": alpha,
            "spcl_normalise": "all", "spcl_lambda_cap": 60.0} | over
    train, mcfg = resolve_config(name, flat, "iemocap6", source="benchmark")
    model = build_model(name, mcfg, meta).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(train, params, torch.device("cpu"))     # fit's optimizer (fused Adam)
    strategy = build_strategy(train.strategy, train.strategy_config)
    strategy.on_fit_start(train)

    def step(b) -> float:
        out = model(b)
        losses = _per_utterance_loss(out, b, None)
        keep = (b.labels != -100).float()
        u_w, norm = strategy.utterance_weights(0, out, b, losses.detach())
        loss = (losses * keep * u_w).sum() / norm.clamp(min=1e-12)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, train.clip_grad_norm)
        strategy.after_backward(0, model, out, b)
        opt.step()
        return float(loss.detach())
    return step, sum(p.numel() for p in model.parameters()), train


def side_by_side(name: str, root: Path, epochs: int, batches: int | None, log=print) -> dict:
    """Train epochs of the official-shaped step vs ours, interleaved per step (module doc)."""
    from benchmarks.spcl_official_shaped import build, make_stepper
    from merc.data.dataset import MercData
    from merc.strategies.spcl import RELEASED_PACING
    torch.set_num_threads(1)
    data = MercData(root)
    meta = data.meta
    steppers, counts = {}, {}
    torch.manual_seed(0)
    off = build(name, meta.dims, meta.num_classes, meta.num_speakers)
    steppers[OFF] = make_stepper(off, RELEASED_PACING["iemocap6"][name][0])
    counts[OFF] = sum(p.numel() for p in off.parameters())
    ours, default = variants(name)
    bs = 16
    for label, over in ours.items():
        torch.manual_seed(0)
        steppers[label], counts[label], train = _ours_stepper(name, over, meta)
        bs = train.batch_size
    warm = next(iter(data["train"].batches(bs)))
    for n in steppers:              # first-step allocations and lazy init, not timed
        steppers[n](warm)
    res = interleaved_epochs(steppers, data["train"], bs, epochs, OFF, log,
                             f"[backbones] {name}", batches)
    return {"backbone": name, "measured": now(), "batch_size": bs, "default": default,
            "params": counts, **res}


def run(ctx: Context, epochs: int | None = None, batches: int | None = None,
        backbones: list[str] | None = None, previous: list[dict] | None = None) -> dict:
    """The ``backbones`` benchmark section (``python -m benchmarks run --only backbones``).

    ``previous``: side-by-side results of other backbones kept in the section (a run of a subset
    replaces only its own backbones)."""
    la0 = load_average()
    default_threads = torch.get_num_threads()
    root, desc = dataset(ctx)
    epochs = epochs or (1 if ctx.quick else 3)
    if batches is None:
        batches = 1 if ctx.quick else DEFAULT_BATCHES
    fresh = []
    try:
        for name in backbones or BACKBONES:
            ctx.log(f"[backbones] {name}: {epochs} epoch(s) of {batches} batches side by side ...")
            fresh.append(side_by_side(name, root, epochs, batches, ctx.log))
    finally:
        torch.set_num_threads(default_threads)
    done = {r["backbone"] for r in fresh}
    results = sorted([r for r in previous or [] if r["backbone"] not in done] + fresh,
                     key=lambda r: BACKBONES.index(r["backbone"]))
    sec = section(results, desc)
    sec["load_average"] = {"start": la0, "end": load_average()}
    return sec


def section(results: list[dict], desc: str) -> dict:
    """Tables, measurements and targets of the side-by-side results."""
    rows, targets, ms = [], [], {}
    for r in results:
        n = r["backbone"]
        for v, c in r["cpu_s_per_epoch"].items():
            sc = r["speedup_vs_official_cpu"].get(v, {}).get("median", 1.0)
            sw = r["speedup_vs_official_wall"].get(v, {}).get("median", 1.0)
            rows.append([n, v + (" *" if v == r["default"] else ""), f"{r['params'][v]:,}",
                         f"{r['batches_per_epoch']} x {r['epochs']}", f"{c['median']:.2f}",
                         f"{r['wall_s_per_epoch'][v]['median']:.2f}", f"{sc:.2f}x", f"{sw:.2f}x",
                         f"{r['load_average']['start']} -> {r['load_average']['end']}",
                         r.get("measured", "")])
            ms[f"{n} {v} CPU-s per train epoch"] = c
        d = r["default"]
        sp = r["speedup_vs_official_cpu"][d]["median"]
        best = max(r["speedup_vs_official_cpu"],
                   key=lambda k: r["speedup_vs_official_cpu"][k]["median"])
        targets.append(target(f"{n} train epoch vs the official-shaped step (CPU-s, 1 thread)",
                              f">= {TARGET:g}x", round(sp, 2), sp >= TARGET,
                              f"default ({d}); best variant {best}: "
                              f"{r['speedup_vs_official_cpu'][best]['median']:.2f}x"))
    return {
        "description": __doc__.strip().split("\n\n")[0],
        "setup": {"data": desc, "torch_threads": 1, "config": "SPCL released defaults (batch "
                  "16, lr 2e-4, clip 2, hidden 200), encoder: released, SPCL loss every step"},
        "measurements": ms,
        "tables": [{"title": "Train epoch side by side per backbone (interleaved per step; "
                             "medians over epochs; speed-up = median of paired per-epoch ratios; "
                             "* = our default; 'epoch' = batches x epochs timed, see notes)",
                    "columns": ["backbone", "variant", "params", "batches x epochs",
                                "CPU-s / epoch", "wall s / epoch", "speed-up CPU",
                                "speed-up wall", "load average", "measured"], "rows": rows}],
        "side_by_side": results, "targets": targets,
        "notes": ["an 'epoch' here is the first k batches of 16 of the shuffled train split "
                  "(the same batches for every side; a full epoch is 7 batches), so that all "
                  "four backbones fit a few minutes on a shared 2-core machine; each side gets "
                  "one untimed warm-up step",
                  "official-shaped: benchmarks/spcl_official_shaped.py (same parameter count, "
                  "checked in tests/test_spcl_official_shaped.py)"],
    }


def history_row(sec: dict, label: str, commit: str, only: list[str] | None = None) -> list[str]:
    """One line of the speed history: per backbone the default's speed-up (and bf16's); ``only``:
    the backbones this run measured (the others' cells stay empty)."""
    r = {x["backbone"]: x for x in sec.get("side_by_side", [])
         if only is None or x["backbone"] in only}
    cells = []
    for n in BACKBONES:
        sp = r[n]["speedup_vs_official_cpu"] if n in r else None
        if not sp:
            cells.append("-")
            continue
        bf = sp.get("ours fused+bf16", {}).get("median")
        cells.append(f"{sp[r[n]['default']]['median']:.2f}x" + (f" / {bf:.2f}x" if bf else ""))
    when = max((x.get("measured", "") for x in r.values()), default="")
    return [label, f"`{commit[:7]}`", when] + cells


def history_table(rows: list[list[str]]) -> dict:
    return {"title": "Speed history: CPU-s speed-up vs the official-shaped step, default fp32 / "
                     "fused+bf16 (each row one side-by-side run; compare rows only as ratios)",
            "columns": ["run", "commit", "measured", *BACKBONES], "rows": rows}


# ---- quality -----------------------------------------------------------------------------------

def quality_data(preset: str) -> Path:
    """``small`` etc.: a synthetic preset; ``iemocap6-N``: the iemocap6 preset at the SPCL dims
    reduced to N/12/12 dialogues (released-size encoders on realistic widths, a few minutes)."""
    from merc.data.synthetic import PRESETS, resolve_data, synth
    if not preset.startswith("iemocap6-"):
        return resolve_data(f"synthetic:{preset}")
    n = int(preset.split("-", 1)[1])
    name = f"synthetic-iemocap6-spcl-dims-{n}"
    path = Context(False, RESULTS_DIR).tmp("data") / name
    if not (path / "manifest.json").is_file():
        synth(path, PRESETS["iemocap6"].model_copy(update={
            "name": name, "dims": dict(SPCL_DIMS), "utterances": None,
            "dialogues": {"train": n, "valid": 12, "test": 12}}), seed=0)
    return path


def quality(preset: str = "small", epochs: int = 8, seeds=(0, 1, 2),
            backbones: list[str] | None = None, log=print) -> dict:
    """fp32 vs autocast_bf16 per backbone: selected val w-F1 (and test w-F1 there) over seeds."""
    from merc.data.dataset import MercData
    from merc.models import get_entry
    from merc.train import fit, resolve_config
    data = MercData(quality_data(preset))
    out = {}
    for name in backbones or BACKBONES:
        if "autocast_bf16" not in get_entry(name).config_cls.model_fields:
            out[name] = {"skipped": "no autocast_bf16 key"}
            continue
        res = {}
        for label, over in (("fp32", {"autocast_bf16": False}), ("bf16", {"autocast_bf16": True})):
            val, test, secs = [], [], []
            for s in seeds:
                train, mcfg = resolve_config(name, {"epochs": epochs, "seed": s, "threads": 1,
                                                    "early_stopping": 0} | over, "iemocap6",
                                             source="benchmark")
                t0 = time.perf_counter()
                r = fit(name, data, train, mcfg)
                secs.append(time.perf_counter() - t0)
                val.append(r.best["val_wf1"])
                test.append(r.best["test_wf1"])
                log(f"[quality] {name} {label} seed {s}: sel val w-F1 {val[-1]:.2f} "
                    f"(test {test[-1]:.2f}, epoch {r.best_epoch}) [{secs[-1]:.0f}s]")
            res[label] = {"val_wf1": val, "test_wf1": test, "fit_s": secs}
        a, b = res["fp32"]["val_wf1"], res["bf16"]["val_wf1"]
        sa, sb = statistics.stdev(a), statistics.stdev(b)
        delta = statistics.mean(b) - statistics.mean(a)
        res["delta_val_wf1"] = delta
        res["within_seed_noise"] = abs(delta) <= max(sa, sb)
        out[name] = res
    return {"preset": preset, "epochs": epochs, "seeds": list(seeds), "results": out,
            "rule": "within seed noise: |mean bf16 - mean fp32| <= max(std fp32, std bf16) "
                    "(sample std over the seeds)"}


def quality_table(q: dict) -> dict:
    rows = []
    for n, r in q["results"].items():
        if "skipped" in r:
            rows.append([n, "-", "-", "-", "-", r["skipped"], "-", "-"])
            continue
        f = lambda xs: f"{statistics.mean(xs):.2f} +- {statistics.stdev(xs):.2f}"   # noqa: E731
        paired = max(abs(b - a) for a, b in zip(r["fp32"]["val_wf1"], r["bf16"]["val_wf1"]))
        rows.append([n, f(r["fp32"]["val_wf1"]), f(r["bf16"]["val_wf1"]),
                     f"{r['delta_val_wf1']:+.2f}", f"{paired:.2f}",
                     "yes" if r["within_seed_noise"] else "**no**",
                     f(r["fp32"]["test_wf1"]), f(r["bf16"]["test_wf1"])])
    p = q["preset"]
    data = (f"the iemocap6 preset at a512/t768/v1024 reduced to {p.split('-')[1]}/12/12 dialogues"
            if p.startswith("iemocap6-") else f"synthetic:{p}")
    return {"title": f"bf16 quality: selected val w-F1 (mean +- std over seeds {q['seeds']}), "
                     f"{data}, {q['epochs']} epochs, released defaults (fused kernels); "
                     f"{q['rule']}",
            "columns": ["backbone", "fp32 val w-F1", "bf16 val w-F1", "delta",
                        "max paired abs delta (same seed)", "within noise", "fp32 test w-F1",
                        "bf16 test w-F1"], "rows": rows}


# ---- results file ------------------------------------------------------------------------------

def write(doc: dict, out: Path = RESULTS_DIR) -> None:
    """``backbones.json`` + ``backbones.md`` (the benchmark harness's format)."""
    out.mkdir(parents=True, exist_ok=True)
    for sec in doc.get("benchmarks", {}).values():       # each section says how to reproduce it
        cmd = sec.get("command")
        notes = sec.setdefault("notes", [])
        if cmd and not any(n.startswith("reproduce:") for n in notes):
            notes.append(f"reproduce: `{cmd}` (1 torch thread; `nice -n 5` on a shared machine)")
    (out / "backbones.json").write_text(json.dumps(doc, indent=1, default=str) + "\n")
    (out / "backbones.md").write_text(render_markdown(doc))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_backbones",
                                description=__doc__.split("\n")[0])
    p.add_argument("what", choices=["speed", "quality", "both", "render"])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--epochs", type=int, help="speed: epochs (default 3, quick 1)")
    p.add_argument("--batches", type=int, help=f"speed: batches per epoch (default "
                   f"{DEFAULT_BATCHES}, quick 1)")
    p.add_argument("--only", help="comma-separated backbones")
    p.add_argument("--q-preset", default="small")
    p.add_argument("--q-epochs", type=int, default=8)
    p.add_argument("--out", default=str(RESULTS_DIR))
    p.add_argument("--label", help="speed: this run's name in the history table (e.g. 'session 4')")
    a = p.parse_args(argv)
    only = a.only.split(",") if a.only else None
    log = lambda s: print(s, flush=True)   # noqa: E731
    out = Path(a.out)
    path = out / "backbones.json"
    doc = json.loads(path.read_text()) if path.is_file() else None
    if doc is None or doc.get("schema") != SCHEMA:
        doc = {"schema": SCHEMA, "benchmarks": {}}
    old_commit = (doc.get("environment") or {}).get("git", {}).get("commit")   # previous run's
    doc |= {"command": "python -m benchmarks.bench_backbones " + " ".join(sys.argv[1:] if argv is None else argv),
            "quick": a.quick, "only": only, "started": now(), "environment": environment(),
            "load_average": {"start": load_average(), "end": None}}
    t0 = time.time()
    if a.what == "render":              # rewrite backbones.md from backbones.json
        for sec in doc["benchmarks"].values():
            if "quality" in sec:
                sec["tables"] = [quality_table(sec["quality"])]
        write(json.loads(path.read_text()) | {"benchmarks": doc["benchmarks"]}, out)
        return 0
    if a.what in ("speed", "both"):
        ctx = Context(quick=a.quick, out_dir=out, log=log)
        b0 = time.time()
        old = doc["benchmarks"].get("backbones", {})
        prev = old.get("side_by_side", [])
        sec = run(ctx, a.epochs, a.batches, only, prev if only and not a.quick else None)
        sec["duration_s"] = time.time() - b0
        sec["command"] = doc["command"]
        # the history: earlier runs' rows, the replaced run's own row, this run's row
        hist = list(old.get("history", []))
        if prev and not old.get("history_row_added"):
            hist.append(history_row(old, old.get("label") or "earlier run",
                                    old.get("commit") or old_commit or "unknown"))
        sec["label"], sec["commit"] = a.label, doc["environment"]["git"]["commit"]
        sec["history"] = hist + [history_row(sec, a.label or "this run", sec["commit"], only)]
        sec["history_row_added"] = True
        sec["tables"].append(history_table(sec["history"]))
        for r in sec["side_by_side"]:
            r.setdefault("command", doc["command"])
        doc["benchmarks"]["backbones"] = sec
    if a.what in ("quality", "both"):
        b0 = time.time()
        la = load_average()
        key = f"backbones_bf16_quality_{a.q_preset}"
        q = quality(a.q_preset, a.q_epochs, backbones=only, log=log)
        old = doc["benchmarks"].get(key, {}).get("quality")
        if only and old and old["epochs"] == q["epochs"] and old["seeds"] == q["seeds"]:
            q["results"] = {n: q["results"].get(n, old["results"].get(n)) for n in BACKBONES
                            if n in q["results"] or n in old["results"]}
        doc["benchmarks"][key] = {
            "description": "bf16 autocast vs fp32 on the backbones: selected val w-F1 over seeds",
            "command": doc["command"], "quality": q, "tables": [quality_table(q)],
            "targets": [], "measurements": {}, "duration_s": time.time() - b0,
            "load_average": {"start": la, "end": load_average()}}
    doc["finished"], doc["duration_s"] = now(), time.time() - t0
    doc["load_average"]["end"] = load_average()
    write(doc, out)
    for s in doc["benchmarks"].values():
        for t in s.get("targets", []):
            print(f"  [{'met' if t['met'] else 'NOT MET'}] {t['name']} ({t['target']}): "
                  f"{t['value']}  {t['note']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
