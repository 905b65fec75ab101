"""Typed configs of the training strategies (:mod:`merc.strategies`). Kept apart from the
strategies so that validating a config imports no torch."""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, model_validator

from merc.config import StrictConfig


class NoConfig(StrictConfig):
    """The plain loop has no strategy keys."""


class WindowConfig(StrictConfig):
    """Epoch window of a plug-in (``<p>_start_epoch`` <= epoch < ``<p>_end_epoch``; None = end)."""

    @model_validator(mode="after")
    def _window(self):
        fields = type(self).model_fields
        start = next((k for k in fields if k.endswith("_start_epoch")), None)
        end = next((k for k in fields if k.endswith("_end_epoch")), None)
        if start and end and getattr(self, end) is not None \
                and getattr(self, end) <= getattr(self, start):
            raise ValueError(f"{end} must be greater than {start} "
                             f"({getattr(self, end)} <= {getattr(self, start)})")
        return self


class SPCLConfig(StrictConfig):
    """SPCL keys (all prefixed ``spcl_`` so they never collide with model or train keys)."""

    spcl_epsilon: float = Field(0.8, gt=0.0)        # lambda_0 (Table 2: [0.6, 1.2]; Table 6 0.8)
    spcl_alpha: float = Field(1.1, gt=0.0)          # Eq. (8) growth (Table 2: [1.05, 1.4])
    spcl_regularizer: Literal["hard", "linear", "logistic"] = "hard"
    spcl_pacing: Literal["exponential", "cosine", "moving_average", "competence"] = "exponential"
    spcl_difficulty: Literal["full", "without_utterance", "without_conversation"] = "full"
    spcl_normalise: Literal["kept", "all"] = "kept"  # Eq. (11) / the released code's mean
    spcl_std: Literal["sample", "population"] = "sample"
    spcl_pacing_epochs: Optional[int] = Field(None, ge=1)  # T of Table 8; None = the run's epochs
    spcl_lambda_max: Optional[float] = Field(None, gt=0.0)   # cosine lmax; None = eps * alpha^T
    spcl_ma_momentum: float = Field(0.9, gt=0.0, lt=1.0)
    spcl_ma_switch: Optional[int] = Field(None, ge=1)        # t0; None = T // 2
    spcl_competence_c0: float = Field(0.01, gt=0.0, le=1.0)
    spcl_lambda_cap: Optional[float] = Field(None, gt=0.0)   # released code: 60


class BucketCLConfig(StrictConfig):
    """Bucket-curriculum keys (prefixed ``cl_`` so they never collide with model or train keys)."""

    cl_buckets: int = Field(5, ge=1)                    # k (Table 4: IEMOCAP 5, MELD 12)
    cl_split: Literal["ceil", "even"] = "ceil"          # released: ceil(D / k) per bucket
    cl_epochs_per_step: int = Field(1, ge=1)            # epochs before the next bucket joins


class Ada2IStrategyConfig(StrictConfig):
    """Keys of the ``ada2i`` strategy (prefixed ``ada2i_``)."""

    ada2i_alpha: float = Field(0.037, ge=0.0)     # Eq. (18) alpha = Table 2 "eta" (IEMOCAP)
    ada2i_modulate: bool = True                   # False: Table 5 "w/o training optimisation"
    ada2i_noise: bool = True                      # Eq. (19) (released --normalize)
    ada2i_start_epoch: int = Field(4, ge=1)       # released start_mod (1-based)
    ada2i_end_epoch: Optional[int] = Field(None, ge=1)   # released end_mod; None = no end
    ada2i_score: Literal["linear", "output"] = "linear"


class RNAConfig(WindowConfig):
    """RNA loss keys."""

    rna_weight: float = Field(1.0, ge=0.0)
    rna_target: Literal["auto", "features", "logits"] = "auto"
    rna_start_epoch: int = Field(0, ge=0)
    rna_end_epoch: Optional[int] = Field(None, ge=1)


class OGMGEConfig(WindowConfig):
    """OGM-GE keys."""

    ogm_alpha: float = Field(0.5, gt=0.0)
    ogm_ge: bool = True
    ogm_start_epoch: int = Field(0, ge=0)
    ogm_end_epoch: Optional[int] = Field(50, ge=1)


class OPMConfig(WindowConfig):
    """OPM keys."""

    opm_lambda: float = Field(0.5, gt=0.0, le=1.0)
    opm_start_epoch: int = Field(0, ge=0)
    opm_end_epoch: Optional[int] = Field(None, ge=1)


class FAGMConfig(WindowConfig):
    """FAGM keys."""

    fagm_gamma: float = Field(0.5, gt=0.0)
    fagm_beta: float = Field(1.0, gt=0.0, le=1.0)
    fagm_tau: int = Field(1, ge=1)
    fagm_temperature: float = Field(0.1, gt=0.0)
    fagm_shared: bool = True
    fagm_start_epoch: int = Field(0, ge=0)
    fagm_end_epoch: Optional[int] = Field(None, ge=1)
