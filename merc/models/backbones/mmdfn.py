"""MM-DFN as an SPCL late-fusion backbone.

Hu et al., "MM-DFN: Multimodal Dynamic Fusion Network for Emotion Recognition in Conversations",
ICASSP 2022; used by SPCL (Nguyen et al., NCAA 2026, sec. 4.2, ``papers/spcl.md``) with
per-modality heads giving z^m (SPCL Eq. (1)) summed into the joint logit (SPCL Eq. (2)).

What: the same modality encoders and multimodal graph as MMGCN
(:class:`merc.models.backbones.mmgcn.MultimodalGraphEncoder`: within-modality edges across the
dialogue, cross-modal edges for the same utterance, angular weights, symmetric normalisation),
followed by MM-DFN's *graph-based dynamic fusion* (GDF, MM-DFN sec. 2.3): every layer l

* aggregates over the graph with GCNII's initial residual and identity mapping (as the GDF code,
  built on MMGCN's GCNII): C^(l) = ((1 - a) P H^(l-1) + a H^(0)) ((1 - b_l) I + b_l W^(l));
* filters it against the previous layer with gates (the "dynamic" part that discards redundant
  and keeps complementary information across layers): a GRU-style update gate
  u = sigma(W_u [C; H^(l-1)]), reset gate r = sigma(W_r [C; H^(l-1)]),
  candidate H~ = tanh(W_c [C; r * H^(l-1)]), H^(l) = u * H^(l-1) + (1 - u) * H~
  (one ``nn.GRUCell`` per layer with input C^(l) and hidden H^(l-1));

then a per-modality classifier on [encoder feature ; H^(L)].

Choices / pitfalls as config values:
* ``gcn_layers``: the SPCL copy passes ``encoder_nlayers`` (default 2); the MM-DFN scripts grid over
  16 / 32. Default 2 (SPCL).
* ``use_speaker``: as MMGCN, the SPCL copy never applies the speaker embedding (default False).
* The gate's exact parameterisation in MM-DFN is a GRU-like cell over the layer axis; we use
  ``nn.GRUCell`` (PyTorch's gate layout) rather than re-deriving the released weight layout.
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn
from merc.config import ModelConfig
from merc.data.dataset import DatasetMeta
from merc.models.backbones.dialoguegcn import SPCL_IEMOCAP, SPCL_MELD
from merc.models.backbones.mmgcn import MMGCN
from merc.models.base import register_model


class MMDFNConfig(ModelConfig):
    """MM-DFN hyperparameters (late fusion per SPCL)."""

    hidden_size: int = Field(200, ge=1)
    dropout: float = Field(0.5, ge=0.0, lt=1.0)
    encoder: Literal["transformer", "mmgcn"] = "transformer"   # SPCL copy / MMGCN-style original
    encoder_layers: int = Field(1, ge=1)
    encoder_heads: int = Field(4, ge=1)
    gcn_layers: int = Field(2, ge=1)          # SPCL: 2; MM-DFN scripts: 16 / 32
    gcn_alpha: float = Field(0.1, ge=0.0, le=1.0)
    gcn_lambda: float = Field(0.5, gt=0.0)
    use_speaker: bool = False                 # SPCL copy: never applied
    detach_adjacency: bool = False

    PAPER_DEFAULTS = {"iemocap6": SPCL_IEMOCAP, "iemocap4": SPCL_IEMOCAP, "meld": SPCL_MELD}


@register_model("mmdfn", MMDFNConfig, paper="Hu et al., ICASSP 2022 (as an SPCL late-fusion backbone)")
class MMDFN(MMGCN):
    """Late-fusion MM-DFN: MMGCN's graph and GCNII stack with gated filtering across layers."""

    config: MMDFNConfig
    graph_name = "MM-DFN"

    def __init__(self, config: MMDFNConfig, meta: DatasetMeta):
        super().__init__(config, meta)
        h = config.hidden_size
        self.gates = nn.ModuleList(nn.GRUCell(h, h) for _ in range(config.gcn_layers))

    def propagate(self, h0: torch.Tensor, adj) -> torch.Tensor:
        h = h0
        for conv, gate in zip(self.convs, self.gates):
            c = torch.relu(conv(self.drop(h), h0, adj))              # graph aggregation C^(l)
            # gated filtering across layers: GRUCell(input C^(l), hidden H^(l-1)) per node
            h = gate(c.reshape(-1, c.shape[-1]), h.reshape(-1, h.shape[-1])).view_as(c)
        return h
