"""CORECT's typed config (Nguyen et al., Findings of EMNLP 2023); the network is
:mod:`merc.models.corect`. Kept apart from it so that validating a config imports no torch."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from merc.config import ModelConfig


class CorectConfig(ModelConfig):
    """CORECT hyperparameters (names never clash with :class:`merc.train.TrainConfig`)."""

    hidden_size: int = Field(100, ge=1)                 # d of every unimodal feature (official 100)
    dropout: float = Field(0.5, ge=0.0, lt=1.0)         # A.3: 0.5 (text encoder + classifier)
    window_past: int = Field(11, ge=-1)                 # P (-1 = unbounded)
    window_future: int = Field(9, ge=-1)                # F (-1 = unbounded)
    window_semantics: Literal["paper", "reference"] = "paper"
    gt_heads: int = Field(7, ge=1)                      # A.3: Graph Transformer heads C = 7
    pcm_heads: int = Field(2, ge=1)                     # A.3: P-CM heads = 2
    pcm_layers: int = Field(2, ge=1)                    # D cross-modal layers (official 2)
    pcm_dropout: float = Field(0.0, ge=0.0, lt=1.0)     # official: all P-CM dropouts 0
    self_att_layers: int = Field(3, ge=0)               # official num_self_att = 3
    self_att_heads: int = Field(2, ge=1)                # official self_att_nheads = 2
    text_encoder_layers: int = Field(2, ge=1)           # official encoder_nlayers = 2
    text_encoder_heads: int = Field(0, ge=0)            # 0 = first h in 7..14 dividing the dim
    text_encoder_ff: int = Field(2048, ge=1)            # nn.TransformerEncoderLayer default
    speaker_ratio: float = Field(1.0, ge=0.0, le=1.0)   # eta of eq. 4
    use_rtgcn: bool = True
    use_pcm: bool = True
    use_multi_relations: bool = True                    # R_multi (cross-modal edges)
    use_temporal_relations: bool = True                 # R_temp (past / future edges)
    use_speaker: bool = True
    # How the same network is computed (not a hyperparameter): "fused" = packed (padding-free)
    # transformers and the banded RGCN / Graph Transformer of ``merc.models.corect_fused``, equal to
    # "modules" (the nn / PyG modules on padded batches and the edge list) up to float rounding.
    kernels: Literal["fused", "modules"] = "fused"
    # bf16 autocast of the matmuls: faster on CPUs with AVX512-BF16 / AMX but changes numerics, so
    # off by default (``python -m benchmarks run --only train`` times it against fp32).
    autocast_bf16: bool = False

    # Appendix A.3 + Fig. 4 (best [P, F] = [11, 9] on IEMOCAP-6; the official run_train.sh uses
    # wp=11 wf=5 with lr 2.5e-4 under its "reference" window rule). Batch = 10 dialogues, Adam.
    # epochs 50 as in the official script (the paper does not state it).
    PAPER_DEFAULTS = {
        "iemocap6": {"lr": 3e-4, "optimizer": "adam", "batch_size": 10, "epochs": 50,
                     "dropout": 0.5, "hidden_size": 100, "window_past": 11, "window_future": 9,
                     "gt_heads": 7, "pcm_heads": 2, "pcm_layers": 2, "self_att_layers": 3},
        "iemocap4": {"lr": 3e-4, "optimizer": "adam", "batch_size": 10, "epochs": 50,
                     "dropout": 0.5, "hidden_size": 100, "window_past": 11, "window_future": 9,
                     "gt_heads": 7, "pcm_heads": 2, "pcm_layers": 2, "self_att_layers": 3},
        "mosei": {"lr": 6e-4, "optimizer": "adam", "batch_size": 10, "epochs": 50,
                  "dropout": 0.5, "hidden_size": 100, "window_past": 5, "window_future": 4,
                  "gt_heads": 7, "pcm_heads": 2, "pcm_layers": 2, "self_att_layers": 3},
    }
