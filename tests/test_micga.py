"""Mi-CGA: shapes, masks, L_rec on missing entries only, eqs. 12 / 17 / 21 / 29-30 against naive
loops, ablation switches, paper defaults, parameter count, a short fit and beating the majority."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from merc.config import ConfigError
from merc.data.dataset import DatasetMeta, MercData
from merc.data.format import Dialogue, Manifest, write_dataset
from merc.metrics import majority_wf1
from merc.models import build_model, get_entry
from merc.models.micga import CrossModalAttention, MicgaConfig, SGATLayer
from merc.train import TrainConfig, fit, resolve_config

DIMS = {"audio": 12, "text": 16, "visual": 10}
SMALL = dict(hidden_size=8, fe_hidden_size=8, cma_dim=6, gat_heads=2, lstm_layers=1)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_micga")
    rng = np.random.default_rng(0)

    def dialogues(count, lengths=None):
        out = []
        for i in range(count):
            n = lengths[i] if lengths else int(rng.integers(1, 7))
            y = rng.integers(0, 3, n)
            feats = {m: (rng.normal(size=(n, d)) + y[:, None] * 0.5).astype(np.float32)
                     for m, d in DIMS.items()}
            out.append(Dialogue(f"d{i}", feats, rng.integers(0, 2, n), y))
        return out

    man = Manifest(name="tiny", family="iemocap6", num_classes=3, label_names=["a", "b", "c"],
                   modalities=DIMS, num_speakers=2, splits={})
    write_dataset(root, man, {"train": dialogues(8, [1, 5, 3, 6, 2, 4, 6, 5]),
                              "valid": dialogues(3), "test": dialogues(3)})
    return root


def _setup(root, mods="ATV", rho=0.0, idx=(1, 3, 5, 7), **kw):
    data = MercData(root, mods, missing_rate=rho)
    torch.manual_seed(0)
    model = build_model("micga", MicgaConfig(**(SMALL | kw)), data.meta)
    return data, data["train"].batch(list(idx)), model


@pytest.mark.parametrize("mods", ["T", "A", "AT", "TV", "ATV"])
@pytest.mark.parametrize("rec", ["kl", "mse"])
def test_shapes_modality_subsets(tiny, mods, rec):
    rho = 0.0 if len(mods) == 1 else 0.4
    data, batch, model = _setup(tiny, mods, rho, rec_loss=rec)
    assert len(model.pairs) == len(mods) * (len(mods) - 1) // 2      # CMA pairs, eq. 23
    out = model(batch)
    B, N = batch.mask.shape
    assert out.logits.shape == (B, N, 3) and torch.isfinite(out.logits).all()
    assert (out.aux_loss is None) == (rho == 0.0)
    model.eval()
    out = model(batch)
    assert torch.isfinite(out.logits).all() and out.aux_loss is None   # L_rec: training only


def test_every_parameter_gets_a_gradient(tiny):
    _, batch, model = _setup(tiny, "ATV", 0.4, rec_loss="mse")
    out = model(batch)
    (out.logits[batch.mask].sum() + out.aux_loss).backward()
    bad = [n for n, p in model.named_parameters()
           if p.grad is None or not torch.isfinite(p.grad).all() or p.grad.abs().sum() == 0]
    assert not bad, bad


def test_missing_entries_are_masked(tiny):
    """Eq. 7: the prediction never sees a missing value - feeding the true (unmasked) features
    with the same presence mask gives the same logits; changing them changes nothing either."""
    _, batch, model = _setup(tiny, "ATV", 0.5)
    assert batch.unmasked is not None and not batch.present[batch.mask].all()
    model.eval()
    ref = model(batch).logits
    for feats in (batch.unmasked, {m: x + 5.0 * torch.randn_like(x)
                                   for m, x in batch.unmasked.items()}):
        leak = type(batch)(**{**batch.__dict__, "features": dict(feats)})
        # observed entries keep their values, missing ones carry real / random numbers
        for k, m in enumerate(model.modalities):
            obs = batch.present[..., k:k + 1]
            leak.features[m] = torch.where(obs, batch.features[m], feats[m])
        assert torch.allclose(model(leak).logits, ref, atol=1e-6)
    nodes, _, observed, _ = model.feature_estimation(batch)
    assert (nodes[~observed] == 0).all()                             # X^miss = X ⊙ M
    assert observed[:, model.d:].all()                               # speaker columns kept


def test_missing_entries_masked_in_the_batch(tiny):
    data = MercData(tiny, "ATV", missing_rate=0.5)
    batch = data["train"].batch([1, 3, 5, 7])
    for k, m in enumerate(data.modalities):
        miss = batch.mask & ~batch.present[..., k]
        assert miss.any()
        assert (batch.features[m][miss] == 0).all()
        assert (batch.unmasked[m][miss] != 0).any()
        obs = batch.mask & batch.present[..., k]
        assert torch.equal(batch.features[m][obs], batch.unmasked[m][obs])
    assert MercData(tiny, "ATV")["train"].batch([1, 3]).unmasked is None


@pytest.mark.parametrize("rec", ["kl", "mse"])
def test_reconstruction_loss_only_on_missing_entries(tiny, rec):
    """L_rec has zero gradient on every observed entry of X^FE and equals a naive loop over the
    missing (utterance, modality) pairs (GCNet's normalisation; eqs. 29 / 30)."""
    _, batch, model = _setup(tiny, "ATV", 0.4, rec_loss=rec, kl_sparsity=0.3)
    U = int(batch.mask.sum())
    x_fe = torch.randn(U, model.d, requires_grad=True)
    loss = model.reconstruction_loss(x_fe, batch)
    loss.backward()
    present = batch.present[batch.mask]
    target = model.encode(batch.unmasked, batch)[batch.mask].detach()
    xv, naive, p = x_fe.detach(), 0.0, 0.3
    for u in range(U):
        for k, w in enumerate(model.widths):
            cols = slice(model.offsets[k], model.offsets[k + 1])
            g = x_fe.grad[u, cols]
            if present[u, k]:
                assert (g == 0).all()
                continue
            assert (g != 0).any()
            s = 0.0
            for j in range(cols.start, cols.stop):
                v = float(xv[u, j])
                if rec == "mse":
                    s += (v - float(target[u, j])) ** 2
                else:
                    ph = 1.0 / (1.0 + math.exp(-v))
                    s += p * math.log(p / ph) + (1 - p) * math.log((1 - p) / (1 - ph))
            naive += s / w
    assert float(loss.detach()) == pytest.approx(naive / U, rel=1e-5)


def test_no_missing_entry_no_reconstruction_loss(tiny):
    _, batch, model = _setup(tiny, "ATV", 0.0, rec_loss="mse")
    assert batch.unmasked is None
    assert model(batch).aux_loss is None


def test_smoothing_eq12_variants(tiny):
    """Eqs. 11-12 and the switches: lambda = 1 returns the input, 'none' the coarse estimate,
    'coarse' swaps the weights, fe_blend='missing' keeps every observed entry."""
    _, batch, model = _setup(tiny, "ATV", 0.4)
    c, x = torch.randn(5, 7), torch.randn(5, 7)
    assert torch.allclose(model.smooth(c, x), 0.5 * c + 0.5 * x)
    for lam, on, want in ((0.2, "input", 0.8 * c + 0.2 * x), (0.2, "coarse", 0.2 * c + 0.8 * x),
                          (1.0, "input", x), ("none", "input", c)):
        model.config.smoothing, model.config.smoothing_on = lam, on
        assert torch.allclose(model.smooth(c, x), want)
    _, batch, model = _setup(tiny, "ATV", 0.4, fe_blend="missing", smoothing=0.3)
    nodes, x_fe, observed, _ = model.feature_estimation(batch)
    assert torch.allclose(x_fe[observed], nodes[observed], atol=1e-6)
    _, _, model_all = _setup(tiny, "ATV", 0.4, smoothing=0.3)
    nodes, x_fe_all, observed, _ = model_all.feature_estimation(batch)
    assert not torch.allclose(x_fe_all[observed], nodes[observed])   # 'all': blended everywhere
    with pytest.raises(ConfigError, match="smoothing"):
        resolve_config("micga", {"smoothing": 1.5})
    with pytest.raises(ConfigError, match="smoothing"):
        resolve_config("micga", {"smoothing": "bogus"})


def test_cma_eq21_against_naive_loop():
    """Eq. 21 per dialogue, per query, with an explicit softmax over the real utterances."""
    torch.manual_seed(1)
    cma = CrossModalAttention(5, 4, 3)
    xd, xg = torch.randn(2, 4, 5), torch.randn(2, 4, 4)
    mask = torch.tensor([[True, True, True, False], [True, True, False, False]])
    out = cma(xd, xg, mask)
    Wq, Wk, Wv = cma.q.weight, cma.k.weight, cma.v.weight
    for b in range(2):
        n = int(mask[b].sum())
        for i in range(n):
            q = Wq @ xg[b, i]
            s = torch.stack([(q @ (Wk @ xd[b, j])) / math.sqrt(3) for j in range(n)])
            a = torch.exp(s - s.max()) / torch.exp(s - s.max()).sum()
            want = sum(a[j] * (Wv @ xd[b, j]) for j in range(n))
            assert torch.allclose(out[b, i], want, atol=1e-5)


def test_sgat_eq17_against_naive_loop():
    """Eq. 17: x_com,i = LeakyReLU(sum_j alpha_ij W_com x_agg,j) with GATv2's alpha (self loops
    included), then eq. 18's Psi over the concatenated heads."""
    torch.manual_seed(2)
    layer = SGATLayer(4, 2)
    x = torch.randn(5, 4)
    edge_index = torch.tensor([[0, 1, 2, 1, 3, 4], [1, 0, 1, 2, 4, 3]])
    agg, (ei, alpha) = layer.gat(x, edge_index, return_attention_weights=True)
    agg = agg.view(5, 2, 4)
    com = torch.zeros(5, 2, 4)
    for e in range(ei.shape[1]):
        j, i = int(ei[0, e]), int(ei[1, e])
        for h in range(2):
            com[i, h] += alpha[e, h] * (agg[j, h] @ layer.w_com[h])
    want = layer.psi(torch.nn.functional.leaky_relu(com).reshape(5, -1))
    got = layer(x, edge_index)
    assert torch.allclose(got, want, atol=1e-5)
    gw = torch.autograd.grad(want.pow(2).sum(), [layer.w_com, layer.gat.att])
    gg = torch.autograd.grad(got.pow(2).sum(), [layer.w_com, layer.gat.att])
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(gw, gg))   # gradients through alpha


def test_padding_does_not_change_outputs(tiny):
    data, one, model = _setup(tiny, "ATV", 0.3, idx=(2,))
    big = data["train"].batch([2, 3])              # dialogue 2 (length 3) padded to 6
    model.eval()
    assert torch.allclose(model(one).logits[0, :3], model(big).logits[0, :3], atol=1e-5)


@pytest.mark.parametrize("switch", [dict(use_mulgat=False), dict(use_cma=False),
                                    dict(use_mulgat=False, use_cma=False),
                                    dict(use_speaker=False), dict(gat_layers=1, gat_heads=1)])
def test_ablation_switches(tiny, switch):
    _, batch, model = _setup(tiny, "ATV", 0.3, **switch)
    out = model(batch)
    assert torch.isfinite(out.logits).all()
    (out.logits[batch.mask].sum() + out.aux_loss).backward()
    assert (model.mulgat is None) == (switch.get("use_mulgat") is False)
    assert (len(model.cma) == 0) == (switch.get("use_cma") is False)
    extra = 0 if switch.get("use_cma") is False else 2 * 3 * SMALL["cma_dim"]
    assert model.fc.in_features == model.dbar + extra                  # eq. 25
    assert model.dbar == model.d + (0 if switch.get("use_speaker") is False else 2)


def test_config_paper_defaults():
    assert get_entry("micga").config_cls is MicgaConfig
    assert not set(MicgaConfig.model_fields) & set(TrainConfig.model_fields)
    for fam in ("iemocap6", "iemocap4", "mosi", "mosei"):
        t, m = resolve_config("micga", {}, fam)
        assert (t.lr, t.weight_decay, t.epochs, t.optimizer) == (3e-3, 1e-5, 200, "adam")
        assert (m.gat_layers, m.gat_heads, m.smoothing, m.kl_sparsity, m.rec_loss) == \
            (2, 4, 0.5, 0.2, "kl")
        assert (t.missing_rate, t.missing_redraw) == (0.0, False)
    t, m = resolve_config("micga", {"smoothing": "none", "missing_rate": 0.3})
    assert m.smoothing == "none" and t.missing_rate == 0.3
    with pytest.raises(ConfigError, match="rec_loss"):
        resolve_config("micga", {"rec_loss": "l1"})


def test_param_count_iemocap6_defaults(capsys):
    meta = DatasetMeta("iemocap6", "iemocap6", ("audio", "text", "visual"),
                       {"audio": 100, "text": 768, "visual": 512}, 6, 2, tuple("abcdef"),
                       (1.0,) * 6, "x")
    _, cfg = resolve_config("micga", {}, "iemocap6")
    model = build_model("micga", cfg, meta)
    n = sum(p.numel() for p in model.parameters())
    parts = {k: sum(p.numel() for p in v.parameters()) for k, v in model.named_children()}
    with capsys.disabled():
        print(f"\nMi-CGA parameters at IEMOCAP-6 defaults (a100 t768 v512): {n:,} {parts}")
    assert model.widths == [100, 200, 100] and model.dbar == 402
    assert len(model.mulgat) == 2 and all(g.gat.heads == 4 for g in model.mulgat)
    assert len(model.cma) == 6 and model.fc.in_features == 402 + 6 * 100
    assert 5_000_000 < n < 9_000_000


def test_short_fit_deterministic(tiny):
    flat = SMALL | {"epochs": 2, "batch_size": 4, "lr": 3e-3, "missing_rate": 0.3,
                    "threads": 1}
    runs = []
    for _ in range(2):
        train, mcfg = resolve_config("micga", flat, "iemocap6")
        res = fit("micga", MercData(tiny, "ATV", train.missing_rate, train.seed), train, mcfg)
        assert res.status == "completed", res.reason
        runs.append([h["train_loss"] for h in res.history] + [res.best["val_wf1"]])
    assert runs[0] == runs[1] and all(np.isfinite(runs[0]))


def test_micga_beats_majority_clearly(small_dir):
    """On the `small` preset (40/10/12 IEMOCAP-like dialogues), rho = 0.3, KL loss."""
    flat = {"hidden_size": 32, "fe_hidden_size": 32, "cma_dim": 32, "lstm_layers": 1,
            "epochs": 6, "batch_size": 4, "lr": 3e-3, "missing_rate": 0.3, "threads": 1,
            "seed": 0}
    train, mcfg = resolve_config("micga", flat, "iemocap6")
    data = MercData(small_dir, "ATV", train.missing_rate, train.seed)
    res = fit("micga", data, train, mcfg)
    maj = majority_wf1(data["train"].arrays.labels, data["test"].arrays.labels)
    assert res.best["test_wf1"] > maj + 15, (res.best, maj)
