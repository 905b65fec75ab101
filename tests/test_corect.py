"""CORECT: shapes, gradients, ablation switches, modality subsets, parameter count, a short fit."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from merc.config import ConfigError
from merc.data.dataset import DatasetMeta, MercData
from merc.data.format import Dialogue, Manifest, write_dataset
from merc.models import build_model, get_entry
from merc.models.corect import CorectConfig
from merc.train import TrainConfig, fit, resolve_config

DIMS = {"audio": 12, "text": 16, "visual": 10}
SMALL = dict(hidden_size=8, gt_heads=2, pcm_heads=2, self_att_heads=2, text_encoder_heads=2,
             text_encoder_ff=16, text_encoder_layers=1, pcm_layers=1, self_att_layers=1,
             window_past=2, window_future=1)


def _dialogues(rng, count, dims, num_classes=3, num_speakers=2, lengths=None):
    out = []
    for i in range(count):
        n = lengths[i] if lengths else int(rng.integers(1, 7))
        labels = rng.integers(0, num_classes, n)
        feats = {m: (rng.normal(size=(n, d)) + labels[:, None] * 0.5).astype(np.float32)
                 for m, d in dims.items()}
        out.append(Dialogue(f"d{i}", feats, rng.integers(0, num_speakers, n), labels))
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_corect")
    rng = np.random.default_rng(0)
    man = Manifest(name="tiny", family="iemocap6", num_classes=3, label_names=["a", "b", "c"],
                   modalities=DIMS, num_speakers=2, splits={})
    write_dataset(root, man, {"train": _dialogues(rng, 8, DIMS, lengths=[1, 5, 3, 6, 2, 4, 6, 5]),
                              "valid": _dialogues(rng, 3, DIMS), "test": _dialogues(rng, 3, DIMS)})
    return root


def _batch(root, modalities="ATV", missing_rate=0.0, idx=(0, 1, 2, 3)):
    data = MercData(root, modalities, missing_rate=missing_rate)
    return data, data["train"].batch(list(idx))


def _model(data, **kw):
    torch.manual_seed(0)
    return build_model("corect", CorectConfig(**(SMALL | kw)), data.meta)


def _check(out, batch, C=3):
    B, N = batch.mask.shape
    assert out.logits.shape == (B, N, C)
    assert torch.isfinite(out.logits).all()


@pytest.mark.parametrize("mods", ["T", "A", "AT", "TV", "ATV"])
def test_shapes_modality_subsets(tiny, mods):
    data, batch = _batch(tiny, mods)
    model = _model(data)
    out = model(batch)
    _check(out, batch)
    model.eval()
    _check(model(batch), batch)


def test_every_parameter_gets_a_gradient(tiny):
    data, batch = _batch(tiny, "ATV", idx=(1, 3, 5, 7))   # lengths >= 2: every relation present
    model = _model(data)
    model.train()
    out = model(batch)
    out.logits[batch.mask].sum().backward()
    missing = [n for n, p in model.named_parameters()
               if p.grad is None or not torch.isfinite(p.grad).all() or p.grad.abs().sum() == 0]
    assert not missing, missing


def test_length_one_dialogue(tiny):
    for mods in ("T", "ATV"):
        data, batch = _batch(tiny, mods, idx=(0,))   # the train dialogue of length 1
        assert batch.lengths.tolist() == [1]
        model = _model(data)
        model.train()
        out = model(batch)
        _check(out, batch)
        out.logits.sum().backward()
        model.eval()
        _check(model(batch), batch)


@pytest.mark.parametrize("switch", [dict(use_rtgcn=False), dict(use_pcm=False),
                                    dict(use_multi_relations=False),
                                    dict(use_temporal_relations=False), dict(use_speaker=False),
                                    dict(use_rtgcn=False, use_pcm=False),
                                    dict(window_semantics="reference"),
                                    dict(window_past=-1, window_future=0),
                                    dict(speaker_ratio=0.3)])
def test_ablation_switches(tiny, switch):
    data, batch = _batch(tiny, "ATV")
    model = _model(data, **switch)
    out = model(batch)
    _check(out, batch)
    out.logits[batch.mask].sum().backward()
    if switch.get("use_rtgcn") is False:
        assert not hasattr(model, "rgcn")
    if switch.get("use_pcm") is False:
        assert model.pcm is None
    if switch.get("use_speaker") is False:
        assert model.speaker is None
    if switch.get("use_multi_relations") is False:
        assert model.num_relations == 9
    if switch.get("use_temporal_relations") is False:
        assert model.num_relations == 9     # 3 self + 6 cross


def test_missing_modalities(tiny):
    data, batch = _batch(tiny, "ATV", missing_rate=0.5)
    assert not batch.present[batch.mask].all()
    model = _model(data)
    _check(model(batch), batch)
    # a dialogue whose text is missing everywhere still attends somewhere (no NaN)
    batch.present[0, :, 1] = False
    batch.features["text"][0] = 0
    _check(model(batch), batch)


def test_padding_does_not_change_outputs(tiny):
    data, batch = _batch(tiny, "ATV", idx=(2,))
    _, big = _batch(tiny, "ATV", idx=(2, 3))         # dialogue 2 padded to 6 in a bigger batch
    model = _model(data)
    model.eval()
    a = model(batch).logits[0, :3]
    b = model(big).logits[0, :3]
    assert torch.allclose(a, b, atol=1e-5)


def test_config_and_registry():
    entry = get_entry("corect")
    assert entry.config_cls is CorectConfig
    overlap = set(CorectConfig.model_fields) & set(TrainConfig.model_fields)
    assert not overlap
    t, m = resolve_config("corect", {}, "iemocap6")
    assert (t.lr, t.batch_size, m.window_past, m.window_future, m.gt_heads, m.pcm_heads,
            m.dropout) == (3e-4, 10, 11, 9, 7, 2, 0.5)
    t, m = resolve_config("corect", {}, "mosei")
    assert (t.lr, m.window_past, m.window_future) == (6e-4, 5, 4)
    t, m = resolve_config("corect", {}, "iemocap4")
    assert t.lr == 3e-4
    with pytest.raises(ConfigError):
        resolve_config("corect", {"window_semantics": "bogus"})
    with pytest.raises(ConfigError):
        resolve_config("corect", {"window_past": -3})


def test_param_count_iemocap6_defaults(capsys):
    meta = DatasetMeta("iemocap6", "iemocap6", ("audio", "text", "visual"),
                       {"audio": 100, "text": 768, "visual": 512}, 6, 2, tuple("abcdef"),
                       (1.0,) * 6, "x")
    _, cfg = resolve_config("corect", {}, "iemocap6")
    model = build_model("corect", cfg, meta)
    n = sum(p.numel() for p in model.parameters())
    parts = {name: sum(p.numel() for p in mod.parameters())
             for name, mod in model.named_children()}
    with capsys.disabled():
        print(f"\nCORECT parameters at IEMOCAP-6 defaults (a100 t768 v512, 6 classes): {n:,} "
              f"{parts}")
    assert model.num_relations == 15
    assert model.fc.in_features == 3 * 7 * 100 + 6 * 100
    assert n == 17_703_074          # the official count minus its unused layers (issue 13)


def test_short_fit_end_to_end(tiny):
    train, mcfg = resolve_config("corect", SMALL | {"epochs": 2, "batch_size": 4, "lr": 1e-3,
                                                    "modalities": "ATV", "threads": 1}, "iemocap6")
    data = MercData(tiny, train.modalities)
    res = fit("corect", data, train, mcfg)
    assert res.status == "completed", res.reason
    assert len(res.history) == 2
    assert np.isfinite(res.history[-1]["train_loss"])
    assert res.best_epoch >= 1 and res.num_params > 0


def _twins(data, **kw):
    """The same weights under kernels="modules" and kernels="fused" (dropout off)."""
    torch.manual_seed(0)
    ref = build_model("corect", CorectConfig(**(SMALL | kw | dict(kernels="modules", dropout=0.0))),
                      data.meta)
    fused = build_model("corect", CorectConfig(**(SMALL | kw | dict(kernels="fused", dropout=0.0))),
                        data.meta)
    fused.load_state_dict(ref.state_dict())
    return ref, fused


@pytest.mark.parametrize("mods,missing,idx,switch", [
    ("ATV", 0.0, (0, 1, 2, 3), {}),
    ("ATV", 0.5, (1, 3, 5, 7), {}),
    ("ATV", 0.0, (0, 6, 4), dict(window_semantics="reference")),
    ("ATV", 0.0, (1, 3, 6), dict(window_semantics="reference", window_future=0,
                                 use_multi_relations=False)),
    ("ATV", 0.0, (1, 3), dict(use_temporal_relations=False)),
    ("AT", 0.0, (1, 3, 6), dict(window_past=-1, window_future=-1)),
    ("TV", 0.3, (2, 5), dict(use_pcm=False, use_speaker=False)),
    ("T", 0.0, (0, 3), {}),
    ("ATV", 0.0, (0,), {}),
])
def test_fused_kernels_equal_modules(tiny, mods, missing, idx, switch, assert_twins_agree):
    """The default fused path is the module path up to float rounding: logits on real utterances
    and every parameter gradient (training mode, BatchNorm batch statistics), to 1e-5."""
    data, batch = _batch(tiny, mods, missing_rate=missing, idx=idx)
    ref, fused = _twins(data, **switch)
    grads = []
    for model in (ref, fused):
        model.train()
        out = model(batch).logits
        (out[batch.mask] * torch.linspace(-1, 1, out.shape[-1])).sum().backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
        model.eval()
        grads[-1]["eval logits"] = model(batch).logits[batch.mask].detach()
        grads[-1]["train logits"] = out[batch.mask].detach()
    assert_twins_agree(*grads)


def test_fused_build_has_pygs_parameters_without_pyg(tiny):
    """kernels="fused" holds RGCNConv / TransformerConv's parameters in merc.models.pyg_layout: the
    same names, order and values as PyG's modules for the same seed (so checkpoints, optimizer
    state and the random stream after the build are unchanged), and its module path runs PyG."""
    data, batch = _batch(tiny, "ATV", idx=(0, 1, 2, 3))
    models, after = [], []
    for kernels in ("modules", "fused"):
        torch.manual_seed(7)
        models.append(build_model("corect", CorectConfig(**(SMALL | dict(kernels=kernels,
                                                                          dropout=0.0))),
                                  data.meta))
        after.append(torch.rand(4))
    ref, fused = models
    assert type(fused.rgcn).__module__ == "merc.models.pyg_layout"
    assert type(ref.rgcn).__module__.startswith("torch_geometric")
    assert [n for n, _ in ref.named_parameters()] == [n for n, _ in fused.named_parameters()]
    for (n, p), q in zip(ref.named_parameters(), fused.parameters()):
        assert torch.equal(p, q), n
    assert torch.equal(*after)
    from merc.models.kernels import module_path
    ref.eval(), fused.eval()
    with module_path():          # the fused model's own module path: PyG's forward, its weights
        assert torch.equal(ref(batch).logits, fused(batch).logits)


def test_fused_fit_does_not_import_pyg(tiny):
    code = ("import sys; from merc.train import fit, resolve_config; "
            "from merc.data.dataset import MercData; "
            f"t, m = resolve_config('corect', {{**{SMALL!r}, 'epochs': 1, 'batch_size': 4, "
            "'threads': 1}, 'iemocap6'); "
            f"fit('corect', MercData({str(tiny)!r}, t.modalities), t, m); "
            "print(sorted(k for k in sys.modules if k.split('.')[0] in "
            "('torch_geometric', 'sklearn', 'scipy')))")
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_fused_kernels_padding_invariant(tiny):
    data, batch = _batch(tiny, "ATV", idx=(2,))
    _, big = _batch(tiny, "ATV", idx=(2, 3, 5))
    model = _model(data)
    assert model.config.kernels == "fused"
    model.eval()
    assert torch.allclose(model(batch).logits[0, :3], model(big).logits[0, :3], atol=1e-5)


def test_autocast_bf16_trains(tiny):
    data, batch = _batch(tiny, "ATV")
    model = _model(data, autocast_bf16=True)
    out = model(batch)
    assert out.logits.dtype == torch.float32
    _check(out, batch)
    out.logits[batch.mask].sum().backward()
    assert all(p.grad is None or p.grad.dtype == torch.float32 for p in model.parameters())


def test_official_shaped_benchmark_step_has_our_parameter_count(tiny):
    """The speed reference of ``python -m benchmarks run --only train`` is the same size as ours."""
    from benchmarks.corect_official_shaped import OfficialShapedCorect
    off = OfficialShapedCorect({"audio": 100, "text": 768, "visual": 512}, 6)
    assert sum(p.numel() for p in off.parameters()) == 17_703_074
    data, batch = _batch(tiny, "ATV")
    torch.manual_seed(0)
    small = OfficialShapedCorect(dict(data.meta.dims), data.meta.num_classes, hidden=8,
                                 window=(2, 1), gt_heads=2)
    loss = small.loss(batch)
    loss.backward()
    assert torch.isfinite(loss) and small.lin1.weight.grad is not None


def test_fused_dropout_paths_reduce_to_modules_at_negligible_rate(tiny):
    """With dropout > 0 the fused path writes attention out and draws its own dropout masks
    (``merc.models.kernels.dropout``); at a negligible rate that must still be the module path, in
    training mode, for the text encoder, P-CM (two layers each) and the classifier."""
    data, batch = _batch(tiny, "ATV", idx=(0, 1, 2))
    kw = SMALL | dict(dropout=1e-9, pcm_dropout=1e-9, pcm_layers=2, self_att_layers=2,
                      text_encoder_layers=2)
    torch.manual_seed(0)
    ref = build_model("corect", CorectConfig(**(kw | dict(kernels="modules"))), data.meta).train()
    fused = build_model("corect", CorectConfig(**(kw | dict(kernels="fused"))), data.meta).train()
    fused.load_state_dict(ref.state_dict())
    a, b = ref(batch).logits[batch.mask], fused(batch).logits[batch.mask]
    assert torch.allclose(a, b, atol=1e-5), float((a - b).abs().max())


def test_fused_dropout_has_dropouts_distribution():
    from merc.models.kernels import dropout
    torch.manual_seed(0)
    x = torch.ones(1000, 1000, requires_grad=True)
    for p in (0.1, 0.5):
        y = dropout(x, p, True)
        assert abs(float((y == 0).float().mean()) - p) < 3e-3
        assert torch.allclose(y[y != 0], torch.tensor(1.0 / (1.0 - p)))
        assert abs(float(y.detach().mean()) - 1.0) < 5e-3
    # four elements share one 64-bit draw: neighbours must still drop independently
    d = (dropout(torch.ones(4_000_000), 0.5, True) == 0).view(-1, 4).float()
    for i, j in ((0, 1), (1, 2), (2, 3), (0, 3)):
        assert abs(float((d[:, i] * d[:, j]).mean()) - 0.25) < 2e-3
    y = dropout(x, 0.3, True)
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())                 # the gradient goes through the same mask
    assert dropout(x, 0.5, False) is x and dropout(x, 0.0, True) is x


def test_bf16_attention_close_to_fp32(tiny):
    """``autocast_bf16`` runs the attention matmuls in bf16 (softmax fp32): logits stay close."""
    data, batch = _batch(tiny, "ATV")
    torch.manual_seed(0)
    lo = _model(data, autocast_bf16=True).eval()
    hi = _model(data).eval()
    hi.load_state_dict(lo.state_dict())
    with torch.no_grad():
        a, b = lo(batch).logits[batch.mask], hi(batch).logits[batch.mask]
    assert not torch.equal(a, b)
    assert torch.allclose(a, b, atol=0.05 * float(b.abs().max()) + 1e-3)


@pytest.mark.parametrize("G,d,heads,partial", [(1, 16, 2, False), (3, 12, 3, True)])
def test_dialogue_attention_equals_padded(G, d, heads, partial):
    """Training attention per dialogue (no padding) = the padded masked product: outputs and the
    gradient of qkv, with and without keys masked out (missing modalities)."""
    from merc.models.packed import Packing, dialogue_attention, padded_attention
    torch.manual_seed(0)
    lengths = torch.tensor([5, 1, 9, 3])
    mask = torch.arange(9)[None] < lengths[:, None]
    pk = Packing(mask)
    key_mask = mask.expand(G, *mask.shape).clone()
    if partial:
        key_mask &= torch.rand(key_mask.shape) > 0.4
        key_mask[:, :, 0] |= mask[:, 0]                 # every dialogue keeps a key
    qkv = torch.randn(G, pk.U, 3 * d, dtype=torch.float64)
    w = torch.randn(G, pk.U, d, dtype=torch.float64)
    outs = []
    for f in (dialogue_attention, padded_attention):
        x = qkv.clone().requires_grad_()
        y = f(x, pk, key_mask, heads, 0.0)
        (y * w).sum().backward()
        outs.append((y.detach(), x.grad))
    assert torch.allclose(outs[0][0].double(), outs[1][0].double(), atol=1e-5)
    assert torch.allclose(outs[0][1].double(), outs[1][1].double(), atol=1e-5)
