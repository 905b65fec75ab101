"""SPCL: self-paced curriculum learning for modality balance (a training plug-in).

Nguyen et al., "Leveraging self-paced curriculum learning for enhanced modality balance in
multimodal conversational emotion recognition", Neural Computing and Applications 2026
(``papers/spcl.md``). Works with any model whose :class:`merc.models.Output` carries
``modality_logits`` (late fusion, e.g. the backbones in :mod:`merc.models.backbones`); any other
model is refused with a clear error on the first batch.

Difficulty measurer (per training batch, no gradient)
-----------------------------------------------------
* utterance score, Eq. (3): l_ij = -log softmax(z^joint_ij)[y_ij] (unweighted NLL of the joint logit);
* per-modality dialogue score, Eq. (4): s^m_i = sum_j softmax(z^m_ij)[y_ij] over the labelled
  utterances of dialogue i (a *sum*, so it grows with the dialogue's length, as printed);
* conversation score, Eq. (5): s_i = std_m(s^m_i), sample std (``spcl_std="sample"``, torch's
  default, N-1) or population std; broadcast to every utterance of dialogue i;
* difficulty, Eq. (6): rho_ij = 2 s_i l_ij / (s_i + l_ij) (0 where both are 0).
  Table 5 ablations: ``spcl_difficulty="without_utterance"`` -> rho_ij = s_i,
  ``"without_conversation"`` -> rho_ij = l_ij.
  With a single modality Eq. (5) is undefined (one score has no spread); we then use rho_ij = l_ij
  (a zero conversation score would make the harmonic mean 0 and keep everything, silently turning
  SPCL off).

Regularisers (the closed-form weights v*(rho, lambda) of self-paced learning, paper ref. [58])
-------------------------------------------------------------------------------------------
* ``hard`` (Eq. (7)):   v = 1 if rho <= lambda else 0;
* ``linear``:           v = max(0, 1 - rho / lambda);
* ``logistic``:         v = (1 + e^{-lambda}) / (1 + e^{rho - lambda}).

Pacing (the threshold lambda_t used during epoch t = 0, 1, ...; T = ``spcl_pacing_epochs``, by default
the run's epoch budget)
-----------------------------------------------------------------------------------------
* ``exponential`` (Eq. (8)): lambda_0 = epsilon, lambda_t = alpha * lambda_{t-1} (= epsilon alpha^t);
* ``cosine`` (Table 8): lambda_t = lmin + (lmax - lmin) / 2 * (1 - cos(pi * min(t, T) / T)) with
  lmin = epsilon and lmax = ``spcl_lambda_max`` (default epsilon * alpha^T, the exponential
  schedule's value at T, so the two share their end points);
* ``moving_average`` (Table 8, "MA"): lambda_0 = epsilon; for 1 <= t < t0,
  lambda_t = beta * lambda_{t-1} + (1 - beta) * mean(rho^{(t-1)}); for t >= t0,
  lambda_t = max(rho^{(t-1)}); rho^{(t-1)} are the difficulties measured on the train utterances
  during epoch t-1, beta = ``spcl_ma_momentum``, t0 = ``spcl_ma_switch`` (default T // 2).
  Table 8 prints alpha and a *sum* of rho over the dataset; a sum is O(10^3) times any sensible
  threshold and the Eq. (8) alpha > 1 would make 1 - alpha negative, so we read it as a moving
  average (momentum in (0, 1)) of the mean difficulty;
* ``competence`` (Table 8, "CB", Platanios et al. 2019 ref. [65]): lambda_0 = epsilon; for t >= 1,
  c_t = min(1, sqrt(t (1 - c0^2) / T + c0^2)), lambda_t = Quantile(rho^{(t-1)}, c_t), c0 =
  ``spcl_competence_c0``.
``spcl_lambda_cap`` caps lambda (the released code caps it at 60; the paper has no cap, None).

Loss (Eq. (11)) and what the loop receives
------------------------------------------
``utterance_weights`` returns (v [B, N], normaliser): the loop computes sum v l / normaliser with
``spcl_normalise="kept"`` -> normaliser = sum v (Eq. (11), the paper: the mean over the kept
utterances) or ``"all"`` -> the number of labelled utterances in the batch (the released code's
``(loss * v).mean()``, excluded utterances still in the denominator). A batch with nothing kept
contributes a zero loss.

Per-epoch metrics (``epoch_end``)
---------------------------------
``spcl_lambda`` (threshold used that epoch), ``spcl_expanding_rate`` (share of labelled train
utterances with rho <= lambda, i.e. the hard regulariser's kept set, reported for every regulariser
so the curves compare), ``spcl_mean_weight`` (mean v), ``spcl_score_<modality>`` (mean true-class
probability of the modality's logits over the epoch, the per-utterance mean of Eq. (4)) and
``spcl_ratio_<modality>`` (that score over the weakest modality's: the paper's "modality ratio",
Figs. 5 and 7).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

from merc.data.dataset import Batch
from merc.configs.strategies import SPCLConfig
from merc.strategies import register_strategy
from merc.strategies.base import Strategy

#: (epsilon, alpha) of the released README per backbone, IEMOCAP / MELD, all three modalities
#: (``cl_threshold``, ``cl_growth``); the paper's Table 6 best points are MMGCN (0.8, 1.1) and
#: MM-DFN (0.4, 1.2).
RELEASED_PACING = {
    "iemocap6": {"biddin": (0.7, 1.85), "dialoguegcn": (0.7, 1.25), "mmdfn": (0.4, 1.2),
                 "mmgcn": (0.4, 1.1)},
    "meld": {"biddin": (0.75, 1.05), "dialoguegcn": (0.7, 1.25), "mmdfn": (0.2, 1.6),
             "mmgcn": (0.4, 1.25)},
}


def regularizer_weights(rho: torch.Tensor, lam: float, kind: str) -> torch.Tensor:
    """Closed-form self-paced weights v*(rho, lambda) (Eq. (7) and ref. [58])."""
    if kind == "hard":
        return (rho <= lam).to(rho.dtype)                               # Eq. (7)
    if kind == "linear":
        return (1.0 - rho / lam).clamp(min=0.0)
    if kind == "logistic":
        return (1.0 + math.exp(-lam)) / (1.0 + torch.exp(rho - lam))
    raise ValueError(f"spcl_regularizer must be hard, linear or logistic, found {kind!r}")


def difficulty(logits: torch.Tensor, modality_logits: dict[str, torch.Tensor],
               labels: torch.Tensor, mode: str = "full", std: str = "sample"
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Eqs. (3)-(6): (rho [B, N], per-modality true-class probabilities [M, B, N], labelled mask).

    Padding / unlabelled positions (label -100) get rho = 0 and probability 0; callers mask them.
    """
    keep = labels != -100
    y = labels.clamp(min=0)
    C = logits.shape[-1]
    l = F.cross_entropy(logits.float().reshape(-1, C), labels.reshape(-1), ignore_index=-100,
                        reduction="none").view_as(y.float())            # Eq. (3)
    probs = torch.stack([torch.softmax(z.float(), -1).gather(-1, y[..., None])[..., 0]
                         for z in modality_logits.values()]) * keep      # [M, B, N]
    M = probs.shape[0]
    s_m = probs.sum(-1)                                                  # Eq. (4): [M, B]
    if M > 1:
        s = s_m.std(0, unbiased=(std == "sample"))                       # Eq. (5): [B]
    else:
        s = torch.zeros_like(s_m[0])
    s = s[:, None].expand_as(l)
    if mode == "without_utterance":
        rho = s.clone()
    elif mode == "without_conversation" or M == 1:
        rho = l.clone()
    elif mode == "full":
        den = s + l
        rho = torch.where(den > 0, 2 * s * l / den.clamp(min=1e-12), torch.zeros_like(l))  # Eq. (6)
    else:
        raise ValueError(f"spcl_difficulty must be full, without_utterance or "
                         f"without_conversation, found {mode!r}")
    return rho * keep, probs, keep


@register_strategy("spcl", SPCLConfig)
class SPCL(Strategy):
    """Self-paced curriculum over utterances (see the module docstring)."""

    name = "spcl"

    def __init__(self, config: Optional[SPCLConfig] = None):
        self.config = config or SPCLConfig()
        self.lam = self._cap(self.config.spcl_epsilon)   # lambda for the upcoming epoch
        self.epoch = 0                                    # index of the upcoming epoch
        self.T = self.config.spcl_pacing_epochs or 50     # set from the run by on_fit_start
        self._reset()

    def on_fit_start(self, train) -> None:
        if self.config.spcl_pacing_epochs is None:
            self.T = max(int(train.epochs), 1)

    # -- bookkeeping ---------------------------------------------------------------------------
    def _reset(self) -> None:
        self._rho: list[torch.Tensor] = []
        self._n = 0
        self._kept = 0
        self._wsum = 0.0
        self._score: dict[str, float] = {}

    def _cap(self, lam: float) -> float:
        cap = self.config.spcl_lambda_cap
        return float(min(lam, cap) if cap is not None else lam)

    # -- scheduler -----------------------------------------------------------------------------
    def next_lambda(self, t: int, prev: float, rho: Optional[torch.Tensor]) -> float:
        """lambda_t for epoch ``t >= 1`` from lambda_{t-1} and epoch t-1's difficulties."""
        c = self.config
        T = self.T
        if c.spcl_pacing == "exponential":
            lam = c.spcl_alpha * prev                                       # Eq. (8)
        elif c.spcl_pacing == "cosine":
            lmin = c.spcl_epsilon
            lmax = c.spcl_lambda_max if c.spcl_lambda_max is not None else lmin * c.spcl_alpha ** T
            lam = lmin + (lmax - lmin) / 2 * (1 - math.cos(math.pi * min(t, T) / T))
        elif rho is None or rho.numel() == 0:
            lam = prev
        elif c.spcl_pacing == "moving_average":
            t0 = c.spcl_ma_switch if c.spcl_ma_switch is not None else max(T // 2, 1)
            if t < t0:
                beta = c.spcl_ma_momentum
                lam = beta * prev + (1 - beta) * float(rho.mean())
            else:
                lam = float(rho.max())
        elif c.spcl_pacing == "competence":
            c0 = c.spcl_competence_c0
            ct = min(1.0, math.sqrt(t * (1 - c0 ** 2) / T + c0 ** 2))
            lam = float(torch.quantile(rho.double(), ct))
        else:  # pragma: no cover - pydantic forbids it
            raise ValueError(c.spcl_pacing)
        return self._cap(lam)

    # -- hooks ---------------------------------------------------------------------------------
    def utterance_weights(self, epoch: int, output, batch: Batch, losses: torch.Tensor):
        mlog = getattr(output, "modality_logits", None)
        if not mlog:
            raise TypeError("strategy 'spcl' needs a late-fusion model whose Output carries "
                            "modality_logits (per-modality logits, SPCL eq. 1), e.g. dialoguegcn, "
                            "biddin, mmgcn, mmdfn; this model returned none")
        c = self.config
        with torch.no_grad():
            rho, probs, keep = difficulty(output.logits.detach(),
                                          {m: z.detach() for m, z in mlog.items()},
                                          batch.labels, c.spcl_difficulty, c.spcl_std)
            v = regularizer_weights(rho, self.lam, c.spcl_regularizer) * keep   # Eq. (7)
            kf = keep.to(v.dtype)
            norm = v.sum() if c.spcl_normalise == "kept" else kf.sum()          # Eq. (11)
            self._rho.append(rho[keep].cpu())
            self._n += int(keep.sum())
            self._kept += int(((rho <= self.lam) & keep).sum())
            self._wsum += float(v.sum())
            for m, p in zip(mlog, probs):
                self._score[m] = self._score.get(m, 0.0) + float(p.sum())
        return v, norm

    def epoch_end(self, epoch: int) -> dict[str, float]:
        n = max(self._n, 1)
        out = {"spcl_lambda": self.lam, "spcl_expanding_rate": self._kept / n,
               "spcl_mean_weight": self._wsum / n}
        if self._score:
            scores = {m: s / n for m, s in self._score.items()}
            weakest = min(scores.values())
            for m, s in scores.items():
                out[f"spcl_score_{m}"] = s
                out[f"spcl_ratio_{m}"] = s / weakest if weakest > 0 else float("nan")
        rho = torch.cat(self._rho) if self._rho else None
        self.epoch = epoch + 1
        self.lam = self.next_lambda(self.epoch, self.lam, rho)
        self._reset()
        return out

    def state_dict(self) -> dict:
        return {"lam": self.lam, "epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        if state:
            self.lam = float(state["lam"])
            self.epoch = int(state["epoch"])
        self._reset()
