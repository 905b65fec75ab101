"""OGM-GE: on-the-fly gradient modulation with generalisation enhancement (a baseline of SPCL
Tables 3-4).

Peng, Wei, Deng, Wang and Hu, "Balanced Multimodal Learning via On-the-fly Gradient Modulation",
CVPR 2022 (SPCL ref. [9]). Each step, on the current batch:

* uni-modal score s^m = sum_i softmax(z^m_i)[y_i] (the paper's s^a, s^v; Ada2I Eq. (16));
* discrepancy ratio rho^m = s^m / min_j s^j - the three-modality form of the paper's s^a / s^v
  written by the SPCL authors' group (Ada2I, Nguyen et al. ACM MM 2024, Eq. (17));
* coefficient k^m = 1 - tanh(alpha * rho^m) if rho^m > 1 else 1 (the paper's modulation
  coefficient; Ada2I Eq. (18)), alpha = ``ogm_alpha``;
* the gradient of every parameter theta of modality m's own modules becomes
  k^m g(theta) + h,  h ~ N(0, std(g(theta))^2)  (generalisation enhancement, ``ogm_ge``; the
  released ``main.py`` draws h with std(grad) + 1e-8 per parameter tensor, for every modality).

Modality m's own modules are found once, on the first batch, with FAGM's probe
(:func:`merc.strategies._balance.partition`): encoders, per-modality branches and heads; modules
that mix modalities (MMGCN's graph layers) are not modulated, as OGM-GE modulates only the
uni-modal encoders. The released code scales only 4-D (convolution) gradients; its maintainers
(GeWu-Lab/OGM-GE_CVPR2022 #22, #38) say fully connected layers should be modulated too - here
every parameter of the modality's modules is. The loop clips gradients before this hook.

Keys: ``ogm_alpha`` (default 0.5, the SPCL launcher's ``--alpha`` default; OGM-GE requires it),
``ogm_ge`` (noise on, default True), ``ogm_start_epoch`` / ``ogm_end_epoch`` (the released
``--modulation_starts 0 --modulation_ends 50``). Logged: ``ogm_coeff_<m>``, ``ogm_ratio_<m>``.
"""
from __future__ import annotations

from typing import Optional

import torch

from merc.configs.strategies import OGMGEConfig
from merc.strategies import register_strategy
from merc.strategies._balance import (BalanceStrategy, discrepancy_ratios, modality_scores,
                                      modulation_coefficients, own_params, partition)


#: k^m = 1 - tanh(alpha rho^m) where rho^m > 1, else 1 (shared with Ada2I's Eq. (18))
ogm_coefficients = modulation_coefficients


def modulate(params, coeff: float, noise: bool, generator: Optional[torch.Generator]) -> None:
    """g <- k g (+ N(0, (std(g) + 1e-8)^2) with ``noise``) for every parameter in ``params``."""
    for p in params:
        g = p.grad
        std = float(g.std()) if g.numel() > 1 else 0.0
        g.mul_(coeff)
        if noise:
            g.add_(torch.randn(g.shape, generator=generator, dtype=g.dtype).to(g.device)
                   * (std + 1e-8))


@register_strategy("ogm_ge", OGMGEConfig)
class OGMGE(BalanceStrategy):
    """On-the-fly gradient modulation (module docstring)."""

    name = "ogm_ge"
    prefix = "ogm"

    def __init__(self, config: OGMGEConfig):
        super().__init__(config)
        self.parts = None
        self.gen = torch.Generator().manual_seed(0)

    def on_fit_start(self, train) -> None:
        self.gen.manual_seed(int(train.seed) + 7919)

    def after_backward(self, epoch, model, output, batch) -> None:
        mlog = self.modality_logits(output)
        self.check_model(model)
        if not self.active(epoch):
            return
        if self.parts is None:
            self.parts = partition(model, batch, tuple(mlog))[0]
        ratios = discrepancy_ratios(modality_scores(mlog, batch.labels))
        coeff = ogm_coefficients(ratios, self.config.ogm_alpha)
        for k, m in enumerate(mlog):
            modulate(own_params(self.parts[m]), float(coeff[k]), self.config.ogm_ge, self.gen)
        self.log(**{f"coeff_{m}": float(coeff[k]) for k, m in enumerate(mlog)},
                 **{f"ratio_{m}": float(ratios[k]) for k, m in enumerate(mlog)})

    def state_dict(self) -> dict:
        return {"generator": self.gen.get_state()}

    def load_state_dict(self, state: dict) -> None:
        if "generator" in state:
            self.gen.set_state(state["generator"])
