"""The official-shaped SPCL backbone steps (benchmarks/spcl_official_shaped.py): the timing
references have exactly our parameter counts, build the released graphs, and train a step."""
from __future__ import annotations

import math

import pytest
import torch

from benchmarks.spcl_official_shaped import (big_adjacency, build, edge_perms, make_stepper,
                                             spcl_get_loss)
from merc.data.dataset import DatasetMeta, MercData
from merc.models import build_model
from merc.models.backbones._common import DenseMultimodalAdjacency
from merc.train import resolve_config

BACKBONES = ["mmgcn", "mmdfn", "dialoguegcn", "biddin"]
#: our released-size totals at a512/t768/v1024, 6 classes, 2 speakers (tests/test_backbones.py)
RELEASED_TOTAL = {"mmgcn": 34_801_698, "mmdfn": 35_759_898, "dialoguegcn": 37_801_168,
                  "biddin": 8_236_836}


def _count(m) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.fixture(scope="module")
def small(small_dir):
    return MercData(small_dir)


@pytest.mark.parametrize("name", BACKBONES)
def test_parameter_count_equals_ours(name, small):
    """Same count as our model at ``encoder: released`` on the synthetic dims, and the pinned
    released total at the SPCL dims."""
    meta = small.meta
    _, cfg = resolve_config(name, {})
    ours = build_model(name, cfg, meta)
    ref = build(name, meta.dims, meta.num_classes, meta.num_speakers)
    assert _count(ref) == _count(ours)
    big = DatasetMeta("spcl", "iemocap6", ("audio", "text", "visual"),
                      {"audio": 512, "text": 768, "visual": 1024}, 6, 2,
                      ("hap", "sad", "neu", "ang", "exc", "fru"), (1.0,) * 6, "none")
    with torch.device("meta"):
        assert _count(build(name, big.dims, 6, 2)) == RELEASED_TOTAL[name]


@pytest.mark.parametrize("name", BACKBONES)
def test_one_step_trains(name, small):
    """One official-shaped step: finite loss, every used parameter gets a gradient and moves."""
    torch.manual_seed(0)
    meta = small.meta
    ref = build(name, meta.dims, meta.num_classes, meta.num_speakers)
    batch = next(iter(small["train"].batches(4)))
    before = {k: v.detach().clone() for k, v in ref.named_parameters()}
    loss = make_stepper(ref, threshold=60.0)(batch)
    assert math.isfinite(loss) and loss > 0
    unused = {"mmgcn": {"speaker.weight"}, "mmdfn": {"speaker.weight"}, "dialoguegcn": set(),
              "biddin": {k for k in before if ".transform." in k or k.startswith("uni_fc.")}}[name]
    moved = {k for k, v in ref.named_parameters() if not torch.equal(v, before[k])}
    assert set(before) - unused <= moved
    joint, z = ref.eval().logits(batch)
    assert joint.shape == (int(batch.lengths.sum()), meta.num_classes)
    assert torch.allclose(joint, sum(z.values()), atol=1e-5)          # late fusion: a sum


def test_big_adjacency_equals_our_dense_blocks():
    """``create_big_adj`` as reproduced gives the same normalised weights as our dense blocks."""
    torch.manual_seed(0)
    lengths = [3, 5, 2]
    B, N, M, c = len(lengths), max(lengths), 3, 7
    mask = torch.arange(N)[None, :] < torch.tensor(lengths)[:, None]
    x = torch.randn(M, B, N, c) * mask[None, ..., None]
    flat = [x[k][mask] for k in range(M)]
    adj = big_adjacency(flat, lengths)
    dense = DenseMultimodalAdjacency(x, mask)
    U = sum(lengths)
    for a in range(M):
        within = torch.block_diag(*[dense.within[a, j, :n, :n] for j, n in enumerate(lengths)])
        assert torch.allclose(adj[a * U:(a + 1) * U, a * U:(a + 1) * U], within, atol=1e-5)
        for b in range(M):
            if a != b:
                assert torch.allclose(adj[a * U:(a + 1) * U, b * U:(b + 1) * U].diagonal(),
                                      dense.cross[a, b][mask], atol=1e-5)


def test_edge_perms_window_and_spcl_loss():
    assert set(edge_perms(4, 1, 2)) == {(j, k) for j in range(4)
                                        for k in range(max(0, j - 1), min(4, j + 3))}
    joint = torch.tensor([[2.0, 0.0], [0.0, 2.0], [1.0, 0.0]])
    z = {"a": joint / 2, "t": joint / 2}
    labels = torch.tensor([0, 0, 0])
    loss, ratio, kept, loss_m = spcl_get_loss(joint, z, labels, [2, 1], threshold=60.0)
    nll = torch.nn.functional.cross_entropy(joint, labels, reduction="none")
    # identical modalities: zero conversation std -> difficulty 0 -> every utterance kept
    assert int(kept) == 3 and torch.isclose(loss, nll.mean())
    assert set(loss_m) == {"a", "t"} and all(abs(float(r) - 1.0) < 1e-6 for r in ratio.values())


def test_side_by_side_harness(tiny_dir):
    """One interleaved epoch of one batch: every side timed, paired speed-ups, a target row."""
    from benchmarks.bench_backbones import OFF, section, side_by_side, variants
    r = side_by_side("mmgcn", tiny_dir, epochs=1, batches=1, log=lambda s: None)
    ours, default = variants("mmgcn")
    assert set(r["cpu_s_per_epoch"]) == {OFF} | set(ours) and default in ours
    assert len(set(r["params"].values())) == 1                      # equal parameter counts
    assert r["batches_per_epoch"] == 1 and r["batch_size"] == 16
    assert all(v["n"] == 1 and v["median"] > 0 for v in r["speedup_vs_official_cpu"].values())
    sec = section([r], "tiny")
    assert [t["target"] for t in sec["targets"]] == [">= 3x"]
    assert len(sec["tables"][0]["rows"]) == 1 + len(ours)
