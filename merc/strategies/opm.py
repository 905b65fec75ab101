"""OPM: on-the-fly prediction modulation (a baseline of SPCL Tables 3-4).

Wei, Hu, Du and Wen, "On-the-fly Modulation for Balanced Multimodal Learning", IEEE TPAMI 2024
(SPCL ref. [47]; the journal extension of OGM-GE with OPM and OGM). SPCL sec. 2.2: "by monitoring
the discriminative discrepancy between modalities during training, OPM dynamically drops features
from the dominant modality with a certain probability". Each training step:

* s^m = sum_i softmax(z^m_i)[y_i] and rho^m = s^m / min_j s^j, as OGM-GE
  (:mod:`merc.strategies.ogm_ge`; Ada2I Eq. (17) for three modalities);
* drop probability q^m = lambda * tanh(rho^m - 1) if rho^m > 1 else 0 (the weakest modality is
  never dropped), lambda = ``opm_lambda``;
* each labelled utterance i drops modality m with probability q^m (independent Bernoulli draws,
  a seeded generator); the fused prediction of the step is z'_i = sum_{m not dropped} z^m_i;
* the loss is the loop's cross-entropy on z' (class weights included); inference uses every
  modality.

Dropping "the feature" of m in a late-fusion model whose joint logit is the sum of per-modality
heads (SPCL Eq. (2)) removes z^m from the sum; the plug-in sees only ``Output``, so it drops z^m
itself - the same up to the head's constant bias, and no gradient reaches modality m's network
from a dropped utterance, which is what weakens the dominant modality. The equation numbering of
the TPAMI paper was not available offline; the formulas above follow its method description.

Keys: ``opm_lambda`` (default 0.5), ``opm_start_epoch`` / ``opm_end_epoch``. Logged:
``opm_drop_<m>`` (mean q^m), ``opm_ratio_<m>``.
"""
from __future__ import annotations


import torch
import torch.nn.functional as F

from merc.configs.strategies import OPMConfig
from merc.strategies import register_strategy
from merc.strategies._balance import BalanceStrategy, discrepancy_ratios, modality_scores


def drop_probabilities(ratios: torch.Tensor, lam: float) -> torch.Tensor:
    """q^m = lambda tanh(rho^m - 1) where rho^m > 1, else 0."""
    return torch.where(ratios > 1.0, lam * torch.tanh(ratios - 1.0), torch.zeros_like(ratios))


def dropped_loss_terms(logits: torch.Tensor, mlog: dict[str, torch.Tensor], drop: torch.Tensor,
                       labels: torch.Tensor, losses: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-utterance CE of z' = z - sum_m drop^m z^m, scaled by the loop's class weight; any-drop
    mask), vectorised over [B, N]. ``drop`` [M, B, N] in {0, 1}; ``losses`` the loop's weighted
    CE of z (its ratio to the unweighted CE recovers the class weight)."""
    y = labels.clamp(min=0)
    z = torch.stack(list(mlog.values()))                               # [M, B, N, C]
    zd = logits - (drop[..., None].to(z.dtype) * z).sum(0)
    C = logits.shape[-1]
    ce_d = F.cross_entropy(zd.reshape(-1, C), y.reshape(-1), reduction="none").view_as(losses)
    return class_weights(logits, labels, losses) * ce_d, drop.any(0)


def class_weights(logits: torch.Tensor, labels: torch.Tensor, losses: torch.Tensor
                  ) -> torch.Tensor:
    """Per-utterance class weight of the loop's loss: its weighted CE over the unweighted CE of the
    same logits (1 where the CE vanishes)."""
    C = logits.shape[-1]
    ce = F.cross_entropy(logits.detach().reshape(-1, C), labels.clamp(min=0).reshape(-1),
                         reduction="none").view_as(losses)
    return torch.where(ce > 1e-12, losses / ce.clamp(min=1e-12), torch.ones_like(ce))


def dropped_loss_naive(logits, mlog, drop, labels) -> list[torch.Tensor]:
    """Reference for the tests: CE of the reduced fused logit, one utterance at a time."""
    names = list(mlog)
    out = []
    for b in range(labels.shape[0]):
        for n in range(labels.shape[1]):
            if labels[b, n] < 0:
                continue
            z = logits[b, n].clone()
            for k, m in enumerate(names):
                if drop[k, b, n]:
                    z = z - mlog[m][b, n]
            out.append(F.cross_entropy(z[None], labels[b, n][None]))
    return out


@register_strategy("opm", OPMConfig)
class OPM(BalanceStrategy):
    """On-the-fly prediction modulation (module docstring)."""

    name = "opm"
    prefix = "opm"

    def __init__(self, config: OPMConfig):
        super().__init__(config)
        self.gen = torch.Generator().manual_seed(0)

    def on_fit_start(self, train) -> None:
        self.gen.manual_seed(int(train.seed) + 104729)

    def utterance_weights(self, epoch, output, batch, losses):
        mlog = self.modality_logits(output)
        if mlog is None or not self.active(epoch):
            return None
        keep = batch.labels != -100
        ratios = discrepancy_ratios(modality_scores(mlog, batch.labels))
        q = drop_probabilities(ratios, self.config.opm_lambda)
        u = torch.rand((len(mlog), *keep.shape), generator=self.gen).to(keep.device)
        drop = (u < q.to(keep.device)[:, None, None]) & keep
        terms, any_drop = dropped_loss_terms(output.logits, mlog, drop, batch.labels, losses)
        # the loop: sum(losses * keep * u_w) / norm + aux; dropped utterances move to aux
        norm = (keep.float() * class_weights(output.logits, batch.labels, losses)).sum()
        aux = (terms * (any_drop & keep)).sum() / norm.clamp(min=1e-12)
        output.aux_loss = aux if output.aux_loss is None else output.aux_loss + aux
        self.log(**{f"drop_{m}": float(q[k]) for k, m in enumerate(mlog)},
                 **{f"ratio_{m}": float(ratios[k]) for k, m in enumerate(mlog)})
        return (~any_drop).float(), norm

    def state_dict(self) -> dict:
        return {"generator": self.gen.get_state()}

    def load_state_dict(self, state: dict) -> None:
        if "generator" in state:
            self.gen.set_state(state["generator"])
