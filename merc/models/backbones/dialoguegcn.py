"""DialogueGCN as an SPCL late-fusion backbone.

Ghosal et al., "DialogueGCN: A Graph Convolutional Neural Network for Emotion Recognition in
Conversation", EMNLP 2019; used per modality by SPCL (Nguyen et al., NCAA 2026, sec. 4.2,
``papers/spcl.md``), whose uni-modal logits z^m (SPCL Eq. (1)) are summed into the joint logit
(SPCL Eq. (2)).

What, per modality m (one independent branch each):
1. sequential context encoder over the dialogue (DialogueGCN sec. 3.2: bidirectional GRU,
   g_i = GRU(g_{i±1}, u_i)); ``context_encoder="transformer"`` is the SPCL copy's COGMEN-style
   Transformer ``SeqContext`` instead;
2. a graph on the utterances where node i receives from the utterances in its window
   [i - window_past, i + window_future] (inclusive, with the self loop, as the original
   ``edge_perms``), built with :mod:`merc.graphs` for the whole batch;
3. edge attention (DialogueGCN Eq. (1)): alpha_ij = softmax_{j in window(i)} (g_i^T W_e g_j);
4. relational graph convolution (DialogueGCN Eq. (2)) with 2 * S^2 relations (speaker of the source,
   speaker of the target, source before / after the target) and basis decomposition
   (``num_bases=30`` as the original), messages weighted by alpha_ij (the original passes alpha as
   its ``edge_norm``), plus the root (self) weight;
5. a second, relation-free graph convolution (DialogueGCN Eq. (3), PyG ``GraphConv``);
6. classifier on [g_i ; h_i] (DialogueGCN Eqs. (4)-(5)): Linear-ReLU-dropout-Linear -> z^m.

Pitfalls of the reference code turned into explicit choices:
* The original (and the SPCL copy's ``EdgeAtt``) computes attention scores with a
  ``Linear(D, max_seq_len=110)`` readout, so dialogues longer than 110 utterances break it. Here
  the scores are the bilinear form of the paper's Eq. (1) over each node's window edges (PyG
  ``softmax`` grouped by receiving node): no length limit, no buffer.
* Windows: ``window_past`` / ``window_future`` = 2 / 2 are the SPCL launch defaults (``wp=wf=2``);
  the original DialogueGCN uses 10 / 10. ``-1`` = unbounded.
* PyG's ``RGCNConv`` takes no edge weights; :class:`AttentiveRGCNConv` subclasses it, keeps its
  parameters (bases, coefficients, root, bias) and computes sum_r sum_j alpha_ij W_r g_j itself
  (``aggr="add"``: alpha already normalises over the neighbourhood, as the original's edge_norm).
* The original's optional "nodal attention" over the whole dialogue (``--nodal-attention``) is not
  part of the SPCL copy and is omitted.
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn
from torch_geometric.nn import GraphConv, RGCNConv
from torch_geometric.utils import softmax

from merc.config import ModelConfig
from merc.data.dataset import Batch, DatasetMeta
from merc.models.backbones._common import (SequenceEncoder, cached_window_edges,
                                           late_fusion_output, speaker_relation_types, to_padded)
from merc.models.base import MercModel, Output, register_model

#: SPCL Table 2 / the SPCL launch defaults shared by the four backbones
SPCL_IEMOCAP = {"lr": 2e-4, "optimizer": "adam", "batch_size": 16, "epochs": 50,
                "clip_grad_norm": 2.0, "dropout": 0.5, "hidden_size": 200}
SPCL_MELD = SPCL_IEMOCAP | {"batch_size": 32}


class DialogueGCNConfig(ModelConfig):
    """DialogueGCN branch hyperparameters (one branch per modality)."""

    hidden_size: int = Field(200, ge=1)            # SPCL hidden 200 (original D_g = 100ish)
    dropout: float = Field(0.5, ge=0.0, lt=1.0)
    context_encoder: Literal["gru", "transformer"] = "gru"   # paper GRU; SPCL copy: transformer
    encoder_layers: int = Field(1, ge=1)
    encoder_heads: int = Field(4, ge=1)            # transformer only
    window_past: int = Field(2, ge=-1)             # SPCL wp=2 (original 10); -1 = unbounded
    window_future: int = Field(2, ge=-1)           # SPCL wf=2 (original 10)
    num_bases: int = Field(30, ge=1)               # RGCNConv(num_bases=30), original and SPCL

    PAPER_DEFAULTS = {"iemocap6": SPCL_IEMOCAP, "iemocap4": SPCL_IEMOCAP, "meld": SPCL_MELD}


class AttentiveRGCNConv(RGCNConv):
    """PyG ``RGCNConv`` (basis decomposition) whose messages are scaled by per-edge weights.

    out_i = W_root x_i + b + sum_{(j -> i)} w_ji W_{r(j,i)} x_j  (DialogueGCN Eq. (2) with the
    original's attention edge_norm in place of 1 / c_{i,r}).
    """

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor, edge_type: torch.Tensor,
                edge_weight: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        src, dst = edge_index
        R, nb = self.num_relations, self.num_bases
        if nb is not None and nb < R:
            # transform by the bases (U x nb x out) and mix per edge with its coefficients
            xb = torch.einsum("ni,bio->nbo", x, self.weight)
            msg = torch.einsum("eb,ebo->eo", self.comp[edge_type], xb[src])
        else:
            w = self.weight if nb is None else (self.comp @ self.weight.view(nb, -1)).view(
                R, self.in_channels_l, self.out_channels)
            xw = torch.einsum("ni,rio->nro", x, w)                  # [U, R, out]
            msg = xw[src, edge_type]
        out = torch.zeros(x.shape[0], self.out_channels, dtype=x.dtype, device=x.device)
        out = out.index_add(0, dst, msg * edge_weight[:, None])
        out = out + x @ self.root
        return out + self.bias if self.bias is not None else out


class DialogueGCNBranch(nn.Module):
    """One modality's DialogueGCN: context encoder, edge attention, RGCN + GraphConv, classifier."""

    def __init__(self, in_dim: int, cfg: DialogueGCNConfig, num_speakers: int, num_classes: int):
        super().__init__()
        h = cfg.hidden_size
        kind = cfg.context_encoder
        self.encoder = SequenceEncoder(kind, in_dim, h // 2 if kind == "gru" else h, cfg.dropout,
                                       cfg.encoder_layers, cfg.encoder_heads)
        e = self.encoder.out_dim
        self.num_speakers = max(num_speakers, 1)
        R = 2 * self.num_speakers ** 2
        self.att = nn.Linear(e, e, bias=False)                  # W_e of Eq. (1)
        self.rgcn = AttentiveRGCNConv(e, h, R, num_bases=cfg.num_bases, aggr="add")
        self.gconv = GraphConv(h, h)
        self.fc = nn.Linear(e + h, h)
        self.drop = nn.Dropout(cfg.dropout)
        self.out = nn.Linear(h, num_classes)

    def forward(self, x: torch.Tensor, batch: Batch, edge_index: torch.Tensor,
                edge_type: torch.Tensor) -> torch.Tensor:
        g = self.encoder(x, batch.mask, batch.lengths)[batch.mask]    # sequential context [U, e]
        src, dst = edge_index
        # Eq. (1): alpha_ij = softmax over i's window of g_i^T W_e g_j
        score = (self.att(g)[dst] * g[src]).sum(-1)
        alpha = softmax(score, dst, num_nodes=g.shape[0])
        h = self.rgcn(g, edge_index, edge_type, alpha)              # Eq. (2)
        h = self.gconv(h, edge_index)                               # Eq. (3)
        v = self.drop(torch.relu(self.fc(torch.cat([g, h], -1))))   # Eq. (4)
        return self.out(v)                                          # Eq. (5) logits, [U, C]


@register_model("dialoguegcn", DialogueGCNConfig,
                paper="Ghosal et al., EMNLP 2019 (as an SPCL late-fusion backbone)")
class DialogueGCN(MercModel):
    """Late-fusion DialogueGCN: one branch per modality, joint logit = sum (SPCL Eqs. (1)-(2))."""

    config: DialogueGCNConfig

    def __init__(self, config: DialogueGCNConfig, meta: DatasetMeta):
        super().__init__(config, meta)
        if not meta.modalities:
            raise ValueError("DialogueGCN needs at least one modality")
        self.modalities = tuple(meta.modalities)
        self.branches = nn.ModuleDict({m: DialogueGCNBranch(meta.dims[m], config, meta.num_speakers,
                                                            meta.num_classes)
                                       for m in self.modalities})

    def forward(self, batch: Batch) -> Output:
        cfg = self.config
        mask = batch.mask
        edge_index = cached_window_edges(batch.lengths, cfg.window_past, cfg.window_future,
                                         mask.device)
        num_spk = self.branches[self.modalities[0]].num_speakers
        edge_type = speaker_relation_types(edge_index, batch.speakers[mask].clamp(0, num_spk - 1),
                                           num_spk)
        z = {m: to_padded(self.branches[m](batch.features[m], batch, edge_index, edge_type), mask)
             for m in self.modalities}                              # SPCL Eq. (1)
        return late_fusion_output(z)                                # SPCL Eq. (2)
