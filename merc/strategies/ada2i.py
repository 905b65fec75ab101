"""Ada2I's training optimisation: the discrepancy ratio and gradient modulation (sec. 3.5).

Nguyen et al., "Ada2I: Enhancing Modality Balance for Multimodal Conversational Emotion
Recognition", ACM MM 2024 (``papers/ada2i.md``); released code leson502/ADA2I@24b9956
(``model/ada2i.py``, ``train.py``). A refinement of OGM-GE to any number of modalities.

Per training batch, after backward and gradient clipping (the loop's order, as released):

* Eq. (16): s^m = sum over the batch's labelled utterances of softmax(z^m)[y], with z^m the
  modality's unimodal logits: ``ada2i_score="linear"`` (released) reads
  ``Output.extras["linear_logits_<m>"]`` = Z_m W_m^T + b/M, the un-normalised slice of the fusion
  layer, even when AMW is on; ``"output"`` reads ``Output.modality_logits``, i.e. for Ada2I with
  AMW the printed cos<W_m, Z_m> + b/M (and works with any late-fusion model).
* Eq. (17): rho^m = s^m / min_j s^j.
* Eq. (18): k^m = 1 - tanh(alpha * rho^m) if rho^m > 1 else 1; the gradients of the modality's
  encoder parameters theta^(m) (``model.modality_parameters()``) are multiplied by k^m.
  **Table 2's "eta" (0.037 / 0.4 / 0.4) is read as this alpha** (``ada2i_alpha``): the text never
  defines that eta (its eta is the learning rate) and alpha is the strategy's only free scalar;
  the released ``run.sh`` passes ``--alpha=0.037`` (IEMOCAP) and ``--alpha=0.42`` (MELD).
* Eq. (19): Gaussian noise N(0, std(grad) + 1e-8) added to every encoder gradient (released
  ``--normalize``; per-tensor std stands in for Sigma^sgd). The released code adds it to the
  gradient before the optimiser step - with SGD the same as eq. (19)'s eta * h after the update;
  with Adam it is what the code does.
* Modulation (and noise) run in the (1-based) epochs ``ada2i_start_epoch`` (released
  ``start_mod=4``) .. ``ada2i_end_epoch`` (released 3000, None = no end). ``ada2i_modulate=false``
  is Table 5's "w/o training optimisation": nothing is changed, the ratios are still measured.

Per-epoch metrics (``epoch_end``, Fig. 5): ``ada2i_ratio_<m>`` (mean over the epoch's training
batches of rho^m - the released code prints and logs the last batch's), ``ada2i_score_<m>`` (mean
true-class probability per labelled utterance) and ``ada2i_coeff_<m>`` (mean k^m applied; 1 when
no modulation ran).
"""
from __future__ import annotations

from typing import Optional

import torch

from merc.data.dataset import Batch
from merc.configs.strategies import Ada2IStrategyConfig
from merc.strategies import register_strategy
from merc.strategies._balance import discrepancy_ratios, modality_scores
from merc.strategies._balance import modulation_coefficients as _coefficients
from merc.strategies.base import Strategy


def discrepancy(logits: dict[str, torch.Tensor], labels: torch.Tensor
                ) -> tuple[dict[str, float], dict[str, float]]:
    """Eqs. (16)-(17): per-modality scores s^m and ratios rho^m over the labelled utterances
    (the formulas the balancing plug-ins share, keyed by modality)."""
    scores = modality_scores(logits, labels)                                     # Eq. (16)
    ratios = discrepancy_ratios(scores)                                          # Eq. (17)
    return dict(zip(logits, scores.tolist())), dict(zip(logits, ratios.tolist()))


def modulation_coefficients(ratios: dict[str, float], alpha: float) -> dict[str, float]:
    """Eq. (18): k^m = 1 - tanh(alpha rho^m) if rho^m > 1 else 1."""
    k = _coefficients(torch.tensor(list(ratios.values()), dtype=torch.float64), alpha)
    return dict(zip(ratios, k.tolist()))


@register_strategy("ada2i", Ada2IStrategyConfig)
class Ada2IStrategy(Strategy):
    """Discrepancy-ratio gradient modulation (see the module docstring)."""

    name = "ada2i"

    def __init__(self, config: Optional[Ada2IStrategyConfig] = None):
        self.config = config or Ada2IStrategyConfig()
        self._reset()

    def _reset(self) -> None:
        self._batches = 0
        self._n = 0
        self._ratio: dict[str, float] = {}
        self._score: dict[str, float] = {}
        self._coeff: dict[str, float] = {}

    def _logits(self, output) -> dict[str, torch.Tensor]:
        mlog = getattr(output, "modality_logits", None)
        if not mlog:
            raise TypeError("strategy 'ada2i' needs a late-fusion model whose Output carries "
                            "modality_logits (e.g. ada2i, mmgcn, mmdfn); this model returned none")
        if self.config.ada2i_score == "output":
            return {m: z.detach() for m, z in mlog.items()}
        missing = [m for m in mlog if f"linear_logits_{m}" not in output.extras]
        if missing:
            raise TypeError(f"ada2i_score='linear' reads Output.extras['linear_logits_<m>'], "
                            f"which this model does not give for {missing}; set "
                            f"ada2i_score=output to score its modality_logits")
        return {m: output.extras[f"linear_logits_{m}"].detach() for m in mlog}

    def active(self, epoch: int) -> bool:
        """Whether eqs. (18)-(19) act in (0-based) ``epoch``."""
        c, e = self.config, epoch + 1
        return c.ada2i_modulate and e >= c.ada2i_start_epoch and (
            c.ada2i_end_epoch is None or e <= c.ada2i_end_epoch)

    @torch.no_grad()
    def after_backward(self, epoch: int, model: torch.nn.Module, output, batch: Batch) -> None:
        scores, ratios = discrepancy(self._logits(output), batch.labels)
        coeff = {m: 1.0 for m in ratios}
        get = getattr(model, "modality_parameters", None)
        if get is None and self.config.ada2i_modulate:       # refuse on the first batch
            raise TypeError("strategy 'ada2i' modulates each modality's encoder: the model "
                            "must define modality_parameters() -> {modality: [parameters]} "
                            "(or set ada2i_modulate=false to only measure the ratios)")
        if self.active(epoch):
            params = get()
            coeff = modulation_coefficients(ratios, self.config.ada2i_alpha)
            for m, k in coeff.items():
                for p in params[m]:
                    if p.grad is None:
                        continue
                    p.grad.mul_(k)                                               # Eq. (18)
                    if self.config.ada2i_noise:                                  # Eq. (19)
                        std = float(p.grad.std()) if p.grad.numel() > 1 else 0.0
                        p.grad.add_(torch.randn_like(p.grad) * (std + 1e-8))
        self._batches += 1
        self._n += int((batch.labels != -100).sum())
        for m in ratios:
            self._ratio[m] = self._ratio.get(m, 0.0) + ratios[m]
            self._score[m] = self._score.get(m, 0.0) + scores[m]
            self._coeff[m] = self._coeff.get(m, 0.0) + coeff[m]

    def epoch_end(self, epoch: int) -> dict[str, float]:
        out: dict[str, float] = {}
        nb, n = max(self._batches, 1), max(self._n, 1)
        for m in self._ratio:
            out[f"ada2i_ratio_{m}"] = self._ratio[m] / nb
            out[f"ada2i_score_{m}"] = self._score[m] / n
            out[f"ada2i_coeff_{m}"] = self._coeff[m] / nb
        self._reset()
        return out

    def load_state_dict(self, state: dict) -> None:
        self._reset()
