"""FAGM: fine-grained adaptive gradient modulation (a baseline of SPCL Tables 3-4).

Wang, Liu, Li, Hu, Luo and Nie, "Unlocking the Power of Multimodal Learning for Emotion
Recognition in Conversation", ACM MM 2023 (SPCL ref. [12]; released code iLearn-Lab/MM23-FAGM,
``<Backbone>/train.py``: ``modulation_init``, ``modulation``). SPCL sec. 4.2: "rebalances gradients
at the parameter level by proportionally adjusting them based on modality dominance". After each
backward pass (the contribution is re-estimated every ``fagm_tau`` steps):

1. modality attribution: with the model in eval mode, the batch's loss with all modalities L and
   with modality m zeroed L_{-m}; score_m = L_{-m} - L (how much the prediction needs m);
2. dominance r = softmax(T * score) over modalities (T = ``fagm_temperature``, 0.1 released) and
   the modulation degree iscore_m = (r_m - min_j r_j)^gamma (gamma = ``fagm_gamma``);
3. the gradients of modality m's own modules are scaled by (1 - iscore_m) (the weakest modality
   keeps its gradient);
4. shared modules (those whose input mixes modalities, e.g. MMGCN's graph layers): per input
   feature n, delta^m_n = mean |x_n - x_n^{(-m)}| of the module input with and without m; a feature
   is "owned" by m when delta^m_n - max_{j != m} delta^j_n is among the top ``fagm_beta`` fraction
   of the positive values; its weight column's gradient is scaled by 1 - sum_m iscore_m [owned by
   m] (for every >= 2-D parameter whose last dimension is the input width, as released).

Modules are the parameter-owning modules the forward uses (embeddings excluded); specific vs shared
is decided on the first batch with the probe of ``modulation_init``
(:func:`merc.strategies._balance.partition`). Differences from the release: L comes from the same
eval-mode pass as the L_{-m} (the release takes it from the dropout-noisy training forward); a
module called several times per forward (the GRU cells of a recurrence) pools the inputs of all
calls; the loss is the unweighted cross-entropy of the joint logits.

Keys: ``fagm_gamma`` (default 0.5, the MMGCN script's default; ``hyperparameters.xlsx`` tunes it per
backbone, e.g. MMGCN IEMOCAP tav 1e-3), ``fagm_beta`` (1.0), ``fagm_tau`` (1), ``fagm_temperature``
(0.1), ``fagm_shared`` (modulate shared modules, True), ``fagm_start_epoch`` /
``fagm_end_epoch``. Logged: ``fagm_iscore_<m>``, ``fagm_score_<m>``.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from merc.configs.strategies import FAGMConfig
from merc.strategies import register_strategy
from merc.strategies._balance import (ActivationRecorder, BalanceStrategy, own_params, partition,
                                      without)


def iscores(scores: torch.Tensor, temperature: float, gamma: float) -> torch.Tensor:
    """Step 2: (softmax(T score) - min)^gamma (vectorised over modalities)."""
    r = torch.softmax(temperature * scores, 0)
    return (r - r.min()) ** gamma


def feature_penalty(delta: torch.Tensor, iscore: torch.Tensor, beta: float) -> torch.Tensor:
    """Step 4, vectorised: delta [M, n] (mean |x - x^{(-m)}| per input feature), iscore [M] ->
    the multiplier 1 - sum_m iscore_m [feature owned by m] for each of the n features."""
    M = delta.shape[0]
    if M < 2:
        return torch.ones_like(delta[0])
    others = torch.stack([torch.cat([delta[:m], delta[m + 1:]]).amax(0) for m in range(M)])
    rel = delta - others                                               # [M, n]
    pos = (rel > 0).sum(1)                                             # [M]
    ranked = rel.sort(1, descending=True).values
    k = (pos.float() * beta).long().sub(1).clamp(min=0)
    thr = ranked.gather(1, k[:, None])                                 # [M, 1]
    owned = (rel > thr).float()
    return 1.0 - (owned * iscore[:, None]).sum(0)


def feature_penalty_naive(delta: torch.Tensor, iscore: torch.Tensor, beta: float) -> torch.Tensor:
    """Reference for the tests: the released ``get_penalty`` loop, one modality at a time."""
    M = delta.shape[0]
    pen = torch.zeros(delta.shape[1])
    if M < 2:
        return 1.0 - pen
    for m in range(M):
        other = torch.max(torch.stack([delta[j] for j in range(M) if j != m]), 0)[0]
        d = delta[m] - other
        pos_num = int(torch.sum((d > 0).int()))
        threshold = torch.sort(d, descending=True)[0][max(int(pos_num * beta) - 1, 0)]
        pen += (d > threshold).float() * iscore[m]
    return 1 - pen


def _flat(acts: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([a.reshape(-1, a.shape[-1]) for a in acts])


@register_strategy("fagm", FAGMConfig)
class FAGM(BalanceStrategy):
    """Fine-grained adaptive gradient modulation (module docstring)."""

    name = "fagm"
    prefix = "fagm"

    def __init__(self, config: FAGMConfig):
        super().__init__(config)
        self.parts = None
        self.step = 0
        self.iscore: Optional[torch.Tensor] = None
        self.pen: dict = {}

    def _loss(self, out, batch) -> torch.Tensor:
        C = out.logits.shape[-1]
        return F.cross_entropy(out.logits.detach().reshape(-1, C), batch.labels.reshape(-1),
                               ignore_index=-100)

    def _estimate(self, model, batch, mods: tuple[str, ...]) -> None:
        c = self.config
        rec = ActivationRecorder(model)
        out, full = rec.run(model, batch, grad=False)                  # step 1: L
        loss_all = self._loss(out, batch)
        drops, losses = [], []
        for m in mods:
            o, acts = rec.run(model, without(batch, {m}), grad=False)  # L_{-m}
            losses.append(self._loss(o, batch))
            drops.append(acts)
        scores = torch.stack(losses) - loss_all
        self.scores = scores
        self.iscore = iscores(scores, c.fagm_temperature, c.fagm_gamma)  # step 2
        self.pen = {}
        if c.fagm_shared:
            for mod in self.shared:
                if mod not in full or not all(mod in d for d in drops):
                    continue
                x = _flat(full[mod])
                if any(_flat(d[mod]).shape != x.shape for d in drops):
                    continue
                delta = torch.stack([(x - _flat(d[mod])).abs().mean(0) for d in drops])
                self.pen[mod] = feature_penalty(delta, self.iscore, c.fagm_beta)

    def after_backward(self, epoch, model, output, batch) -> None:
        mlog = self.modality_logits(output)
        self.check_model(model)
        if not self.active(epoch):
            return
        mods = tuple(mlog)
        if self.parts is None:
            self.parts, self.shared = partition(model, batch, mods)
        if self.step % self.config.fagm_tau == 0 or self.iscore is None:
            self._estimate(model, batch, mods)
        self.step += 1
        for k, m in enumerate(mods):                                   # step 3
            for p in own_params(self.parts[m]):
                p.grad.mul_(1.0 - float(self.iscore[k]))
        for mod, pen in self.pen.items():                              # step 4
            for p in own_params([mod]):
                if p.grad.dim() > 1 and p.grad.shape[-1] == pen.shape[0]:
                    p.grad.mul_(pen.to(p.grad.device))
        self.log(**{f"iscore_{m}": float(self.iscore[k]) for k, m in enumerate(mods)},
                 **{f"score_{m}": float(self.scores[k]) for k, m in enumerate(mods)})
