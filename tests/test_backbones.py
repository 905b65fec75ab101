"""SPCL's four late-fusion backbones: fusion, graph fidelity, learning on small data, SPCL end to end."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from merc.data.dataset import MercData
from merc.data.format import Dialogue, Manifest, write_dataset
from merc.metrics import classification_metrics
from merc.models import build_model
from merc.models.backbones._common import (DenseMultimodalAdjacency, angular_norm_weights,
                                           multimodal_graph)
from merc.models.backbones.dialoguegcn import AttentiveRGCNConv
from merc.train import fit, resolve_config

BACKBONES = ["dialoguegcn", "biddin", "mmgcn", "mmdfn"]
SMALL = {"hidden_size": 16, "dropout": 0.1, "epochs": 6, "lr": 3e-3, "batch_size": 8,
         "threads": 1}


@pytest.fixture(scope="module")
def small(small_dir):
    return MercData(small_dir, "ATV")


def _majority_wf1(data: MercData) -> float:
    train = data["train"].arrays.labels
    test = data["test"].arrays.labels
    major = np.bincount(train[train >= 0]).argmax()
    return classification_metrics(test, np.full_like(test, major), data.meta.num_classes)["wf1"]


@pytest.mark.parametrize("name", BACKBONES)
def test_late_fusion_sum(name, small):
    _, cfg = resolve_config(name, {"hidden_size": 8})
    torch.manual_seed(0)
    model = build_model(name, cfg, small.meta).eval()
    batch = small["valid"].batch([0, 1, 2])
    out = model(batch)
    assert set(out.modality_logits) == set(small.meta.modalities)
    total = sum(out.modality_logits.values())
    assert torch.allclose(out.logits[batch.mask], total[batch.mask], atol=1e-5)   # SPCL eq. 2


@pytest.mark.parametrize("name", BACKBONES)
def test_beats_majority_class(name, small):
    train, cfg = resolve_config(name, SMALL)
    res = fit(name, small, train, cfg)
    assert res.status == "completed", res.reason
    assert res.best["test_wf1"] > _majority_wf1(small) + 5.0, (res.best, _majority_wf1(small))


def test_spcl_with_backbone_end_to_end(small):
    train, cfg = resolve_config("mmgcn", SMALL | {"strategy": "spcl", "epochs": 4,
                                                   "spcl_epsilon": 0.6, "spcl_alpha": 1.4})
    res = fit("mmgcn", small, train, cfg)
    assert res.status == "completed", res.reason
    rates = [h["spcl_expanding_rate"] for h in res.history]
    assert all(0.0 <= r <= 1.0 for r in rates)
    assert [h["spcl_lambda"] for h in res.history] == pytest.approx([0.6 * 1.4 ** t
                                                                     for t in range(4)])
    assert {"spcl_ratio_text", "spcl_ratio_audio", "spcl_ratio_visual"} <= set(res.history[-1])
    assert np.isfinite(res.history[-1]["train_loss"])


def test_spcl_refuses_early_fusion_model(small):
    train, cfg = resolve_config("corect", {"strategy": "spcl", "epochs": 1, "hidden_size": 8,
                                           "gt_heads": 1, "text_encoder_ff": 8,
                                           "text_encoder_heads": 1, "self_att_layers": 0,
                                           "threads": 1})
    with pytest.raises(TypeError, match="modality_logits"):
        fit("corect", small, train, cfg)


def test_dense_adjacency_equals_edge_list(small):
    """MMGCN's graph in block form = the edge-list graph with angular weights + sym. norm."""
    batch = small["train"].batch([0, 3, 5])
    mask = batch.mask
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, *mask.shape, 5, generator=g) * mask[..., None]
    adj = DenseMultimodalAdjacency(x, mask)
    h = torch.randn(3, *mask.shape, 4, generator=g) * mask[..., None]
    dense = adj.propagate(h)
    nodes = torch.cat([x[k][mask] for k in range(3)])
    hn = torch.cat([h[k][mask] for k in range(3)])
    ei = multimodal_graph(batch.lengths, 3, "cpu")
    w = angular_norm_weights(nodes, ei, nodes.shape[0])
    sparse = torch.zeros_like(hn).index_add_(0, ei[1], hn[ei[0]] * w[:, None])
    assert torch.allclose(torch.cat([dense[k][mask] for k in range(3)]), sparse, atol=1e-5)


def test_attentive_rgcn_reduces_to_pyg_rgcn():
    """With unit edge weights the attention RGCN is PyG's RGCNConv(aggr='add')."""
    from torch_geometric.nn import RGCNConv
    torch.manual_seed(0)
    x = torch.randn(7, 5)
    ei = torch.tensor([[0, 1, 2, 3, 4, 5, 6, 1], [1, 2, 3, 4, 5, 6, 0, 1]])
    et = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    for bases in (2, 30):
        ours = AttentiveRGCNConv(5, 4, 4, num_bases=bases, aggr="add")
        ref = RGCNConv(5, 4, 4, num_bases=bases, aggr="add")
        ref.load_state_dict(ours.state_dict())
        assert torch.allclose(ours(x, ei, et, torch.ones(8)), ref(x, ei, et), atol=1e-5)


def test_no_dialogue_length_limit(tmp_path):
    """DialogueGCN's original attention buffer breaks past 110 utterances; ours has none."""
    rng = np.random.default_rng(0)
    dims = {"audio": 4, "text": 6, "visual": 3}
    n = 130
    d = Dialogue("long", {m: rng.normal(size=(n, k)).astype(np.float32) for m, k in dims.items()},
                 rng.integers(0, 2, n), rng.integers(0, 3, n))
    write_dataset(tmp_path, Manifest(name="long", family="iemocap6", num_classes=3,
                                     label_names=["a", "b", "c"], modalities=dims, num_speakers=2,
                                     splits={}), {"train": [d], "valid": [d], "test": [d]})
    data = MercData(tmp_path, "ATV")
    for name in BACKBONES:
        _, cfg = resolve_config(name, {"hidden_size": 8})
        out = build_model(name, cfg, data.meta).eval()(data["train"].batch([0]))
        assert out.logits.shape == (1, n, 3) and torch.isfinite(out.logits).all()


@pytest.mark.parametrize("name,kw", [("dialoguegcn", {"context_encoder": "transformer"}),
                                     ("mmgcn", {"encoder": "mmgcn", "use_speaker": True,
                                                "gcn_layers": 4}),
                                     ("mmdfn", {"encoder": "mmgcn", "use_speaker": True}),
                                     ("biddin", {"causal_attention": True})])
def test_fidelity_switches_run(name, kw, small):
    _, cfg = resolve_config(name, {"hidden_size": 8} | kw)
    model = build_model(name, cfg, small.meta)
    batch = small["train"].batch([0, 1])
    out = model(batch)
    out.logits[batch.mask].sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing
