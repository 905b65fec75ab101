"""The balancing plug-ins SPCL compares against (Tables 3-4): RNA, OGM-GE, OPM, FAGM.

Per plug-in: the vectorised computation equals a naive loop; the typed keys are validated; a model
without per-modality logits is refused naming the model and the strategy; each trains a backbone
on the IEMOCAP-shaped ``small`` preset. Plus the module partition the gradient plug-ins share.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from merc.config import ConfigError
from merc.data.dataset import MercData
from merc.models import build_model
from merc.strategies import build_strategy
from merc.strategies._balance import discrepancy_ratios, modality_scores, partition
from merc.strategies.fagm import feature_penalty, feature_penalty_naive, iscores
from merc.strategies.ogm_ge import modulate, ogm_coefficients
from merc.strategies.opm import OPM, OPMConfig, dropped_loss_naive
from merc.strategies.rna import mean_norms, rna_loss, rna_loss_naive
from merc.train import _per_utterance_loss, fit, resolve_config

PLUGINS = ["rna", "ogm_ge", "opm", "fagm"]
#: mmgcn as released (input-width encoders, GCNII variant) at small widths
MMGCN_SMALL = {"hidden_size": 16, "encoder_ff": 32, "dropout": 0.1, "lr": 3e-3, "batch_size": 8,
               "threads": 1}


@pytest.fixture(scope="module")
def small(small_dir):
    return MercData(small_dir, "ATV")


def _rand_logits(seed=0, B=3, N=5, C=4, M=3):
    g = torch.Generator().manual_seed(seed)
    mlog = {m: torch.randn(B, N, C, generator=g) * (k + 1)
            for k, m in enumerate(["audio", "text", "visual"][:M])}
    labels = torch.randint(0, C, (B, N), generator=g)
    labels[0, -2:] = -100
    labels[2, -1] = -100
    return mlog, labels


# ---- vectorised == naive ------------------------------------------------------------------------

def test_rna_vectorised_equals_naive():
    g = torch.Generator().manual_seed(1)
    feats = {m: torch.randn(3, 6, 5, generator=g) * s for m, s in
             (("audio", 1.0), ("text", 3.0), ("visual", 0.5))}
    keep = torch.rand(3, 6, generator=g) > 0.3
    for M in (2, 3):
        sub = dict(list(feats.items())[:M])
        ours = rna_loss(mean_norms(sub, keep))
        assert torch.allclose(ours, torch.as_tensor(rna_loss_naive(sub, keep)), atol=1e-6)
        assert ours > 0.1                                   # unequal norms are penalised


def test_ogm_vectorised_equals_naive():
    mlog, labels = _rand_logits()
    scores = modality_scores(mlog, labels)
    naive = []
    for z in mlog.values():
        p = torch.softmax(z, -1)
        naive.append(sum(float(p[b, n, labels[b, n]]) for b in range(3) for n in range(5)
                         if labels[b, n] >= 0))
    assert torch.allclose(scores, torch.tensor(naive), atol=1e-5)
    ratios = discrepancy_ratios(scores)
    coeff = ogm_coefficients(ratios, 0.3)
    for k, s in enumerate(naive):
        rho = s / min(naive)                                 # Ada2I Eq. (17)
        want = 1 - np.tanh(0.3 * rho) if rho > 1 else 1.0    # Ada2I Eq. (18) / OGM-GE
        assert float(coeff[k]) == pytest.approx(want, abs=1e-6)
    assert float(coeff.max()) == 1.0 and float(coeff.min()) < 1.0
    # the gradient update k g + N(0, std(g)): one call over tensors == a loop per tensor
    params = [torch.nn.Parameter(torch.randn(4, 3)) for _ in range(2)]
    for p in params:
        p.grad = torch.randn_like(p)
    ref = [p.grad.clone() for p in params]
    gen = torch.Generator().manual_seed(5)
    modulate(params, 0.4, True, gen)
    gen2 = torch.Generator().manual_seed(5)
    for p, g0 in zip(params, ref):
        noise = torch.randn(g0.shape, generator=gen2) * (float(g0.std()) + 1e-8)
        assert torch.allclose(p.grad, 0.4 * g0 + noise, atol=1e-6)


def test_opm_loss_vectorised_equals_naive():
    """The loop's loss with OPM's weights and aux term == the mean CE of the reduced fused logits."""
    mlog, labels = _rand_logits(seed=3)
    for z in mlog.values():
        z.requires_grad_(True)
    logits = sum(mlog.values())

    class Out:
        pass
    out = Out()
    out.logits, out.modality_logits, out.aux_loss, out.extras = logits, mlog, None, {}

    class B:
        pass
    batch = B()
    batch.labels = labels
    strat = OPM(OPMConfig(opm_lambda=1.0))
    strat.gen.manual_seed(11)
    losses = _per_utterance_loss(out, batch, None)
    keep = (labels != -100).float()
    u_w, norm = strat.utterance_weights(0, out, batch, losses.detach())
    loop = (losses * keep * u_w).sum() / norm + out.aux_loss
    # replay the same draws for the naive reference
    ratios = discrepancy_ratios(modality_scores(mlog, labels))
    q = torch.where(ratios > 1, torch.tanh(ratios - 1), torch.zeros_like(ratios))
    u = torch.rand((3, *labels.shape), generator=torch.Generator().manual_seed(11))
    drop = (u < q[:, None, None]) & (labels != -100)
    assert drop.any() and (~drop).any()
    naive = torch.stack(dropped_loss_naive(logits, mlog, drop, labels)).mean()
    assert torch.allclose(loop, naive, atol=1e-6)
    assert not drop[int(ratios.argmin())].any()              # the weakest is never dropped


def test_fagm_penalty_vectorised_equals_naive():
    g = torch.Generator().manual_seed(2)
    for M, beta in itertools.product((2, 3), (0.25, 0.8, 1.0)):
        delta = torch.rand(M, 17, generator=g)
        isc = iscores(torch.randn(M, generator=g), 0.1, 0.5)
        assert torch.allclose(feature_penalty(delta, isc, beta),
                              feature_penalty_naive(delta, isc, beta), atol=1e-6)
    isc = iscores(torch.tensor([0.3, -0.1, 0.8]), 0.1, 0.5)
    assert float(isc[1]) == 0.0 and float(isc[2]) > float(isc[0]) > 0   # weakest keeps its grads


# ---- keys, refusals ---------------------------------------------------------------------------

@pytest.mark.parametrize("flat,key", [({"strategy": "ogm_ge", "ogm_alpha": -1.0}, "ogm_alpha"),
                                      ({"strategy": "opm", "opm_lambda": 1.5}, "opm_lambda"),
                                      ({"strategy": "rna", "rna_target": "norms"}, "rna_target"),
                                      ({"strategy": "fagm", "fagm_beta": 0.0}, "fagm_beta"),
                                      ({"strategy": "fagm", "fagm_start_epoch": 5,
                                        "fagm_end_epoch": 3}, "fagm_end_epoch"),
                                      ({"strategy": "rna", "ogm_alpha": 0.1}, "ogm_alpha")])
def test_plugin_keys_validated(flat, key):
    with pytest.raises(ConfigError, match=key):
        resolve_config("mmgcn", flat)


@pytest.mark.parametrize("strategy", PLUGINS)
def test_refuses_model_without_modality_logits(strategy, small):
    train, cfg = resolve_config("corect", {"strategy": strategy, "epochs": 1, "hidden_size": 8,
                                           "gt_heads": 1, "text_encoder_ff": 8,
                                           "text_encoder_heads": 1, "self_att_layers": 0,
                                           "threads": 1})
    with pytest.raises(TypeError, match=f"strategy '{strategy}'.*model 'corect'"):
        fit("corect", small, train, cfg)


# ---- module partition ----------------------------------------------------------------------------

def test_partition_finds_modality_modules(small):
    batch = small["train"].batch([0, 1])
    mods = small.meta.modalities
    _, cfg = resolve_config("mmgcn", {"hidden_size": 8, "encoder_ff": 16})
    mmgcn = build_model("mmgcn", cfg, small.meta)
    spec, shared = partition(mmgcn, batch, mods)
    for m in mods:                    # each encoder belongs to its modality, the graph mixes them
        enc = set(mmgcn.graph.encoders[m].modules())
        assert spec[m] and all(mod in enc for mod in spec[m])
    assert mmgcn.fc_in in shared and mmgcn.heads["text"] in shared
    _, cfg = resolve_config("dialoguegcn", {"hidden_size": 8, "hidden2_size": 6, "encoder_ff": 16})
    dgcn = build_model("dialoguegcn", cfg, small.meta)
    assert dgcn.config.kernels == "fused"    # the probe runs the module path (hooks fire)
    spec, shared = partition(dgcn, batch, mods)
    assert not shared                 # one independent branch per modality
    for m in mods:
        assert dgcn.branches[m].lin2 in spec[m] and dgcn.branches[m].rgcn in spec[m]


def test_ogm_ge_scales_the_dominant_modality(small):
    """Without noise, OGM-GE multiplies the gradient of each modality's own modules by k^m."""
    _, cfg = resolve_config("dialoguegcn", {"hidden_size": 8, "hidden2_size": 6,
                                            "encoder_ff": 16, "dropout": 0.0})
    torch.manual_seed(0)
    model = build_model("dialoguegcn", cfg, small.meta).eval()
    batch = small["train"].batch([0, 1, 2])
    out = model(batch)
    F.cross_entropy(out.logits[batch.mask], batch.labels[batch.mask]).backward()
    before = {m: model.branches[m].lin2.weight.grad.clone() for m in small.meta.modalities}
    train, _ = resolve_config("dialoguegcn", {"strategy": "ogm_ge", "ogm_ge": False,
                                              "ogm_alpha": 0.3})
    strat = build_strategy("ogm_ge", train.strategy_config)
    strat.after_backward(0, model, out, batch)
    k = ogm_coefficients(discrepancy_ratios(modality_scores(out.modality_logits, batch.labels)),
                         0.3)
    for i, m in enumerate(out.modality_logits):
        assert torch.allclose(model.branches[m].lin2.weight.grad, before[m] * k[i], atol=1e-7)
    assert float(k.min()) < 1.0


# ---- end to end -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def plain_mmgcn(small):
    return fit("mmgcn", small, *resolve_config("mmgcn", MMGCN_SMALL | {"epochs": 2}))


@pytest.mark.parametrize("strategy,metric,lo,hi", [("rna", "rna_loss", 0.0, 10.0),
                                                   ("ogm_ge", "ogm_coeff_text", 0.0, 1.0),
                                                   ("opm", "opm_drop_text", 0.0, 0.5),
                                                   ("fagm", "fagm_iscore_text", 0.0, 1.0)])
def test_plugin_trains_mmgcn(strategy, metric, lo, hi, small, plain_mmgcn):
    """``merc train mmgcn --set strategy=<plug-in>`` on IEMOCAP-shaped data: completes, logs its
    metric, and trains differently from the plain loop (same seed)."""
    train, cfg = resolve_config("mmgcn", MMGCN_SMALL | {"strategy": strategy, "epochs": 2})
    res = fit("mmgcn", small, train, cfg)
    assert res.status == "completed", res.reason
    assert res.history[-1]["val_loss"] != plain_mmgcn.history[-1]["val_loss"]
    assert all(lo <= h[metric] <= hi for h in res.history), [h[metric] for h in res.history]
    assert np.isfinite(res.history[-1]["train_loss"]) and res.best["test_wf1"] > 0


def test_plugin_deterministic(small):
    flat = MMGCN_SMALL | {"strategy": "opm", "epochs": 1, "encoder": "light"}
    a = fit("mmgcn", small, *resolve_config("mmgcn", flat))
    b = fit("mmgcn", small, *resolve_config("mmgcn", flat))
    assert a.history[0]["train_loss"] == b.history[0]["train_loss"]
    assert a.history[0]["opm_drop_text"] == b.history[0]["opm_drop_text"]
