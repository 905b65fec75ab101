"""MultiDAG+CL's typed config; the network is :mod:`merc.models.multidag`. Kept apart from it so
that validating a config imports no torch."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from merc.config import ModelConfig


class MultiDAGConfig(ModelConfig):
    """MultiDAG hyperparameters (released names in comments)."""

    hidden_size: int = Field(300, ge=1)                 # hidden_dim = 300
    dag_layers: int = Field(4, ge=1)                    # gnn_layers (paper: IEMOCAP 4, MELD 2)
    mlp_layers: int = Field(2, ge=1)                    # mlp_layers = 2
    dropout: float = Field(0.4, ge=0.0, lt=1.0)         # before the output layer only
    speaker_window: int = Field(1, ge=-1)               # windowp; -1 = every earlier utterance
    use_relations: bool = True                          # W_0 / W_1 per speaker relation (eq. 4)
    classifier_reads_features: bool = True             # released H.append(features)
    modality_encoder: Literal["none", "paper"] = "none"  # released: none; eq. (1): paper
    encoder_size: int = Field(300, ge=2)                # per-modality width with "paper"

    @field_validator("speaker_window")
    @classmethod
    def _window(cls, v: int) -> int:
        if v == 0:
            raise ValueError("speaker_window must be >= 1 (turns of the speaker to reach back "
                             "to) or -1 (every earlier utterance), found 0")
        return v

    # Sec. 3.2 (IEMOCAP lr 5e-4, dropout 0.4, 30 epochs, 4 layers; MELD lr 1e-5, dropout 0.1,
    # 60 epochs, 2 layers) + the released run.py / README: hidden 300, batch 16, transformers
    # AdamW (weight decay 0), gradient-norm clipping 5, plain cross-entropy (no class weights).
    # MELD batch size: the paper and README are silent; DAG-ERC's MELD command uses 64.
    # IEMOCAP-4 is not in the paper; it gets the IEMOCAP values.
    PAPER_DEFAULTS = {
        "iemocap6": {"lr": 5e-4, "dropout": 0.4, "epochs": 30, "dag_layers": 4,
                     "batch_size": 16, "optimizer": "adamw", "weight_decay": 0.0,
                     "clip_grad_norm": 5.0, "class_weights": False, "hidden_size": 300},
        "iemocap4": {"lr": 5e-4, "dropout": 0.4, "epochs": 30, "dag_layers": 4,
                     "batch_size": 16, "optimizer": "adamw", "weight_decay": 0.0,
                     "clip_grad_norm": 5.0, "class_weights": False, "hidden_size": 300},
        "meld": {"lr": 1e-5, "dropout": 0.1, "epochs": 60, "dag_layers": 2,
                 "batch_size": 64, "optimizer": "adamw", "weight_decay": 0.0,
                 "clip_grad_norm": 5.0, "class_weights": False, "hidden_size": 300},
    }
