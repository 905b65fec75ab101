"""Where the SPCL backbones' fused path saves (issue 13, item 2): forward + backward of single
components, ``kernels="modules"`` vs ``"fused"`` on the same batches, interleaved (the order flips
every batch), 1 torch thread, process CPU-seconds per batch (median over the batches).

Components: the three released input-width encoders of MMGCN (heads 8 / 6 / 8) and of DialogueGCN
(1 head), padded ``nn.TransformerEncoder`` vs packed; MMGCN's whole forward + backward; BiDDIN's six
DialogueRNN chains (modalities x directions), one module per chain vs
:func:`merc.models.backbones._dialoguernn.dialogue_rnns_fused`. The whole train step against the
official-shaped code is :mod:`benchmarks.bench_backbones`.

Run: ``python -m benchmarks.backbone_parts [--batches 4]`` (data: the iemocap6 synthetic preset at
the SPCL dims a512 / t768 / v1024, generated once under ``$MERC_BENCH_TMP``).
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from benchmarks.bench_backbones import dataset
from benchmarks.common import Context, load_average


def _tasks(meta):
    from merc.models import build_model
    from merc.models.backbones._dialoguernn import dialogue_rnns_fused
    from merc.models.packed import Packing
    from merc.train import resolve_config

    def build(name: str, kernels: str):
        _, cfg = resolve_config(name, {"kernels": kernels})
        torch.manual_seed(0)
        return build_model(name, cfg, meta).train()

    mm = {k: build("mmgcn", k) for k in ("modules", "fused")}
    dg = {k: build("dialoguegcn", k) for k in ("modules", "fused")}
    bd = {k: build("biddin", k) for k in ("modules", "fused")}
    mods = tuple(meta.modalities)

    def encoders(get, fused: bool):
        def run(b):
            pk = Packing(b.mask)
            if fused:
                return sum(get(m).forward_packed(pk.unpad(b.features[m]), pk, b.mask).sum()
                           for m in mods)
            return sum(get(m)(b.features[m], b.mask, b.lengths)[b.mask].sum() for m in mods)
        return run

    def rnn(model, fused: bool):
        def run(b):
            spk = b.speakers.clamp(0, 1)
            if fused:
                st = dialogue_rnns_fused([model.bimodel[m] for m in mods],
                                         [b.features[m] for m in mods], spk, b.mask, b.lengths, 2)
                return sum(f[b.mask.T].sum() + r[b.mask.T].sum() for f, r in st)
            tot = 0
            for m in mods:      # both chains on the same order: the cost, not the reversal
                u, s = b.features[m].transpose(0, 1), spk.transpose(0, 1)
                bm = model.bimodel[m]
                tot = tot + bm.rnn_f(u, s, 2)[b.mask.T].sum() + bm.rnn_r(u, s, 2)[b.mask.T].sum()
            return tot
        return run

    return {
        "MMGCN encoders (heads 8/6/8)": [encoders(lambda m, k=k: mm[k].graph.encoders[m],
                                                  k == "fused") for k in ("modules", "fused")],
        "MMGCN forward + backward": [lambda b, k=k: mm[k](b).logits[b.mask].sum()
                                     for k in ("modules", "fused")],
        "DialogueGCN encoders (1 head)": [encoders(lambda m, k=k: dg[k].branches[m].encoder,
                                                   k == "fused") for k in ("modules", "fused")],
        "BiDDIN DialogueRNN chains (6)": [rnn(bd[k], k == "fused") for k in ("modules", "fused")],
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.backbone_parts", description=__doc__)
    p.add_argument("--batches", type=int, default=4)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    from merc.data.dataset import MercData
    root, desc = dataset(Context(quick=False, out_dir=Path(".")))
    data = MercData(root)
    gen = torch.Generator().manual_seed(0)
    batches = [b for _, b in zip(range(args.batches), data["train"].batches(16, True, gen))]
    print(f"{desc}; {len(batches)} batches of 16; load {load_average()}")
    for label, (fa, fb) in _tasks(data.meta).items():
        cpu = {"modules": [], "fused": []}
        for i, b in enumerate(batches):
            for k, f in ([("modules", fa), ("fused", fb)])[:: 1 if i % 2 == 0 else -1]:
                t0 = time.process_time()
                f(b).backward()
                cpu[k].append(time.process_time() - t0)
        a, c = statistics.median(cpu["modules"]), statistics.median(cpu["fused"])
        print(f"{label:32s} modules {a:6.2f}  fused {c:6.2f}  CPU-s/batch  ratio {a / c:4.2f}")
    print(f"load {load_average()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
