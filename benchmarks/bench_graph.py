"""Graph construction: merc.graphs.corect_graph (vectorised, LRU-cached) against the reference
repositories' per-edge Python loop, on batches of 10 IEMOCAP-length dialogues.

The loop is the pattern of the official CORECT code (``batch_graphify`` / ``edge_perms``): for
each dialogue, for each utterance j, for each neighbour in the window, append the edge and its
relation for every modality, then the cross-modal edges of j; convert the lists to tensors at the
end. Both produce the paper-semantics relational graph (15 relation types for A/T/V); the
benchmark asserts that the (source, target, relation) triples are identical for every batch and
window before timing anything.

Per batch and window the three variants run interleaved (loop, cold, warm, loop, cold, ...):
cold = ``merc.graphs.clear_cache()`` right before the call, warm = the same call again (an LRU hit).
"""
from __future__ import annotations

from itertools import permutations

import torch

from benchmarks.common import Clock, Context, load_average, ratio_summary, summary, target

WINDOWS = [(1, 1), (4, 4), (11, 9), (15, 15), (-1, -1)]
M = 3


def reference_graph(lengths: list[int], num_modalities: int, past: int, future: int
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-edge Python loop of the reference repos, paper window rule (see module doc)."""
    U = sum(lengths)
    pairs = list(permutations(range(num_modalities), 2))
    src, dst, typ = [], [], []
    offset = 0
    for n in lengths:
        P = n if past == -1 else past
        F = n if future == -1 else future
        for j in range(n):                                   # receiving utterance
            for k in range(max(0, j - P), min(n, j + F + 1)):  # neighbour in the window
                kind = 0 if k < j else (1 if k > j else 2)   # past / future / self
                for m in range(num_modalities):
                    src.append(m * U + offset + k)
                    dst.append(m * U + offset + j)
                    typ.append(kind * num_modalities + m)
            for p, (a, b) in enumerate(pairs):               # cross-modal, same utterance
                src.append(a * U + offset + j)
                dst.append(b * U + offset + j)
                typ.append(3 * num_modalities + p)
        offset += n
    edge_index = torch.tensor([src, dst], dtype=torch.long)
    edge_type = torch.tensor(typ, dtype=torch.long)
    return edge_index, edge_type


def _triples(edge_index: torch.Tensor, edge_type: torch.Tensor) -> set:
    return set(zip(edge_index[0].tolist(), edge_index[1].tolist(), edge_type.tolist()))


def iemocap_batches(num: int, size: int = 10) -> list[list[int]]:
    """Dialogue lengths of the synthetic IEMOCAP-shaped train split, in batches of ``size``."""
    from merc.data.dataset import MercData
    from merc.data.synthetic import resolve_data
    lens = [int(x) for x in MercData(resolve_data("synthetic:iemocap6"))["train"].lengths]
    return [lens[i:i + size] for i in range(0, len(lens) - size + 1, size)][:num]


def run(ctx: Context) -> dict:
    from merc import graphs
    la0 = load_average()
    nb, reps = (3, 2) if ctx.quick else (10, 5)
    windows = WINDOWS[:4] if ctx.quick else WINDOWS
    batches = iemocap_batches(nb)
    # correctness first: identical edge sets (as triples) and no duplicate edges
    for (p, f) in windows:
        for lens in batches:
            g = graphs.corect_graph(torch.tensor(lens), M, p, f)
            ei, et = reference_graph(lens, M, p, f)
            a, b = _triples(g.edge_index, g.edge_type), _triples(ei, et)
            assert a == b, f"edge sets differ for window {(p, f)}, lengths {lens}"
            assert len(a) == g.edge_index.shape[1] == ei.shape[1], "duplicate edges"
    graphs.clear_cache()
    default_threads = torch.get_num_threads()
    thread_opts = sorted({1, default_threads})
    ms, rows, ratios_cold, ratios_warm = {}, [], {}, {}
    for (p, f) in windows:
        key = f"[{p},{f}]"
        t = {(th, v): [] for th in thread_opts for v in ("loop", "cold", "warm")}
        edges = []
        for _ in range(reps):
            for lens in batches:
                lt = torch.tensor(lens)
                for th in thread_opts:              # interleaved: thread counts and variants
                    torch.set_num_threads(th)
                    with Clock() as c:
                        reference_graph(lens, M, p, f)
                    t[th, "loop"].append(c.wall)
                    graphs.clear_cache()
                    with Clock() as c:
                        g = graphs.corect_graph(lt, M, p, f)
                    t[th, "cold"].append(c.wall)
                    with Clock() as c:
                        graphs.corect_graph(lt, M, p, f)
                    t[th, "warm"].append(c.wall)
                edges.append(g.edge_index.shape[1])
        torch.set_num_threads(default_threads)
        for th in thread_opts:
            sfx = f" {key} threads={th}"
            ms["loop" + sfx] = summary(t[th, "loop"])
            ms["vectorised cold" + sfx] = summary(t[th, "cold"])
            ms["vectorised warm" + sfx] = summary(t[th, "warm"])
            rc = ms["speed-up cold" + sfx] = ratio_summary(t[th, "loop"], t[th, "cold"])
            rw = ms["speed-up warm" + sfx] = ratio_summary(t[th, "loop"], t[th, "warm"])
            ratios_cold[f"{key} threads={th}"] = rc["median"]
            ratios_warm[f"{key} threads={th}"] = rw["median"]
            rows.append([key, th, f"{sum(edges) / len(edges):.0f}",
                         f"{ms['loop' + sfx]['median'] * 1e3:.2f}",
                         f"{ms['vectorised cold' + sfx]['median'] * 1e3:.3f}",
                         f"{ms['vectorised warm' + sfx]['median'] * 1e3:.4f}",
                         f"{rc['median']:.1f}x", f"{rw['median']:.0f}x"])
    utt = [sum(b) for b in batches]
    worst_cold = min(v for k, v in ratios_cold.items() if k.endswith("threads=1"))
    return {
        "description": __doc__.strip().split("\n\n")[0],
        "setup": {"batches": f"{len(batches)} batches of 10 synthetic IEMOCAP-6 train dialogues "
                             f"({min(utt)}-{max(utt)} utterances each)",
                  "modalities": M, "semantics": "paper", "windows": [list(w) for w in windows],
                  "repeats": reps, "torch_threads": thread_opts,
                  "order": "interleaved per batch: for each thread count loop, cold, warm",
                  "identical_edge_sets": "asserted for every batch and window"},
        "measurements": ms,
        "tables": [{"title": "Per batch of 10 dialogues (medians, wall time; speed-up = median "
                             "of paired loop/vectorised ratios)",
                    "columns": ["window [P,F]", "torch threads", "edges", "loop ms", "cold ms", "warm ms",
                                "speed-up cold", "speed-up warm"], "rows": rows}],
        "targets": [target("vectorised builder faster than the loop", "cold speed-up > 1 at "
                           "every window (1 torch thread, as in a sweep trial)", worst_cold, worst_cold > 1)],
        "summary": {"speedup_cold": ratios_cold, "speedup_warm": ratios_warm},
        "load_average": {"start": la0, "end": load_average()},
    }
