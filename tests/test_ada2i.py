"""Ada2I: shapes, masks, AFW's tensor-ring fusion and AMW vs naive loops, the eq. 18 modulation
vs a naive loop, parameter counts pinned to the released network, learning on small data."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from merc.config import ConfigError
from merc.data.dataset import DatasetMeta, MercData
from merc.metrics import majority_wf1
from merc.models import build_model, get_entry
from merc.models.ada2i import (Ada2IConfig, AFWLayer, auto_heads, khatri_rao, masked_mean,
                               tensor_ring_contract)
from merc.models.base import Output
from merc.strategies import build_strategy
from merc.strategies.ada2i import (Ada2IStrategy, Ada2IStrategyConfig, discrepancy,
                                   modulation_coefficients)
from merc.train import TrainConfig, fit, resolve_config

SMALL = dict(hidden_size=8, encoder_ff=16, encoder_layers=1, tensor_rank=3, dropout=0.0)


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return MercData(tiny_dir, "ATV")


def _model(data, **kw):
    torch.manual_seed(0)
    return build_model("ada2i", Ada2IConfig(**(SMALL | kw)), data.meta)


# ---- model ----------------------------------------------------------------------------------

@pytest.mark.parametrize("mods", ["T", "AV", "ATV"])
def test_shapes_and_outputs(tiny_dir, mods):
    data = MercData(tiny_dir, mods)
    model = _model(data)
    batch = data["train"].batch([0, 1, 2])
    out = model(batch)
    B, N = batch.mask.shape
    C = data.meta.num_classes
    assert out.logits.shape == (B, N, C) and torch.isfinite(out.logits).all()
    assert tuple(out.modality_logits) == data.meta.modalities
    assert set(out.extras) == {f"linear_logits_{m}" for m in data.meta.modalities}
    assert all(z.shape == (B, N, C) and not z.requires_grad for z in out.extras.values())
    assert out.aux_loss is not None and out.aux_loss.dim() == 0 and float(out.aux_loss.detach()) > 0
    model.eval()
    assert model(batch).aux_loss is None              # eqs. (11)-(12) only in training, released


@pytest.mark.parametrize("amw", [True, False])
def test_modality_logits_sum_to_joint(tiny, amw):
    model = _model(tiny, use_amw=amw).eval()
    batch = tiny["valid"].batch([0, 1])
    out = model(batch)
    total = sum(out.modality_logits.values())
    assert torch.allclose(out.logits, total, atol=1e-6)
    lin = torch.stack([out.extras[f"linear_logits_{m}"] for m in tiny.meta.modalities]).sum(0)
    if not amw:   # w/o AMW: concat + Linear (released), its per-modality slices = the extras
        assert torch.allclose(out.logits, lin, atol=1e-5)


def test_amw_eq8_against_naive_loop(tiny):
    """Eq. (8) per modality: sum_h z_h/||z|| * W[c,h]/||W[:,h]|| + b_c/M (released normalisation
    of W_m^T along dim 1), and with amw_weight_norm=class: cos(z, W[c,:]) + b_c/M."""
    batch = tiny["valid"].batch([0])
    for norm in ("feature", "class"):
        model = _model(tiny, use_afw=False, amw_weight_norm=norm).eval()
        with torch.no_grad():
            out = model(batch)
        W, b, H, M = model.fc.weight.detach(), model.fc.bias.detach(), 8, 3
        for j, m in enumerate(tiny.meta.modalities):
            enc = model.encoders[m]
            keep = model._keys(batch)[..., j]
            with torch.no_grad():
                z = enc["out"](enc["transformer"](batch.features[m],
                                                  src_key_padding_mask=~keep))[0]
            Wm = W[:, j * H:(j + 1) * H]
            for n in range(int(batch.lengths[0])):
                zn = z[n] / math.sqrt(sum(float(v) ** 2 for v in z[n]))
                for c in range(W.shape[0]):
                    if norm == "feature":
                        want = sum(float(zn[h]) * float(Wm[c, h]) /
                                   math.sqrt(sum(float(Wm[k, h]) ** 2 for k in range(W.shape[0])))
                                   for h in range(H))
                    else:
                        want = sum(float(zn[h]) * float(Wm[c, h]) for h in range(H)) / \
                            math.sqrt(sum(float(Wm[c, h]) ** 2 for h in range(H)))
                    got = float(out.modality_logits[m][0, n, c])
                    assert got == pytest.approx(want + float(b[c]) / M, abs=1e-5)


def test_tensor_ring_contraction_against_naive_loop():
    """Eq. (5) Khatri-Rao and the Eq. (6) contraction Theta^j x A^(l) x A^(l') by explicit sums."""
    g = torch.Generator().manual_seed(0)
    B, N, r, M = 2, 3, 4, 3
    u, v = torch.randn(B, N, r, generator=g), torch.randn(B, N, r, generator=g)
    kr = khatri_rao(u, v)
    for b in range(B):
        for n in range(N):
            for i in range(r):
                for k in range(r):
                    assert float(kr[b, n, i, k]) == pytest.approx(float(u[b, n, i] * v[b, n, k]))
    cores = [torch.randn(B, N, r, r, generator=g) for _ in range(M)]
    pooled = [torch.randn(B, r, r, generator=g) for _ in range(M)]
    got = tensor_ring_contract(cores, pooled)
    for j in range(M):
        others = [l for l in range(M) if l != j]
        for b in range(B):
            for n in range(N):
                cur = [[float(cores[j][b, n, i, k]) for k in range(r)] for i in range(r)]
                for l in others:                     # released einsum 'ijkl,ilo->ijko', in order
                    cur = [[sum(cur[i][k] * float(pooled[l][b, k, o]) for k in range(r))
                            for o in range(r)] for i in range(r)]
                assert torch.allclose(got[j][b, n], torch.tensor(cur), atol=1e-4)
    # the einsum of the released code gives the same
    ein = cores[0]
    for l in (1, 2):
        ein = torch.einsum("btkl,blo->btko", ein, pooled[l])
    assert torch.allclose(got[0], ein, atol=1e-5)


def test_afw_layer_against_naive_loop():
    """One AFW layer (eqs. 4-7, 11-12) recomputed utterance by utterance with masked pooling."""
    torch.manual_seed(0)
    cfg = Ada2IConfig(**(SMALL | {"afw_beta": 0.3}))
    layer = AFWLayer(2, 8, cfg).train()
    B, N, H, r = 2, 4, 8, 3
    zs = [torch.randn(B, N, H) for _ in range(2)]
    mask = torch.tensor([[True, True, True, False], [True, True, False, False]])
    keep = mask[..., None].expand(B, N, 2).clone()
    keep[0, 1, 1] = False                              # a missing entry is not pooled
    outs, loss = layer(zs, keep, mask)
    thetas = [[[None] * N for _ in range(B)] for _ in range(2)]
    for j in range(2):
        for b in range(B):
            for n in range(N):
                z = zs[j][b, n]
                gq = torch.outer(layer.q1[j](z), layer.q2[j](z))
                gk = torch.outer(layer.k1[j](z), layer.k2[j](z))
                thetas[j][b][n] = gq * gk
    l1, count = 0.0, 0
    for j in range(2):
        o = 1 - j
        for b in range(B):
            rows = [n for n in range(N) if keep[b, n, o]]
            A = sum(thetas[o][b][n] for n in rows) / len(rows)
            for n in range(N):
                att = layer.lin_att[j]((thetas[j][b][n] @ A).reshape(r * r))
                want = att * zs[j][b, n] + 0.3 * zs[j][b, n]
                assert torch.allclose(outs[j][b, n], want, atol=1e-5)
                if mask[b, n]:
                    l1 += float((layer.mapping[j](zs[j][b, n]) - want).abs().sum().detach())
                    count += H
    assert float(loss.detach()) == pytest.approx(l1 / count, rel=1e-5)


def test_masked_mean():
    x = torch.arange(6.0).view(1, 3, 2)
    assert masked_mean(x, torch.tensor([[True, False, True]])).tolist() == [[2.0, 3.0]]


def test_padding_and_missing_entries(tiny_dir):
    data = MercData(tiny_dir, "ATV")
    model = _model(data).eval()
    lens = data["train"].lengths
    short = int(np.argmin(lens))
    longest = int(np.argmax(lens))
    n = int(lens[short])
    a = model(data["train"].batch([short])).logits[0, :n]
    b = model(data["train"].batch([short, longest])).logits[0, :n]   # padded in a bigger batch
    assert torch.allclose(a, b, atol=1e-5)
    miss = MercData(tiny_dir, "ATV", missing_rate=0.5)
    batch = miss["train"].batch([0, 1, 2])
    assert not batch.present[batch.mask].all()
    batch.present[0, :, 1] = False                     # a whole modality missing in a dialogue
    batch.features["text"][0] = 0
    assert torch.isfinite(model(batch).logits).all()


@pytest.mark.parametrize("kw", [{"use_afw": False}, {"use_amw": False}, {"afw_score": "softmax"},
                                {"afw_map_target": "attention"}, {"afw_layers": 1}])
def test_switches_run_and_backprop(tiny, kw):
    model = _model(tiny, **kw).train()
    batch = tiny["train"].batch([0, 1])
    out = model(batch)
    loss = F.cross_entropy(out.logits[batch.mask], batch.labels[batch.mask])
    if out.aux_loss is not None:
        loss = loss + out.aux_loss
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert (model.afw is None) == (kw.get("use_afw") is False)


def test_config_defaults_and_errors():
    assert get_entry("ada2i").config_cls is Ada2IConfig
    assert not set(Ada2IConfig.model_fields) & set(TrainConfig.model_fields)
    t, m = resolve_config("ada2i", {}, "iemocap6")         # Table 2, IEMOCAP
    assert (t.lr, t.batch_size, t.epochs, m.hidden_size, m.tensor_rank, m.afw_beta) == \
        (1.7e-4, 10, 50, 300, 11, 0.01)
    assert t.strategy == "ada2i" and t.strategy_config.ada2i_alpha == 0.037
    assert (t.clip_grad_norm, t.weight_decay, t.scheduler, t.early_stopping) == \
        (2.0, 1e-8, "plateau", 20)
    t, m = resolve_config("ada2i", {"ada2i_alpha": 0.4}, "meld")
    assert (t.lr, m.hidden_size, m.tensor_rank, m.afw_beta, t.strategy_config.ada2i_alpha) == \
        (1.2e-4, 200, 6, 0.55, 0.4)
    t, m = resolve_config("ada2i", {}, "mosei")
    assert (t.lr, t.batch_size, t.epochs, m.hidden_size, m.tensor_rank, m.afw_beta) == \
        (1.9e-4, 32, 30, 500, 10, 0.2)
    t, _ = resolve_config("ada2i", {"strategy": "none"}, "iemocap6")
    assert t.strategy == "none"
    for bad in ({"tensor_rank": 0}, {"afw_beta": 1.5}, {"ada2i_alpha": -1.0},
                {"afw_score": "bogus"}, {"ada2i_alphaa": 0.1}):
        with pytest.raises(ConfigError):
            resolve_config("ada2i", bad, "iemocap6")
    assert [auto_heads(d) for d in (768, 512, 1024, 300, 342, 7)] == [6, 8, 8, 5, 6, 7]


def _released_encoder(d: int, hidden: int, ff: int = 2048, layers: int = 2) -> int:
    per_layer = 4 * d * d + 4 * d + 2 * d * ff + ff + d + 4 * d   # attn, FFN, two LayerNorms
    return layers * per_layer + d * hidden + hidden


def _released_afw_layer(M: int, hidden: int, r: int) -> int:
    return 4 * M * (hidden * r + r) + M * (r * r * hidden + hidden) + M * (hidden * hidden + hidden)


@pytest.mark.parametrize("family,dims,C,H,r", [
    ("iemocap6", {"audio": 512, "text": 768, "visual": 1024}, 6, 300, 11),
    ("meld", {"audio": 300, "text": 768, "visual": 342}, 7, 200, 6)])
def test_param_counts_pinned_to_released_network(family, dims, C, H, r, capsys):
    """Per-module counts of the released network (model/encoder.py, AFW.py, net.py) at Table 2's
    dims: Transformer encoders + Linear, 2 AFW layers (4 rank maps, Linear(r^2, H), Phi_m),
    fc_out Linear(M*H, C)."""
    meta = DatasetMeta(family, family, tuple(dims), dims, C, 2, tuple("abcdefg"[:C]), (1.0,) * C,
                       "x")
    _, cfg = resolve_config("ada2i", {}, family)
    model = build_model("ada2i", cfg, meta)
    count = lambda mod: sum(p.numel() for p in mod.parameters())   # noqa: E731
    for m, d in dims.items():
        assert count(model.encoders[m]) == _released_encoder(d, H)
    assert count(model.afw) == 2 * _released_afw_layer(3, H, r)
    assert count(model.fc) == 3 * H * C + C
    total = count(model)
    pinned = {"iemocap6": 35_670_850, "meld": 18_564_043}[family]
    with capsys.disabled():
        print(f"\nAda2I parameters at {family} defaults {dims}: {total:,}")
    assert total == pinned


# ---- strategy (eqs. 16-19) ------------------------------------------------------------------

def _naive_ratios(logits: dict, labels: torch.Tensor) -> dict:
    scores = {}
    for m, z in logits.items():
        s = 0.0
        for b in range(labels.shape[0]):
            for n in range(labels.shape[1]):
                y = int(labels[b, n])
                if y == -100:
                    continue
                e = [math.exp(float(v)) for v in z[b, n].detach()]
                s += e[y] / sum(e)                                       # Eq. (16)
        scores[m] = s
    low = min(scores.values())
    return {m: s / low for m, s in scores.items()}                       # Eq. (17)


def test_discrepancy_and_coefficients_closed_form():
    g = torch.Generator().manual_seed(1)
    logits = {m: torch.randn(2, 4, 3, generator=g) * 3 for m in ("audio", "text", "visual")}
    labels = torch.tensor([[0, 2, 1, -100], [1, 1, -100, -100]])
    _, ratios = discrepancy(logits, labels)
    want = _naive_ratios(logits, labels)
    assert ratios == pytest.approx(want) and min(ratios.values()) == pytest.approx(1.0)
    k = modulation_coefficients({"a": 1.0, "b": 1.5, "c": 3.0}, 0.4)
    assert k == pytest.approx({"a": 1.0, "b": 1 - math.tanh(0.6), "c": 1 - math.tanh(1.2)})


def _grads_after(tiny, cfg: Ada2IStrategyConfig, epoch: int, seed: int = 0):
    model = _model(tiny)
    batch = tiny["train"].batch([0, 1, 2])
    out = model(batch)
    loss = F.cross_entropy(out.logits[batch.mask], batch.labels[batch.mask]) + out.aux_loss
    loss.backward()
    before = {n: p.grad.clone() for n, p in model.named_parameters()}
    torch.manual_seed(seed)
    strat = build_strategy("ada2i", cfg)
    strat.after_backward(epoch, model, out, batch)
    after = {n: p.grad.clone() for n, p in model.named_parameters()}
    return model, out, batch, before, after, strat


@pytest.mark.parametrize("score", ["linear", "output"])
def test_eq18_modulation_against_naive_loop(tiny, score):
    cfg = Ada2IStrategyConfig(ada2i_alpha=0.9, ada2i_noise=False, ada2i_start_epoch=1,
                              ada2i_score=score)
    model, out, batch, before, after, strat = _grads_after(tiny, cfg, epoch=0)
    src = (out.modality_logits if score == "output" else
           {m: out.extras[f"linear_logits_{m}"] for m in out.modality_logits})
    ratios = _naive_ratios(src, batch.labels)
    for name, g0 in before.items():
        mod = name.split(".")[1] if name.startswith("encoders.") else None
        if mod is None:
            assert torch.equal(after[name], g0), name                    # AFW / fc untouched
        else:
            r = ratios[mod]
            k = 1 - math.tanh(0.9 * r) if r > 1 else 1.0                 # Eq. (18)
            assert torch.allclose(after[name], g0 * k, atol=1e-7), name
    m = strat.epoch_end(0)
    for mod, r in ratios.items():
        assert m[f"ada2i_ratio_{mod}"] == pytest.approx(r, rel=1e-5)


def test_noise_start_epoch_and_off_switch(tiny):
    on = Ada2IStrategyConfig(ada2i_start_epoch=2)
    _, _, _, before, after, _ = _grads_after(tiny, on, epoch=0)          # epoch 1 < start 2
    assert all(torch.equal(after[n], g) for n, g in before.items())
    _, _, _, before, after, _ = _grads_after(tiny, on, epoch=1)          # Eq. (19) noise
    enc = [n for n in before if n.startswith("encoders.")]
    assert any(not torch.equal(after[n], before[n]) for n in enc)
    assert all(torch.equal(after[n], before[n]) for n in before if n not in enc)
    _, _, _, _, again, _ = _grads_after(tiny, on, epoch=1)               # same seed, same noise
    assert all(torch.equal(after[n], again[n]) for n in before)
    off = Ada2IStrategyConfig(ada2i_modulate=False, ada2i_start_epoch=1)  # "w/o optimisation"
    _, _, _, before, after, strat = _grads_after(tiny, off, epoch=5)
    assert all(torch.equal(after[n], g) for n, g in before.items())
    m = strat.epoch_end(5)
    assert set(m) == {f"ada2i_{k}_{mod}" for k in ("ratio", "score", "coeff")
                      for mod in ("audio", "text", "visual")}
    assert all(m[f"ada2i_coeff_{mod}"] == 1.0 for mod in ("audio", "text", "visual"))


def test_strategy_refuses_models_without_what_it_needs(tiny):
    batch = tiny["train"].batch([0])
    s = Ada2IStrategy(Ada2IStrategyConfig(ada2i_start_epoch=1))
    with pytest.raises(TypeError, match="modality_logits"):
        s.after_backward(0, torch.nn.Linear(1, 1), Output(logits=torch.zeros(1, 1, 6)), batch)
    z = {"audio": torch.zeros(*batch.labels.shape, 6)}
    with pytest.raises(TypeError, match="ada2i_score=output"):
        s.after_backward(0, torch.nn.Linear(1, 1), Output(logits=z["audio"], modality_logits=z),
                         batch)
    s = Ada2IStrategy(Ada2IStrategyConfig(ada2i_score="output"))   # before the start epoch too
    with pytest.raises(TypeError, match="modality_parameters"):
        s.after_backward(0, torch.nn.Linear(1, 1), Output(logits=z["audio"], modality_logits=z),
                         batch)
    s = Ada2IStrategy(Ada2IStrategyConfig(ada2i_score="output", ada2i_modulate=False))
    s.after_backward(0, torch.nn.Linear(1, 1), Output(logits=z["audio"], modality_logits=z), batch)
    assert s.epoch_end(0)["ada2i_ratio_audio"] == 1.0              # measuring needs no encoders


# ---- training ------------------------------------------------------------------------------

def _fit(data, **kw):
    flat = {"hidden_size": 16, "encoder_ff": 32, "tensor_rank": 3, "epochs": 2, "batch_size": 4,
            "lr": 2e-3, "threads": 1, "early_stopping": 0} | kw
    train, cfg = resolve_config("ada2i", flat, "iemocap6")
    return fit("ada2i", data, train, cfg)


def test_fit_with_and_without_strategy_deterministic(tiny):
    a = _fit(tiny, ada2i_start_epoch=1)
    assert a.status == "completed", a.reason
    assert all(f"ada2i_ratio_{m}" in h for h in a.history for m in ("audio", "text", "visual"))
    b = _fit(tiny, ada2i_start_epoch=1)
    assert [h["val_wf1"] for h in a.history] == [h["val_wf1"] for h in b.history]
    assert a.history[-1]["train_loss"] == b.history[-1]["train_loss"]
    plain = _fit(tiny, strategy="none")
    assert plain.status == "completed", plain.reason
    assert not any(k.startswith("ada2i_") for k in plain.history[-1])


def test_ada2i_beats_majority_clearly(small_dir):
    data = MercData(small_dir, "ATV")
    res = _fit(data, hidden_size=32, encoder_ff=64, tensor_rank=4, epochs=8, batch_size=8,
               dropout=0.1, ada2i_start_epoch=1)
    maj = majority_wf1(data["train"].arrays.labels, data["test"].arrays.labels)
    assert res.best["test_wf1"] > maj + 15, (res.best, maj)


def test_inactive_strategy_default_dropped_but_override_refused():
    """MELD's paper alpha belongs to the ada2i strategy: dropped under strategy=none, kept
    under ada2i, and setting it yourself with strategy=none is still an error naming the key."""
    from merc.config import ConfigError
    from merc.train import resolve_config
    train, _ = resolve_config("ada2i", {}, "meld")
    assert train.strategy == "ada2i" and train.strategy_config.ada2i_alpha == 0.4
    train, _ = resolve_config("ada2i", {"strategy": "none"}, "meld")
    assert train.strategy == "none"
    with pytest.raises(ConfigError, match="ada2i_alpha"):
        resolve_config("ada2i", {"strategy": "none", "ada2i_alpha": 0.3}, "meld")
