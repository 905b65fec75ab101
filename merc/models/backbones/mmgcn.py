"""MMGCN as an SPCL late-fusion backbone.

Hu et al., "MMGCN: Multimodal Fusion via Deep Graph Convolution Network for Emotion Recognition in
Conversation", ACL 2021; used by SPCL (Nguyen et al., NCAA 2026, sec. 4.2, ``papers/spcl.md``) with
per-modality classifier heads giving z^m (SPCL Eq. (1)) summed into the joint logit (SPCL Eq. (2)).

What:
1. per-modality encoders to ``hidden_size`` (``encoder="transformer"``: the SPCL copy's Transformer
   encoder per modality; ``encoder="mmgcn"``: the original's BiLSTM for text and a Linear map for
   audio / visual);
2. optional speaker embedding added to the *text* nodes (MMGCN sec. 3.2, ``--use_speaker``);
3. one multimodal graph per batch (MMGCN sec. 3.3): node per (utterance, modality); within a
   modality every pair of utterances of the same dialogue is joined, across modalities only the
   nodes of the same utterance; edge weights A_ij = 1 - arccos(sim(n_i, n_j)) / pi (MMGCN Eq. (4),
   the cosine shrunk by 0.99999 as in the code) and symmetric normalisation
   P = D^{-1/2} A D^{-1/2} (MMGCN Eq. (5));
4. a deep GCNII stack (MMGCN Eqs. (6)-(7), the update of PyG ``GCN2Conv``): H^(l+1) = ReLU(((1 - a) P H^(l) +
   a H^(0)) ((1 - b_l) I + b_l W^(l))), a = 0.1, b_l = log(lambda / l + 1), lambda = 0.5, after a
   Linear + ReLU input layer;
5. per modality m a classifier on [encoder feature ; graph feature] of its nodes -> z^m.

Speed: the graph is fully connected inside each dialogue (n^2 edges per modality), so instead of
one PyG message per edge the adjacency is kept in dense per-dialogue blocks
(:class:`merc.models.backbones._common.DenseMultimodalAdjacency`); it is the same graph and the same
weights as the edge-list builders ``multimodal_graph`` / ``angular_norm_weights`` (checked in
``tests/test_backbones.py``), about 10x faster on CPU.

Pitfalls of the reference code turned into explicit config values:
* Depth: the original builds ``MM_GCN`` with ``nlayers=64`` *hard-coded* (its ``--Deep_GCN_nlayers 4``
  is ignored for graph_type MMGCN), while the SPCL copy passes ``encoder_nlayers`` (default 2).
  ``gcn_layers`` defaults to SPCL's 2; set 64 for the original's depth.
* Speaker embedding: the SPCL copy creates speaker embeddings but never applies them
  (``use_speaker=False``, the default, reproduces that; the unused table is not created so every
  parameter receives a gradient). ``use_speaker=True`` adds them to the text nodes as the original.
* Edge-weight gradients: the original computes the similarities from the (trainable) encoder
  outputs without detaching, so gradients flow through the adjacency; kept (``detach_adjacency``
  switches it off).
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn
from merc.config import ModelConfig
from merc.data.dataset import Batch, DatasetMeta
from merc.models.backbones._common import (DenseMultimodalAdjacency, GCNIILayer, SequenceEncoder,
                                           late_fusion_output)
from merc.models.backbones.dialoguegcn import SPCL_IEMOCAP, SPCL_MELD
from merc.models.base import MercModel, Output, register_model


class MMGCNConfig(ModelConfig):
    """MMGCN hyperparameters (late fusion per SPCL)."""

    hidden_size: int = Field(200, ge=1)
    dropout: float = Field(0.5, ge=0.0, lt=1.0)
    encoder: Literal["transformer", "mmgcn"] = "transformer"   # SPCL copy / original
    encoder_layers: int = Field(1, ge=1)
    encoder_heads: int = Field(4, ge=1)
    gcn_layers: int = Field(2, ge=1)          # SPCL: encoder_nlayers = 2; original: 64 hard-coded
    gcn_alpha: float = Field(0.1, ge=0.0, le=1.0)    # GCNII initial-residual weight (MMGCN 0.1)
    gcn_lambda: float = Field(0.5, gt=0.0)           # GCNII identity-mapping lambda (MMGCN 0.5)
    use_speaker: bool = False                 # SPCL copy: created, never applied
    detach_adjacency: bool = False            # original: similarities carry gradients

    PAPER_DEFAULTS = {"iemocap6": SPCL_IEMOCAP, "iemocap4": SPCL_IEMOCAP, "meld": SPCL_MELD}


class MultimodalGraphEncoder(nn.Module):
    """Steps 1-3 of the module docstring, shared with MM-DFN: encoders, speaker embedding, the
    multimodal graph and its normalised angular weights."""

    def __init__(self, meta: DatasetMeta, cfg, kind: str):
        super().__init__()
        h = cfg.hidden_size
        self.modalities = tuple(meta.modalities)
        if not self.modalities:
            raise ValueError(f"{kind} needs at least one modality")
        self.encoders = nn.ModuleDict()
        for m in self.modalities:
            if cfg.encoder == "transformer":
                enc = SequenceEncoder("transformer", meta.dims[m], h, cfg.dropout,
                                      cfg.encoder_layers, cfg.encoder_heads)
            elif m == "text":     # original: text Linear + BiLSTM (2 x h/2 -> h)
                enc = SequenceEncoder("lstm", meta.dims[m], h // 2, cfg.dropout, cfg.encoder_layers)
            else:                 # original: audio / visual Linear only
                enc = SequenceEncoder("linear", meta.dims[m], h, cfg.dropout)
            self.encoders[m] = enc
        self.dim = min(e.out_dim for e in self.encoders.values())
        self.align = nn.ModuleDict({m: nn.Linear(e.out_dim, self.dim)
                                    for m, e in self.encoders.items() if e.out_dim != self.dim})
        self.speaker = (nn.Embedding(max(meta.num_speakers, 1), self.dim)
                        if cfg.use_speaker and "text" in self.modalities else None)
        self.detach_adjacency = cfg.detach_adjacency

    def forward(self, batch: Batch) -> tuple[torch.Tensor, DenseMultimodalAdjacency]:
        """Node features [M, B, N, d] (zero at padding) and the normalised adjacency."""
        mask = batch.mask
        rows = []
        for m in self.modalities:
            x = self.encoders[m](batch.features[m], mask, batch.lengths)
            if m in self.align:
                x = self.align[m](x)
            if m == "text" and self.speaker is not None:
                x = x + self.speaker(batch.speakers)               # MMGCN: speaker on text only
            rows.append(x * mask[..., None])
        nodes = torch.stack(rows, 0)
        feats = nodes.detach() if self.detach_adjacency else nodes
        return nodes, DenseMultimodalAdjacency(feats, mask)          # MMGCN Eqs. (4)-(5)


def split_heads(h: torch.Tensor, modalities: tuple[str, ...], heads: nn.ModuleDict,
                mask: torch.Tensor) -> Output:
    """Per-modality classifier heads on node features [M, B, N, c] -> late-fusion Output."""
    z = {m: heads[m](h[k]) * mask[..., None] for k, m in enumerate(modalities)}
    return late_fusion_output(z)                                    # SPCL Eqs. (1)-(2)


@register_model("mmgcn", MMGCNConfig, paper="Hu et al., ACL 2021 (as an SPCL late-fusion backbone)")
class MMGCN(MercModel):
    """Late-fusion MMGCN (see the module docstring)."""

    config: MMGCNConfig
    graph_name = "MMGCN"

    def __init__(self, config: MMGCNConfig, meta: DatasetMeta):
        super().__init__(config, meta)
        cfg = config
        self.graph = MultimodalGraphEncoder(meta, cfg, self.graph_name)
        d, h = self.graph.dim, cfg.hidden_size
        self.modalities = self.graph.modalities
        self.fc_in = nn.Linear(d, h)                                 # GCNII input layer
        self.convs = nn.ModuleList(GCNIILayer(h, cfg.gcn_alpha, cfg.gcn_lambda, l + 1)
                                   for l in range(cfg.gcn_layers))
        self.drop = nn.Dropout(cfg.dropout)
        self.heads = nn.ModuleDict({m: nn.Linear(d + h, meta.num_classes)
                                    for m in self.modalities})

    def forward(self, batch: Batch) -> Output:
        nodes, adj = self.graph(batch)
        h0 = torch.relu(self.fc_in(self.drop(nodes)))
        h = self.propagate(h0, adj)
        out = self.drop(torch.cat([nodes, h], -1))                   # [encoder ; graph] per node
        return split_heads(out, self.modalities, self.heads, batch.mask)

    def propagate(self, h0: torch.Tensor, adj) -> torch.Tensor:
        """The deep GCNII stack over the multimodal graph."""
        h = h0
        for conv in self.convs:                                      # MMGCN Eqs. (6)-(7)
            h = torch.relu(conv(self.drop(h), h0, adj))
        return h
