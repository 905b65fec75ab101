"""Mi-CGA's typed config (Nguyen et al., Neurocomputing 2025); the network is
:mod:`merc.models.micga`. Kept apart from it so that validating a config imports no torch."""
from __future__ import annotations

from typing import Literal, Union

from pydantic import Field, field_validator

from merc.config import ModelConfig


_PAPER = {"lr": 3e-3, "weight_decay": 1e-5, "epochs": 200, "optimizer": "adam", "batch_size": 10,
          "gat_layers": 2, "gat_heads": 4, "smoothing": 0.5, "kl_sparsity": 0.2,
          "rec_loss": "kl", "hidden_size": 100, "dropout": 0.5}


class MicgaConfig(ModelConfig):
    """Mi-CGA hyperparameters (sec. 4.5 defaults; the rest chosen as the module docstring says)."""

    hidden_size: int = Field(100, ge=1)              # d_a = d_v; d_t = 2 * hidden_size (eq. 3)
    lstm_layers: int = Field(2, ge=1)                # text BiLSTM depth (GCNet)
    dropout: float = Field(0.5, ge=0.0, lt=1.0)
    use_speaker: bool = True
    speaker_ratio: float = Field(1.0, ge=0.0, le=1.0)    # eta, eq. 9
    fe_layers: int = Field(2, ge=1)                  # GCN layers of the FE encoder f (eq. 10)
    fe_hidden_size: int = Field(100, ge=1)
    fe_blend: Literal["all", "missing"] = "all"
    smoothing: Union[Literal["none"], float] = 0.5   # lambda of eq. 12, or "none"
    smoothing_on: Literal["input", "coarse"] = "input"
    use_mulgat: bool = True
    gat_layers: int = Field(2, ge=1)                 # sec. 4.5: 2 GAT layers
    gat_heads: int = Field(4, ge=1)                  # sec. 4.5: 4 heads
    use_cma: bool = True
    cma_dim: int = Field(100, ge=1)                  # d_Q = d_K = d_V
    rec_loss: Literal["kl", "mse", "none"] = "kl"    # Fig. 7: L_2 (KL) best
    kl_sparsity: float = Field(0.2, gt=0.0, lt=1.0)  # p of eq. 30
    rec_weight: float = Field(1.0, ge=0.0)
    rec_detach_target: bool = True

    @field_validator("smoothing")
    @classmethod
    def _lambda_range(cls, lam):
        if lam != "none" and not 0.0 <= float(lam) <= 1.0:
            raise ValueError(f"smoothing must be 'none' or a number in [0, 1], found {lam!r}")
        return lam

    # Sec. 4.5 for every dataset of the paper (IEMOCAP 4/6-way, CMU-MOSI, CMU-MOSEI); batch 10 as
    # in the authors' CORECT / Ada2I (the paper gives none). MELD is not in the paper.
    PAPER_DEFAULTS = {"iemocap6": dict(_PAPER), "iemocap4": dict(_PAPER), "mosi": dict(_PAPER),
                      "mosei": dict(_PAPER)}
