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
         "threads": 1, "encoder": "light"}
#: parameters the released networks create and never use (no gradient), as released
UNUSED = {"mmgcn": {"graph.speaker.weight"}, "mmdfn": {"graph.speaker.weight"},
          "dialoguegcn": set(),
          "biddin": {f"bimodel.{m}.transform.weight" for m in ("audio", "text", "visual")}
          | {f"uni_fc.{m}.{p}" for m in ("audio", "text", "visual") for p in ("weight", "bias")}}


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


#: the released structures at small widths (input-width encoders with a small FFN)
RELEASED_SMALL = {"mmgcn": {"encoder_ff": 16}, "mmdfn": {"encoder_ff": 16},
                  "dialoguegcn": {"encoder_ff": 16, "hidden2_size": 6},
                  "biddin": {"party_size": 6, "emotion_size": 4, "classifier_size": 4}}


@pytest.mark.parametrize("name,kw", [("dialoguegcn", {"encoder": "light",
                                                      "context_encoder": "transformer"}),
                                     ("mmgcn", {"encoder": "mmgcn", "use_speaker": True,
                                                "gcn_layers": 4}),
                                     ("mmdfn", {"encoder": "mmgcn", "use_speaker": True}),
                                     ("biddin", {"encoder": "light", "causal_attention": True})]
                         + [(n, {"encoder": "released"} | RELEASED_SMALL[n]) for n in BACKBONES])
def test_fidelity_switches_run(name, kw, small):
    """Every parameter gets a gradient, except those the release creates and never uses."""
    _, cfg = resolve_config(name, {"hidden_size": 8} | kw)
    model = build_model(name, cfg, small.meta)
    batch = small["train"].batch([0, 1])
    out = model(batch)
    out.logits[batch.mask].sum().backward()
    missing = {n for n, p in model.named_parameters() if p.grad is None}
    assert missing == (UNUSED[name] if cfg.encoder == "released" else set()), missing
    assert model.unused_parameters() == missing


# ---- the released networks' sizes (SPCL code at its defaults: batch 16, a512 / t768 / v1024,
# hidden 200 (DialogueGCN hidden2 150; BiDDIN 200 / 150 / 100 / 100), 6 classes, 2 speakers) ----

DIMS = {"audio": 512, "text": 768, "visual": 1024}
RELEASED_TOTAL = {"mmgcn": 34_801_698, "mmdfn": 35_759_898, "dialoguegcn": 37_801_168,
                  "biddin": 8_236_836}


def _lin(i: int, o: int, bias: bool = True) -> int:
    return i * o + (o if bias else 0)


def _gru_cell(i: int, h: int) -> int:
    return 3 * h * (i + h) + 6 * h


def _released_encoder(d: int, hidden: int = 200, ff: int = 2048, layers: int = 2) -> int:
    """``Transformer_Encoder`` / ``SeqContext``: layers x TransformerEncoderLayer(d, FFN ff) +
    Linear(d, hidden): self-attention 4d^2 + 4d, FFN 2 d ff + ff + d, two LayerNorms 4d."""
    return layers * (4 * d * d + 4 * d + 2 * d * ff + ff + d + 4 * d) + _lin(d, hidden)


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def released_meta():
    from merc.data.dataset import DatasetMeta
    return DatasetMeta("spcl-released", "iemocap6", ("audio", "text", "visual"), DIMS, 6, 2,
                       ("hap", "sad", "neu", "ang", "exc", "fru"), (1.0,) * 6, "none")


@pytest.mark.parametrize("name", BACKBONES)
def test_released_parameter_counts(name, released_meta):
    """Total and per-module parameter counts equal the released SPCL code's at its defaults."""
    _, cfg = resolve_config(name, {})
    assert cfg.encoder == "released"
    model = build_model(name, cfg, released_meta)
    assert _count(model) == RELEASED_TOTAL[name]
    h, C = 200, 6
    if name in ("mmgcn", "mmdfn"):
        for m, d in DIMS.items():                                   # modality_encoder[m]
            assert _count(model.graph.encoders[m]) == _released_encoder(d)
        assert _count(model.graph.speaker) == 2 * h                 # speaker_embeddings
        assert _count(model.fc_in) + _count(model.convs) == _lin(h, h) + 2 * 2 * h * h  # graph_net
        if name == "mmgcn":
            assert all(_count(model.heads[m]) == _lin(2 * h, C) for m in DIMS)       # uni_fc
        else:
            assert _count(model.gated) == 3 * _lin(2 * h, h) + 6 * _lin(3 * h, h)  # gated att.
            assert all(_count(model.heads[m]) == _lin(h, C) for m in DIMS)           # uni_fc
    elif name == "dialoguegcn":
        h2, R = 150, 8
        for m, d in DIMS.items():
            br = model.branches[m]
            assert _count(br.encoder) == _released_encoder(d)                       # SeqContext
            assert br.edge_att.numel() == h * h                                      # EdgeAtt
            assert _count(br.rgcn) == 30 * h * h2 + R * 30 + h * h2 + h2             # RGCNConv
            assert _count(br.gconv) == _lin(h2, h2) + h2 * h2                       # GraphConv
            assert _count(br.lin1) + _count(br.lin2) == _lin(h + h2, h2) + _lin(h2, C)
    else:
        g, p, e, dh = 200, 150, 100, 100
        for m, d in DIMS.items():
            bm = model.bimodel[m]
            cell = _gru_cell(d + p, g) + _gru_cell(d + g, p) + _gru_cell(p, e) + g
            assert _count(bm.rnn_f) == _count(bm.rnn_r) == cell                     # DialogueRNN
            assert sum(_count(x) for x in (bm.transform, bm.w_q, bm.w_k, bm.w_v, bm.fc)) \
                == 5 * (2 * e) ** 2                                                  # MultiHeadAtt.
            assert _count(bm.linear) + _count(bm.smax_fc) == _lin(2 * e, 2 * dh) + _lin(2 * dh, C)
            assert _count(model.uni_fc[m]) == _lin(dh, C)                           # unused uni_fc


@pytest.mark.parametrize("name", BACKBONES)
def test_light_option_is_the_previous_structure(name, released_meta):
    """``encoder: light`` keeps the lighter networks (their sizes before the released default)."""
    _, cfg = resolve_config(name, {"encoder": "light"})
    light = {"mmgcn": 1_555_418, "mmdfn": 2_037_818, "dialoguegcn": 5_892_138,
             "biddin": 2_050_818}
    assert _count(build_model(name, cfg, released_meta)) == light[name]


def test_dialoguegcn_relations_and_window_as_released():
    """Edges j -> k for k in [j - wp, j + wf]; type 2 (S s_j + s_k) + [j >= k] (self loop: 1)."""
    from merc.models.backbones._common import cached_window_edges, speaker_relation_types
    ei = cached_window_edges(torch.tensor([4]), 2, 1, "cpu")        # released wp=1, wf=2 swapped
    got = {(int(j), int(k)) for j, k in ei.t()}
    want = {(j, k) for j in range(4) for k in range(max(0, j - 1), min(4, j + 3))}
    assert got == want
    spk = torch.tensor([0, 1, 1, 0])
    types = speaker_relation_types(ei, spk, 2)
    for (j, k), t in zip(ei.t().tolist(), types.tolist()):
        assert t == 2 * (2 * int(spk[j]) + int(spk[k])) + int(j >= k)
