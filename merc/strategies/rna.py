"""RNA: the Relative Norm Alignment loss as a training plug-in (a baseline of SPCL Tables 3-4).

Planamente, Plizzari, Alberti and Caputo, "Domain Generalization through Audio-Visual Relative Norm
Alignment in First Person Action Recognition", WACV 2022 (SPCL ref. [44]). RNA re-balances two
modalities by aligning the mean L2 norms of their features:

    delta(f^a, f^b) = ( E_i ||f^a_i||_2 / E_i ||f^b_i||_2 - 1 )^2          (the RNA loss)
    L = L_cls + lambda_RNA * L_RNA

The paper is bimodal; SPCL "extends these methods to trimodal models" without saying how, so with
M > 2 modalities L_RNA is the mean of delta over the pairs (m, m') with m before m' in the batch's
modality order (audio, text, visual): for two modalities it is the paper's loss with the first as
the numerator. E_i runs over the labelled utterances of the batch.

What is normalised (``rna_target``): ``features`` - the representation each modality's classifier
reads (``Output.extras["features_<m>"]``, exposed by the four SPCL backbones); ``logits`` - the
per-modality logits z^m (SPCL Eq. (1)), for models that expose only those; ``auto`` (default) -
features where the model gives them, else logits.

Keys: ``rna_weight`` (lambda_RNA, default 1.0, the paper's unit weight), ``rna_target``,
``rna_start_epoch`` / ``rna_end_epoch``. The loss enters the loop as ``Output.aux_loss`` (added to
the classification loss). Logged per epoch: ``rna_loss`` and ``rna_norm_<m>`` (mean feature norm).
"""
from __future__ import annotations

import itertools
from typing import Optional

import torch

from merc.configs.strategies import RNAConfig
from merc.strategies import register_strategy
from merc.strategies._balance import BalanceStrategy


def mean_norms(feats: dict[str, torch.Tensor], keep: torch.Tensor) -> torch.Tensor:
    """E_i ||f^m_i||_2 over the labelled utterances: [M] (vectorised)."""
    w = keep.float()
    norms = torch.stack([f.float().norm(dim=-1) for f in feats.values()])       # [M, B, N]
    return (norms * w).sum((1, 2)) / w.sum().clamp(min=1.0)


def rna_loss(norms: torch.Tensor) -> torch.Tensor:
    """Mean over pairs m < m' of (E||f^m|| / E||f^m'|| - 1)^2 (the RNA loss; 0 for one modality)."""
    M = norms.shape[0]
    if M < 2:
        return norms.sum() * 0.0
    i, j = torch.triu_indices(M, M, 1)
    return ((norms[i] / norms[j].clamp(min=1e-12) - 1.0) ** 2).mean()


def rna_loss_naive(feats: dict[str, torch.Tensor], keep: torch.Tensor) -> torch.Tensor:
    """Reference: the same loss with explicit loops over utterances and pairs (for the tests)."""
    means = []
    for f in feats.values():
        vals = [f[b, n].float().norm() for b in range(keep.shape[0]) for n in range(keep.shape[1])
                if keep[b, n]]
        means.append(sum(vals) / max(len(vals), 1))
    terms = [(means[a] / means[b] - 1.0) ** 2
             for a, b in itertools.combinations(range(len(means)), 2)]
    return sum(terms) / len(terms) if terms else torch.tensor(0.0)


@register_strategy("rna", RNAConfig)
class RNA(BalanceStrategy):
    """Adds lambda * L_RNA to the loss (module docstring)."""

    name = "rna"
    prefix = "rna"

    def features(self, output) -> Optional[dict[str, torch.Tensor]]:
        mlog = self.modality_logits(output)
        if mlog is None:
            return None
        target = self.config.rna_target
        extras = getattr(output, "extras", {}) or {}
        feats = {m: extras.get(f"features_{m}") for m in mlog}
        have = all(f is not None for f in feats.values())
        if target == "features" and not have:
            raise TypeError("strategy 'rna' with rna_target=features needs "
                            "Output.extras['features_<modality>'] (the SPCL backbones give them); "
                            "this model does not; use rna_target=logits or auto")
        return feats if have and target != "logits" else dict(mlog)

    def utterance_weights(self, epoch, output, batch, losses):
        feats = self.features(output)
        if feats is None or not self.active(epoch):
            return None
        keep = batch.labels != -100
        norms = mean_norms(feats, keep)
        loss = self.config.rna_weight * rna_loss(norms)
        output.aux_loss = loss if output.aux_loss is None else output.aux_loss + loss
        self.log(loss=float(loss.detach()),
                 **{f"norm_{m}": float(v) for m, v in zip(feats, norms.detach())})
        return None
