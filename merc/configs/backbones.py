"""Typed configs of SPCL's four late-fusion backbones (DialogueGCN, BiDDIN, MMGCN, MMDFN), with
the SPCL release's training defaults; the networks are in :mod:`merc.models.backbones`. Kept
apart from them so that validating a config imports no torch."""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field

from merc.config import ModelConfig


#: how the same network is computed (not a hyperparameter), as CORECT's ``kernels`` key:
#: "fused" = the packed / batched paths of each backbone, "modules" = nn modules on padded batches
Kernels = Literal["fused", "modules"]


#: the released SPCL code's Transformer FFN width (``nn.TransformerEncoderLayer``'s default)
RELEASED_FFN = 2048


#: SPCL Table 2 / the SPCL launch defaults shared by the four backbones
SPCL_IEMOCAP = {"lr": 2e-4, "optimizer": "adam", "batch_size": 16, "epochs": 50,
                "clip_grad_norm": 2.0, "dropout": 0.5, "hidden_size": 200}


SPCL_MELD = SPCL_IEMOCAP | {"batch_size": 32}


class DialogueGCNConfig(ModelConfig):
    """DialogueGCN branch hyperparameters (one branch per modality)."""

    hidden_size: int = Field(200, ge=1)            # SPCL hidden_dim 200 (g)
    hidden2_size: int = Field(150, ge=1)           # SPCL hidden2_dim 150 (graph / classifier)
    dropout: float = Field(0.5, ge=0.0, lt=1.0)
    encoder: Literal["released", "light"] = "released"      # SPCL copy / lighter structure
    context_encoder: Literal["gru", "transformer"] = "gru"   # light only: paper GRU / Transformer
    encoder_layers: Optional[int] = Field(None, ge=1)      # None: 2 (released), 1 (light)
    encoder_heads: Optional[int] = Field(None, ge=1)       # None: 1 (released trans_head), 4 (light)
    encoder_ff: int = Field(RELEASED_FFN, ge=1)            # released encoders' FFN width
    window_past: int = Field(2, ge=-1)             # SPCL wp=2 (original 10); -1 = unbounded
    window_future: int = Field(2, ge=-1)           # SPCL wf=2 (original 10)
    num_bases: int = Field(30, ge=1)               # RGCNConv(num_bases=30), original and SPCL
    # how the same network is computed (module docstring, "Speed"); not hyperparameters
    kernels: Kernels = "fused"                     # packed encoders; "modules": padded nn modules
    autocast_bf16: bool = False                    # encoders' matmuls in bf16 (opt-in)

    PAPER_DEFAULTS = {"iemocap6": SPCL_IEMOCAP, "iemocap4": SPCL_IEMOCAP, "meld": SPCL_MELD}


class BiDDINConfig(ModelConfig):
    """BiDDIN hyperparameters (late fusion per SPCL)."""

    hidden_size: int = Field(200, ge=2)       # released: D_g (global state); light: BiGRU width
    party_size: int = Field(150, ge=1)        # released D_p (SPCL hidden2_dim)
    emotion_size: int = Field(100, ge=1)      # released D_e (SPCL hidden3_dim)
    classifier_size: int = Field(100, ge=1)   # released D_h (SPCL hidden4_dim)
    dropout: float = Field(0.5, ge=0.0, lt=1.0)
    encoder: Literal["released", "light"] = "released"      # SPCL copy / lighter structure
    encoder_layers: int = Field(1, ge=1)      # light only
    causal_attention: bool = False            # light only
    # how the released network is computed (module docstring, "Speed"); not hyperparameters
    kernels: Kernels = "fused"                # all chains batched per step; "modules": per chain
    autocast_bf16: bool = False               # the utterance input projections in bf16 (opt-in)

    PAPER_DEFAULTS = {"iemocap6": SPCL_IEMOCAP, "iemocap4": SPCL_IEMOCAP, "meld": SPCL_MELD}


class MMGCNConfig(ModelConfig):
    """MMGCN hyperparameters (late fusion per SPCL)."""

    hidden_size: int = Field(200, ge=1)
    dropout: float = Field(0.5, ge=0.0, lt=1.0)
    encoder: Literal["released", "light", "mmgcn"] = "released"   # SPCL copy / lighter / original
    encoder_layers: Optional[int] = Field(None, ge=1)   # None: 2 (released), 1 (light, mmgcn)
    encoder_heads: Optional[int] = Field(None, ge=1)    # None: released rule (5..14) / 4 (light)
    encoder_ff: int = Field(RELEASED_FFN, ge=1)         # released encoders' FFN width
    gcn_layers: int = Field(2, ge=1)          # SPCL: encoder_nlayers = 2; original: 64 hard-coded
    gcn_alpha: float = Field(0.1, ge=0.0, le=1.0)    # GCNII initial-residual weight (MMGCN 0.1)
    gcn_lambda: float = Field(0.5, gt=0.0)           # GCNII identity-mapping lambda (MMGCN 0.5)
    gcn_variant: Optional[bool] = None        # None: True (released, mmgcn), False (light)
    use_speaker: bool = False                 # SPCL copy: created, never applied
    detach_adjacency: bool = False            # original: similarities carry gradients
    # how the same network is computed (module docstring, "Speed"); not hyperparameters
    kernels: Kernels = "fused"                # packed encoders; "modules": padded nn modules
    autocast_bf16: bool = False               # encoders' matmuls in bf16 (opt-in)

    PAPER_DEFAULTS = {"iemocap6": SPCL_IEMOCAP, "iemocap4": SPCL_IEMOCAP, "meld": SPCL_MELD}


class MMDFNConfig(MMGCNConfig):
    """MM-DFN hyperparameters (late fusion per SPCL): MMGCN's keys and defaults (MM-DFN is MMGCN's
    graph with gated fusion; its scripts use ``gcn_layers`` 16 / 32, SPCL 2)."""
