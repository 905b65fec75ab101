"""SPCL strategy on hand-made logits: difficulty (eqs. 3-6), regularisers, pacing, eq. 11, resume."""
from __future__ import annotations

import math

import pytest
import torch

from merc.config import ConfigError
from merc.data.dataset import Batch
from merc.models.base import Output
from merc.strategies import build_strategy, strategy_config_cls
from merc.strategies.spcl import SPCL, SPCLConfig, difficulty, regularizer_weights


def _batch(labels):
    labels = torch.as_tensor(labels)
    B, N = labels.shape
    mask = labels != -100
    return Batch(features={}, present=torch.ones(B, N, 2, dtype=torch.bool), mask=mask,
                 speakers=torch.zeros(B, N, dtype=torch.long), labels=labels,
                 lengths=mask.sum(1), index=torch.arange(B))


def _output(seed=0, B=2, N=4, C=3, mods=("text", "audio")):
    g = torch.Generator().manual_seed(seed)
    z = {m: torch.randn(B, N, C, generator=g) * 2 for m in mods}
    return Output(logits=sum(z.values()), modality_logits=z)


LABELS = [[0, 1, 2, 1], [2, 0, -100, -100]]


def _manual(out, labels):
    """Eqs. (3)-(6) written out element by element."""
    B, N = labels.shape
    rho = torch.zeros(B, N)
    for i in range(B):
        js = [j for j in range(N) if labels[i, j] != -100]
        s_m = [sum(float(torch.softmax(z[i, j], -1)[labels[i, j]]) for j in js)
               for z in out.modality_logits.values()]
        mean = sum(s_m) / len(s_m)
        s = math.sqrt(sum((x - mean) ** 2 for x in s_m) / (len(s_m) - 1))   # sample std, eq. 5
        for j in js:
            l = -float(torch.log_softmax(out.logits[i, j], -1)[labels[i, j]])  # eq. 3
            rho[i, j] = 2 * s * l / (s + l)                                   # eq. 6
    return rho


def test_difficulty_matches_equations():
    out, labels = _output(), torch.tensor(LABELS)
    rho, _, keep = difficulty(out.logits, out.modality_logits, labels)
    assert torch.allclose(rho, _manual(out, labels), atol=1e-5)
    assert (rho[~keep] == 0).all()


def test_ablation_switches():
    out, labels = _output(1), torch.tensor(LABELS)
    keep = labels != -100
    l = torch.nn.functional.cross_entropy(out.logits[keep], labels[keep], reduction="none")
    rho_u, _, _ = difficulty(out.logits, out.modality_logits, labels, "without_conversation")
    assert torch.allclose(rho_u[keep], l, atol=1e-6)
    rho_c, probs, _ = difficulty(out.logits, out.modality_logits, labels, "without_utterance")
    s = probs.sum(-1).std(0)                                            # per dialogue
    assert torch.allclose(rho_c[keep], s[:, None].expand_as(labels)[keep], atol=1e-6)
    full, _, _ = difficulty(out.logits, out.modality_logits, labels, "full")
    hm = 2 * rho_u * rho_c / (rho_u + rho_c)
    assert torch.allclose(full[keep], hm[keep], atol=1e-5)
    # population std differs from the sample std by sqrt((M-1)/M)
    rho_p, _, _ = difficulty(out.logits, out.modality_logits, labels, "without_utterance",
                             "population")
    assert torch.allclose(rho_p[keep], rho_c[keep] * math.sqrt(1 / 2), atol=1e-6)


def test_single_modality_falls_back_to_utterance_score():
    out, labels = _output(2, mods=("text",)), torch.tensor(LABELS)
    keep = labels != -100
    rho, _, _ = difficulty(out.logits, out.modality_logits, labels)
    l = torch.nn.functional.cross_entropy(out.logits[keep], labels[keep], reduction="none")
    assert torch.allclose(rho[keep], l, atol=1e-6)


@pytest.mark.parametrize("lam", [0.3, 1.0, 2.5])
def test_kept_set_is_difficulty_below_lambda(lam):
    out, batch = _output(3), _batch(LABELS)
    s = SPCL(SPCLConfig(spcl_epsilon=lam))
    v, norm = s.utterance_weights(0, out, batch, torch.zeros(2, 4))
    rho, _, keep = difficulty(out.logits, out.modality_logits, batch.labels)
    assert torch.equal(v.bool(), (rho <= lam) & keep)
    assert float(norm) == float(((rho <= lam) & keep).sum())
    m = s.epoch_end(0)
    assert m["spcl_expanding_rate"] == pytest.approx(float(((rho <= lam) & keep).sum()) / 6)


def test_soft_regularisers_closed_forms():
    rho = torch.tensor([0.0, 0.5, 1.0, 2.0, 5.0])
    lam = 1.5
    lin = regularizer_weights(rho, lam, "linear")
    assert torch.allclose(lin, torch.tensor([max(0.0, 1 - r / lam) for r in rho.tolist()]))
    logi = regularizer_weights(rho, lam, "logistic")
    ref = torch.tensor([(1 + math.exp(-lam)) / (1 + math.exp(r - lam)) for r in rho.tolist()])
    assert torch.allclose(logi, ref)
    assert logi[0] == pytest.approx(1.0)
    hard = regularizer_weights(rho, lam, "hard")
    assert hard.tolist() == [1.0, 1.0, 1.0, 0.0, 0.0]


def test_soft_regulariser_through_the_hook():
    out, batch = _output(4), _batch(LABELS)
    s = SPCL(SPCLConfig(spcl_epsilon=2.0, spcl_regularizer="linear"))
    v, norm = s.utterance_weights(0, out, batch, torch.zeros(2, 4))
    rho, _, keep = difficulty(out.logits, out.modality_logits, batch.labels)
    assert torch.allclose(v, (1 - rho / 2.0).clamp(min=0) * keep)
    assert float(norm) == pytest.approx(float(v.sum()))


@pytest.mark.parametrize("normalise", ["kept", "all"])
def test_eq11_normalisation(normalise):
    out, batch = _output(5), _batch(LABELS)
    s = SPCL(SPCLConfig(spcl_epsilon=1.0, spcl_normalise=normalise))
    losses = torch.rand(2, 4)
    v, norm = s.utterance_weights(0, out, batch, losses)
    keep = batch.labels != -100
    expected = v.sum() if normalise == "kept" else keep.sum()
    assert float(norm) == float(expected)
    # the loop's loss: sum(l * keep * v) / norm -> mean over kept (eq. 11) or over all (released)
    loss = (losses * keep * v).sum() / norm
    kept = v.bool()
    ref = losses[kept].mean() if normalise == "kept" else losses[kept].sum() / keep.sum()
    assert float(loss) == pytest.approx(float(ref))


def _run_lambdas(cfg, epochs, rho_per_epoch=None):
    """Drive the scheduler: feed each epoch's difficulties directly, collect lambda_t."""
    s = SPCL(cfg)
    lams = []
    for t in range(epochs):
        lams.append(s.lam)
        if rho_per_epoch is not None:
            s._rho = [rho_per_epoch[t]]
            s._n = rho_per_epoch[t].numel()
        s.epoch_end(t)
    return lams


def test_exponential_pacing():
    lams = _run_lambdas(SPCLConfig(spcl_epsilon=0.8, spcl_alpha=1.1), 6)
    assert lams == pytest.approx([0.8 * 1.1 ** t for t in range(6)])
    capped = _run_lambdas(SPCLConfig(spcl_epsilon=0.8, spcl_alpha=2.0, spcl_lambda_cap=5.0), 6)
    assert capped == pytest.approx([0.8, 1.6, 3.2, 5.0, 5.0, 5.0])


def test_cosine_pacing():
    T = 5
    cfg = SPCLConfig(spcl_epsilon=0.5, spcl_pacing="cosine", spcl_pacing_epochs=T,
                     spcl_lambda_max=3.0)
    lams = _run_lambdas(cfg, 7)
    ref = [0.5 + 2.5 / 2 * (1 - math.cos(math.pi * min(t, T) / T)) for t in range(7)]
    assert lams == pytest.approx(ref)
    dflt = _run_lambdas(SPCLConfig(spcl_epsilon=0.5, spcl_alpha=1.2, spcl_pacing="cosine",
                                   spcl_pacing_epochs=T), T + 1)
    assert dflt[-1] == pytest.approx(0.5 * 1.2 ** T)


def test_moving_average_pacing():
    g = torch.Generator().manual_seed(0)
    rhos = [torch.rand(20, generator=g) * (t + 1) for t in range(6)]
    cfg = SPCLConfig(spcl_epsilon=0.7, spcl_pacing="moving_average", spcl_ma_momentum=0.8,
                     spcl_ma_switch=3)
    lams = _run_lambdas(cfg, 6, rhos)
    ref = [0.7]
    for t in range(1, 6):
        ref.append(0.8 * ref[-1] + 0.2 * float(rhos[t - 1].mean()) if t < 3
                   else float(rhos[t - 1].max()))
    assert lams == pytest.approx(ref)


def test_competence_pacing():
    g = torch.Generator().manual_seed(1)
    rhos = [torch.rand(50, generator=g) * 3 for _ in range(6)]
    T, c0 = 4, 0.1
    cfg = SPCLConfig(spcl_epsilon=0.9, spcl_pacing="competence", spcl_pacing_epochs=T,
                     spcl_competence_c0=c0)
    lams = _run_lambdas(cfg, 6, rhos)
    ref = [0.9]
    for t in range(1, 6):
        ct = min(1.0, math.sqrt(t * (1 - c0 ** 2) / T + c0 ** 2))
        ref.append(float(torch.quantile(rhos[t - 1].double(), ct)))
    assert lams == pytest.approx(ref)
    assert lams[-1] == pytest.approx(float(rhos[4].max()))      # c_t = 1: everything kept


def test_modality_ratio_and_metrics():
    out, batch = _output(6), _batch(LABELS)
    s = SPCL(SPCLConfig(spcl_epsilon=100.0))
    s.utterance_weights(0, out, batch, torch.zeros(2, 4))
    m = s.epoch_end(0)
    assert m["spcl_expanding_rate"] == 1.0 and m["spcl_lambda"] == 100.0
    _, probs, keep = difficulty(out.logits, out.modality_logits, batch.labels)
    score = probs.sum((1, 2)) / keep.sum()
    assert m["spcl_score_text"] == pytest.approx(float(score[0]), rel=1e-5)
    assert min(m["spcl_ratio_text"], m["spcl_ratio_audio"]) == pytest.approx(1.0)
    assert m["spcl_ratio_text"] == pytest.approx(float(score[0] / score.min()), rel=1e-5)


def test_resume_via_state_dict():
    cfg = SPCLConfig(spcl_epsilon=0.6, spcl_alpha=1.3)
    a = SPCL(cfg)
    for t in range(3):
        a.epoch_end(t)
    b = build_strategy("spcl", cfg)
    b.load_state_dict(a.state_dict())
    assert b.lam == pytest.approx(0.6 * 1.3 ** 3) and b.epoch == 3
    a.epoch_end(3), b.epoch_end(3)
    assert a.lam == pytest.approx(b.lam)


def test_refuses_models_without_modality_logits():
    s = SPCL()
    with pytest.raises(TypeError, match="modality_logits"):
        s.utterance_weights(0, Output(logits=torch.zeros(2, 4, 3)), _batch(LABELS),
                            torch.zeros(2, 4))


def test_config_is_typed_and_prefixed():
    assert strategy_config_cls("spcl") is SPCLConfig
    assert all(k.startswith("spcl_") for k in SPCLConfig.model_fields)
    from merc.train import resolve_config
    train, _ = resolve_config("mmgcn", {"strategy": "spcl", "spcl_alpha": 1.2})
    assert train.strategy_config.spcl_alpha == 1.2 and train.clip_grad_norm == 2.0
    with pytest.raises(ConfigError, match="spcl_pacing"):
        resolve_config("mmgcn", {"strategy": "spcl", "spcl_pacing": "linear"})
