"""Training speed per registered model: epoch time (train part and evaluation of valid + test) on
the synthetic IEMOCAP-shaped data (108/12/31 dialogues, a100/t768/v512) at each model's paper
defaults for IEMOCAP-6, and the share of a training step spent in graph construction, forward,
backward, optimizer step and batching (timers from :mod:`benchmarks.instrument`, around one real
``merc.train.fit`` call per model).

Threads: the fits run with ``threads=1``, the setting of a sweep trial with the default
``--cpus-per-trial 1`` (Ray sets one thread per CPU of the trial), and the only reproducible one on
a shared 2-core machine. A separate, interleaved measurement compares CORECT training steps at 1
and at all torch threads on the same batches.

CORECT side by side (issue 13): train epochs of the official-shaped step
(:mod:`benchmarks.corect_official_shaped`, same parameter count) and of this project's CORECT with
``kernels="modules"`` (the nn / PyG module path), ``"fused"`` (the default) and fused + bf16
autocast, on the same shuffled batches, interleaved step by step (the order rotates every step),
process CPU-seconds and wall per epoch, medians over epochs; plus a component profile (forward +
backward of each part at the real batch shapes, module path vs fused path).
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from benchmarks.common import (Clock, Context, PhaseTimer, interleaved_epochs, load_average,
                               summary, target)
from benchmarks.instrument import instrumented, step_shares

GRAPH_TARGET = 0.05


def dataset(ctx: Context) -> tuple[Path, str]:
    from merc.data.synthetic import PRESETS, resolve_data, synth
    if not ctx.quick:
        return resolve_data("synthetic:iemocap6"), "synthetic:iemocap6 (108/12/31 dialogues, " \
                                                   "5146/664/1623 utterances)"
    cfg = PRESETS["iemocap6"].model_copy(update={
        "name": "synthetic-iemocap6-bench-quick", "utterances": None,
        "dialogues": {"train": 10, "valid": 2, "test": 2}})
    path = ctx.tmp("data") / "iemocap6-quick"
    if not (path / "manifest.json").is_file():
        synth(path, cfg, seed=0)
    return path, "synthetic IEMOCAP-6 preset reduced to 10/2/2 dialogues (IEMOCAP lengths " \
                 "and dims)"


def bench_model(name: str, root: Path, epochs: int, threads: int) -> dict:
    from merc.data.dataset import MercData
    from merc.graphs import _corect_graph
    from merc.train import fit, resolve_config
    train, mcfg = resolve_config(name, {"epochs": epochs, "threads": threads,
                                        "early_stopping": 0}, "iemocap6", source="benchmark")
    data = MercData(root, train.modalities, train.missing_rate, train.seed, train.missing_redraw)
    timer = PhaseTimer()
    ci0 = _corect_graph.cache_info()
    with instrumented(timer):
        with Clock() as c:
            res = fit(name, data, train, mcfg)
    ci1 = _corect_graph.cache_info()
    h = res.history
    train_s = [m["train_time"] for m in h]
    eval_s = [m["epoch_time"] - m["train_time"] for m in h]
    steps_per_epoch = -(-len(data["train"]) // train.batch_size)
    steps = steps_per_epoch * len(h)
    total_train = sum(train_s)
    wall = step_shares(timer, total_train, "wall")
    cpu = step_shares(timer, float("nan"), "cpu")
    timed_cpu = sum(v for k, v in cpu.items() if k != "other")
    return {
        "model": name, "status": res.status, "epochs": len(h), "params": res.num_params,
        "batch_size": train.batch_size, "steps_per_epoch": steps_per_epoch,
        "epoch_time": summary([m["epoch_time"] for m in h]),
        "train_time": summary(train_s), "eval_time": summary(eval_s),
        "step_time": summary([t / steps_per_epoch for t in train_s]),
        "step_share_wall": {k: v / total_train for k, v in wall.items()},
        "step_seconds_wall": {k: v / steps for k, v in wall.items()},
        "step_share_cpu_of_timed": {k: v / timed_cpu for k, v in cpu.items() if k != "other"},
        "graph_calls_train": timer.calls.get("train/graph", 0),
        "graph_cache": {"hits": ci1.hits - ci0.hits, "misses": ci1.misses - ci0.misses},
        "eval_graph_s": timer.wall.get("eval/graph", 0.0),
        "fit_wall_s": c.wall, "fit_cpu_s": c.cpu,
        "final_val_wf1": h[-1].get("val_wf1") if h else None,
    }


def thread_comparison(root: Path, n_steps: int, all_threads: int) -> dict:
    """CORECT train steps on the same batches, alternating 1 / all torch threads (interleaved)."""
    from merc.data.dataset import MercData
    from merc.models import build_model
    from merc.train import _per_utterance_loss, make_optimizer, resolve_config, seed_everything
    if all_threads == 1:
        return {}
    train, mcfg = resolve_config("corect", {}, "iemocap6", source="benchmark")
    data = MercData(root)
    seed_everything(0)
    model = build_model("corect", mcfg, data.meta)
    opt = make_optimizer(train, list(model.parameters()), torch.device("cpu"))   # as fit
    batches = list(data["train"].batches(train.batch_size))[:max(1, n_steps)]
    times = {1: [], all_threads: []}
    model.train()
    for i in range(n_steps):
        b = batches[i % len(batches)]
        for th in (1, all_threads):
            torch.set_num_threads(th)
            with Clock() as c:
                out = model(b)
                keep = (b.labels != -100).float()
                loss = (_per_utterance_loss(out, b, None) * keep).sum() / keep.sum()
                opt.zero_grad()
                loss.backward()
                opt.step()
            times[th].append(c.wall)
    torch.set_num_threads(all_threads)
    return {f"corect train step (batch of 10) threads={th}": summary(v)
            for th, v in times.items()}


CORECT_VARIANTS = {"ours modules": {"kernels": "modules"}, "ours fused": {"kernels": "fused"},
                   "ours fused+bf16": {"kernels": "fused", "autocast_bf16": True}}


def _corect_steppers(root: Path) -> tuple[dict, list, int]:
    """name -> step(batch) closures (model + Adam each), the data's train split and its size."""
    from benchmarks.corect_official_shaped import OfficialShapedCorect
    from merc.data.dataset import MercData
    from merc.models import build_model
    from merc.train import _per_utterance_loss, make_optimizer, resolve_config
    data = MercData(root)
    train, _ = resolve_config("corect", {}, "iemocap6", source="benchmark")
    steppers, counts = {}, {}

    def make(model, loss_fn, official=False):
        # each side's own optimizer: the official code's torch.optim.Adam (the per-tensor loop on
        # CPU), this project's merc.train.make_optimizer (fused Adam), as merc.train.fit uses it
        opt = (torch.optim.Adam(model.parameters(), lr=train.lr) if official else
               make_optimizer(train, list(model.parameters()), torch.device("cpu")))
        model.train()

        def step(b):
            loss = loss_fn(model, b)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return step

    def ours_loss(model, b):
        keep = (b.labels != -100).float()
        return (_per_utterance_loss(model(b), b, None) * keep).sum() / keep.sum()

    torch.manual_seed(0)
    off = OfficialShapedCorect(dict(data.meta.dims), data.meta.num_classes,
                               max(data.meta.num_speakers, 1))
    steppers["official-shaped"] = make(off, lambda m, b: m.loss(b), official=True)
    counts["official-shaped"] = sum(p.numel() for p in off.parameters())
    for name, over in CORECT_VARIANTS.items():
        _, mcfg = resolve_config("corect", over, "iemocap6", source="benchmark")
        torch.manual_seed(0)
        model = build_model("corect", mcfg, data.meta)
        steppers[name] = make(model, ours_loss)
        counts[name] = sum(p.numel() for p in model.parameters())
    return steppers, data["train"], counts


def corect_side_by_side(root: Path, epochs: int, threads: int, log=print) -> dict:
    """Train epochs of the official-shaped step vs ours, interleaved per step (see module doc)."""
    torch.set_num_threads(threads)
    steppers, split, counts = _corect_steppers(root)
    res = interleaved_epochs(steppers, split, 10, epochs, "official-shaped", log,
                             f"[train] side by side, {threads} thread(s),")
    return {"threads": threads, "params": counts, **res}


def corect_components(root: Path, n_batches: int, reps: int = 2) -> dict:
    """Forward + backward CPU ms per batch of each CORECT part, module path vs fused path."""
    from merc.data.dataset import MercData
    from merc.graphs import corect_graph
    from merc.models import build_model
    from merc.models.corect_fused import Bands, gt_banded, rgcn_banded
    from merc.models.kernels import linear
    from merc.models.packed import Packing, encoder_packed
    from merc.train import resolve_config
    torch.set_num_threads(1)
    data = MercData(root)
    _, mcfg = resolve_config("corect", {}, "iemocap6", source="benchmark")
    torch.manual_seed(0)
    model = build_model("corect", mcfg, data.meta).train()
    h, M = mcfg.hidden_size, len(data.meta.modalities)
    gen = torch.Generator().manual_seed(0)
    batches = list(data["train"].batches(10, True, gen))[:n_batches]
    enc = model.encoders["text"]
    P, F_ = mcfg.window_past, mcfg.window_future

    def text_mod(b):
        enc["out"](enc["transformer"](b.features["text"], src_key_padding_mask=~b.mask))[
            b.mask].sum().backward()

    def text_fused(b):
        pk = Packing(b.mask)
        y = encoder_packed(enc["transformer"], pk.unpad(b.features["text"]), pk, b.mask)
        linear(y, enc["out"].weight, enc["out"].bias).sum().backward()

    def graph_mod(b):
        U = int(b.lengths.sum())
        x = torch.randn(M * U, h, requires_grad=True)
        g = corect_graph(b.lengths, M, P, F_)
        model.gt_norm(model.gt(model.rgcn(x, g.edge_index, g.edge_type), g.edge_index)
                      ).sum().backward()

    def graph_fused(b):
        pk = Packing(b.mask)
        x = torch.randn(M, pk.U, h, requires_grad=True)
        bands = Bands(b.lengths, pk.N, P, F_, "paper", True)
        y = gt_banded(model.gt, rgcn_banded(model.rgcn, x, pk, bands, True), pk, bands, True)
        model.gt_norm(y.reshape(M * pk.U, -1)).sum().backward()

    def pcm_mod(b):
        xs = [torch.randn(*b.mask.shape, h, requires_grad=True) for _ in range(M)]
        model.pcm(xs, [b.mask] * M, b.mask)[b.mask].sum().backward()

    def pcm_fused(b):
        pk = Packing(b.mask)
        xs = [torch.randn(pk.U, h, requires_grad=True) for _ in range(M)]
        model.pcm.forward_packed(xs, [b.mask] * M, b.mask, pk).sum().backward()

    twin = build_model("corect", mcfg.model_copy(update={"kernels": "modules"}), data.meta).train()
    twin.load_state_dict(model.state_dict())

    def whole(m):
        def f(b):
            m(b).logits[b.mask].sum().backward()
        return f

    parts = {"text Transformer": (text_mod, text_fused),
             "RGCN + Graph Transformer + BN": (graph_mod, graph_fused),
             "P-CM": (pcm_mod, pcm_fused),
             "whole forward+backward": (whole(twin), whole(model))}
    res = {}
    for name, (fa, fb) in parts.items():
        ta, tb = [], []
        fa(batches[0])
        fb(batches[0])
        for _ in range(reps):
            for b in batches:
                for f, acc in ((fa, ta), (fb, tb)):
                    with Clock() as c:
                        f(b)
                    acc.append(c.cpu * 1e3)
                    model.zero_grad(set_to_none=True)
                    twin.zero_grad(set_to_none=True)
        res[name] = {"modules_ms": summary(ta), "fused_ms": summary(tb)}
    return res


def run(ctx: Context) -> dict:
    from merc.models import model_names
    la0 = load_average()
    default_threads = torch.get_num_threads()   # fit(threads=1) changes it for the process
    root, desc = dataset(ctx)
    epochs = 2 if ctx.quick else 3
    threads = 1
    names = model_names()
    results, errors = [], {}
    for name in names:
        ctx.log(f"[train] {name}: {epochs} epochs ...")
        t0 = time.time()
        try:
            r = bench_model(name, root, epochs, threads)
            results.append(r)
            ctx.log(f"[train] {name}: epoch {r['epoch_time']['median']:.1f}s "
                    f"(train {r['train_time']['median']:.1f}s, eval {r['eval_time']['median']:.1f}s)"
                    f", graph share {r['step_share_wall']['graph'] * 100:.2f}% "
                    f"[{time.time() - t0:.0f}s]")
        except Exception as err:  # a model being added elsewhere may not train yet: record it
            errors[name] = f"{type(err).__name__}: {err}"
            ctx.log(f"[train] {name}: FAILED {errors[name]}")
        finally:
            torch.set_num_threads(default_threads)
    ms = {}
    rows = []
    for r in results:
        n = r["model"]
        ms[f"{n} epoch"] = r["epoch_time"]
        ms[f"{n} epoch train part"] = r["train_time"]
        ms[f"{n} epoch eval part (valid+test)"] = r["eval_time"]
        ms[f"{n} train step"] = r["step_time"]
        sh = r["step_share_wall"]
        rows.append([n, f"{r['params'] / 1e6:.2f}M", f"{r['epoch_time']['median']:.1f}",
                     f"{r['train_time']['median']:.1f}", f"{r['eval_time']['median']:.1f}",
                     f"{r['step_time']['median']:.2f}"] +
                    [f"{sh[k] * 100:.1f}%" for k in ("graph", "forward_excl_graph", "backward",
                                                     "optimizer", "batching", "other")] +
                    [f"{r['graph_cache']['hits']}/{r['graph_cache']['hits'] + r['graph_cache']['misses']}"])
    thr = {}
    if not ctx.quick:
        ctx.log("[train] CORECT steps, 1 vs all threads, interleaved ...")
        thr = thread_comparison(root, 3, default_threads)
        ms.update(thr)
    ctx.log("[train] CORECT side by side with the official-shaped step ...")
    sbs = [corect_side_by_side(root, 1 if ctx.quick else 3, 1, ctx.log)]
    if not ctx.quick and default_threads > 1:
        sbs.append(corect_side_by_side(root, 2, default_threads, ctx.log))
    torch.set_num_threads(default_threads)
    sbs_rows = []
    for r in sbs:
        for n, c in r["cpu_s_per_epoch"].items():
            sp_c = r["speedup_vs_official_cpu"].get(n, {}).get("median", 1.0)
            sp_w = r["speedup_vs_official_wall"].get(n, {}).get("median", 1.0)
            sbs_rows.append([n, r["threads"], f"{r['params'][n]:,}", f"{c['median']:.1f}",
                             f"{r['wall_s_per_epoch'][n]['median']:.1f}", f"{sp_c:.2f}x",
                             f"{sp_w:.2f}x", f"{r['load_average']['start']} -> "
                                             f"{r['load_average']['end']}"])
            ms[f"corect side by side threads={r['threads']} {n} CPU-s per train epoch"] = c
    ctx.log("[train] CORECT component profile (module path vs fused path) ...")
    comp = corect_components(root, 2 if ctx.quick else 4, 1 if ctx.quick else 2)
    torch.set_num_threads(default_threads)
    comp_rows = [[n, f"{v['modules_ms']['median']:.0f}", f"{v['fused_ms']['median']:.0f}",
                  f"{v['modules_ms']['median'] / v['fused_ms']['median']:.2f}x"]
                 for n, v in comp.items()]
    targets = []
    fused1 = sbs[0]["speedup_vs_official_cpu"]["ours fused"]["median"]
    bf1 = sbs[0]["speedup_vs_official_cpu"]["ours fused+bf16"]["median"]
    targets.append(target("CORECT train epoch vs the official-shaped step (CPU-s, 1 thread, "
                          "fp32, same numerics)", ">= 3x", round(fused1, 2), fused1 >= 3.0,
                          "kernels=fused (default)"))
    quality = {}
    if not ctx.quick:
        ctx.log("[train] CORECT bf16 quality: fp32 vs autocast_bf16, 3 seeds ...")
        quality = corect_bf16_quality(root, epochs=6, log=ctx.log)
    targets.append(target("CORECT train epoch vs the official-shaped step (CPU-s, 1 thread, "
                          "autocast_bf16: true, val w-F1 within seed noise)", ">= 3x",
                          round(bf1, 2), bf1 >= 3.0 and quality.get("within_seed_noise", True),
                          "quality: " + (", ".join(
                              f"{k} {v['mean']:.2f} +- {v['std']:.2f}" for k, v in quality.items()
                              if k.endswith("val_wf1")) or "not run (--quick)")))
    cor = next((r for r in results if r["model"] == "corect"), None)
    if cor:
        g = cor["step_share_wall"]["graph"]
        targets.append(target("graph construction share of a CORECT training step",
                              f"<= {GRAPH_TARGET * 100:.0f}%", round(g * 100, 3), g <= GRAPH_TARGET,
                              f"{cor['step_seconds_wall']['graph'] * 1e3:.2f} ms of a "
                              f"{cor['step_time']['median']:.2f} s step (wall)"))
    notes = [f"{n}: {e}" for n, e in errors.items()]
    if thr:
        t1 = thr[f"corect train step (batch of 10) threads=1"]["median"]
        tn = thr[f"corect train step (batch of 10) threads={default_threads}"]["median"]
        notes.append(f"CORECT train step on the same batches, interleaved: {t1:.2f} s at 1 torch "
                     f"thread vs {tn:.2f} s at {default_threads} ({tn / t1:.1f}x) - on a busy "
                     f"machine OpenMP threads wait for each other; set threads to the cores a run "
                     f"really has")
    notes.append("step shares are of the summed wall time of the training part of all epochs; "
                 "'other' = loss, zero_grad, clipping, strategy hooks and loop bookkeeping; "
                 "'cache hits' counts LRU hits of the CORECT graph cache in training + evaluation "
                 "(training batches are reshuffled every epoch, so their graphs are rarely reused)")
    return {
        "description": __doc__.strip().split("\n\n")[0],
        "setup": {"data": desc, "epochs": epochs, "torch_threads": threads,
                  "process_default_threads": default_threads,
                  "config": "paper defaults (family iemocap6), early stopping off",
                  "models": names},
        "measurements": ms,
        "tables": [{"title": "Per model (medians over epochs; step shares of wall time)",
                    "columns": ["model", "params", "epoch s", "train s", "eval s", "step s",
                                "graph", "forward", "backward", "optimizer", "batching", "other",
                                "graph cache hits"],
                    "rows": rows},
                   {"title": "CORECT train epoch side by side (interleaved per step; medians "
                             "over epochs; speed-up = median of paired per-epoch ratios)",
                    "columns": ["variant", "threads", "params", "CPU-s / epoch", "wall s / epoch",
                                "speed-up CPU", "speed-up wall", "load average"],
                    "rows": sbs_rows},
                   {"title": "CORECT component profile, forward + backward CPU ms per batch of "
                             "10 (1 thread, medians)",
                    "columns": ["part", "module path", "fused path", "speed-up"],
                    "rows": comp_rows}],
        "corect_side_by_side": sbs, "corect_components": comp, "corect_bf16_quality": quality,
        "models": results, "errors": errors, "targets": targets, "notes": notes,
        "load_average": {"start": la0, "end": load_average()},
    }


def corect_bf16_quality(root: Path, seeds=(0, 1, 2), epochs: int = 6, log=print) -> dict:
    """Does ``autocast_bf16`` change what CORECT learns? ``merc.train.fit`` at the IEMOCAP-6 paper
    defaults, fp32 vs bf16, per seed: the selected (best-val) epoch's val and test w-F1, mean and
    sample std over seeds; "within seed noise" = |mean difference| <= the larger std (the rule of
    ``benchmarks.bench_backbones``)."""
    import statistics as st

    from merc.data.dataset import MercData
    from merc.train import fit, resolve_config
    rows = {"fp32": [], "bf16": []}
    for seed in seeds:
        for label, bf in (("fp32", False), ("bf16", True)):
            train, mcfg = resolve_config("corect", {"epochs": epochs, "threads": 1, "seed": seed,
                                                    "early_stopping": 0, "autocast_bf16": bf},
                                         "iemocap6", source="benchmark")
            data = MercData(root, train.modalities, train.missing_rate, train.seed,
                            train.missing_redraw)
            with Clock() as c:
                res = fit("corect", data, train, mcfg)
            rows[label].append({"seed": seed, "val_wf1": res.best["val_wf1"],
                                "test_wf1": res.best["test_wf1"], "epoch": res.best_epoch,
                                "train_s": sum(m["train_time"] for m in res.history),
                                "cpu_s": c.cpu})
            log(f"[train] bf16 quality seed {seed} {label}: val {res.best['val_wf1']:.2f} test "
                f"{res.best['test_wf1']:.2f} (epoch {res.best_epoch}, {c.cpu:.0f} CPU-s)")
    out = {"epochs": epochs, "seeds": list(seeds), "runs": rows}
    for key in ("val_wf1", "test_wf1", "train_s"):
        for label, rs in rows.items():
            v = [r[key] for r in rs]
            out[f"{label} {key}"] = {"mean": st.mean(v), "std": st.stdev(v) if len(v) > 1 else 0.0}
    d = abs(out["bf16 val_wf1"]["mean"] - out["fp32 val_wf1"]["mean"])
    out["within_seed_noise"] = d <= max(out["bf16 val_wf1"]["std"], out["fp32 val_wf1"]["std"])
    return out


def main(argv=None) -> int:
    """``python -m benchmarks.bench_train side-by-side [--epochs 3] [--threads 1,2]`` and
    ``python -m benchmarks.bench_train quality [--epochs 6] [--seeds 0,1,2]``: the CORECT parts of
    ``python -m benchmarks run --only train`` on their own, JSON to stdout (and ``--out FILE``)."""
    import argparse
    import json

    from merc.data.synthetic import resolve_data
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_train")
    p.add_argument("what", choices=["side-by-side", "quality"])
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--threads", default="1", help="comma-separated torch thread counts")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--out", default=None, help="also write the JSON here")
    a = p.parse_args(argv)
    root = resolve_data("synthetic:iemocap6")
    log = lambda s: print(s, flush=True)   # noqa: E731
    if a.what == "side-by-side":
        doc = {"command": "python -m benchmarks.bench_train " + " ".join(argv or []),
               "runs": [corect_side_by_side(root, a.epochs or 3, int(t), log)
                        for t in a.threads.split(",")]}
        for r in doc["runs"]:
            for n, c in r["cpu_s_per_epoch"].items():
                log(f"threads={r['threads']} {n:18s} CPU-s/epoch {c['median']:6.2f}  wall "
                    f"{r['wall_s_per_epoch'][n]['median']:6.2f}  speed-up CPU "
                    f"{r['speedup_vs_official_cpu'].get(n, {}).get('median', 1.0):.2f}x wall "
                    f"{r['speedup_vs_official_wall'].get(n, {}).get('median', 1.0):.2f}x")
    else:
        doc = corect_bf16_quality(root, tuple(int(s) for s in a.seeds.split(",")),
                                  a.epochs or 6, log)
        log(json.dumps({k: v for k, v in doc.items() if k != "runs"}, indent=1))
    if a.out:
        Path(a.out).write_text(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    import sys
    sys.exit(main(sys.argv[1:]))
