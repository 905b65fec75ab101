"""MMGCN as an SPCL late-fusion backbone.

Hu et al., "MMGCN: Multimodal Fusion via Deep Graph Convolution Network for Emotion Recognition in
Conversation", ACL 2021; used by SPCL (Nguyen et al., NCAA 2026, sec. 4.2, ``papers/spcl.md``) with
per-modality classifier heads giving z^m (SPCL Eq. (1)) summed into the joint logit (SPCL Eq. (2)).

What (``encoder="released"``, the default: the SPCL copy ``code/backbone/MMGCN.py`` at its
defaults, 34,801,698 parameters at a512/t768/v1024, hidden 200, 6 classes, pinned by
``tests/test_backbones.py``):
1. per-modality encoders: 2 Transformer encoder layers at the input width (FFN 2048, heads = the
   first h in 5..14 dividing d) then ``Linear(d, hidden)`` (:class:`InputWidthTransformer`);
   ``encoder="mmgcn"``: the original's BiLSTM for text and a Linear map for audio / visual;
   ``encoder="light"``: the lighter structure this project used before (``Linear(d, hidden)`` then
   one Transformer layer at ``hidden``, 4 heads, FFN 2 x hidden; plain GCNII);
2. a speaker embedding (MMGCN sec. 3.2): the SPCL copy creates ``Embedding(S, hidden)`` and never
   applies it - created here too (``encoder="released"``; it gets no gradient), applied to the text
   nodes only with ``use_speaker=True`` (the original's ``--use_speaker``);
3. one multimodal graph per batch (MMGCN sec. 3.3): node per (utterance, modality); within a
   modality every pair of utterances of the same dialogue is joined, across modalities only the
   nodes of the same utterance; edge weights A_ij = 1 - arccos(sim(n_i, n_j)) / pi (MMGCN Eq. (4),
   the cosine shrunk by 0.99999 as in the code) and symmetric normalisation
   P = D^{-1/2} A D^{-1/2} (MMGCN Eq. (5));
4. ``GCNII_lyc``: x = dropout(nodes), H^(0) = ReLU(W_0 x + b_0), then a GCNII stack (MMGCN Eqs.
   (6)-(7)) H^(l+1) = ReLU(GCNII_l(dropout(H^(l)))), a = 0.1, lambda = 0.5, in GCNII's ``variant``
   form (``gcn_variant``, default on except for ``light``), and the output [x ; dropout(H^(L))];
5. per modality m a ``Linear(2 hidden, C)`` on its nodes -> z^m (SPCL Eq. (1)), summed (Eq. (2)).

Remaining differences from the release: the encoders mask padding (the release attends over the
zero rows of padded dialogues); the adjacency is built in dense per-dialogue blocks instead of one
[MU, MU] matrix (same values, ``tests/test_backbones.py``); ``extras["features_<m>"]`` carries the
head inputs (for the RNA plug-in).

Speed: the graph is fully connected inside each dialogue (n^2 edges per modality), so instead of
one PyG message per edge the adjacency is kept in dense per-dialogue blocks
(:class:`merc.models.backbones._common.DenseMultimodalAdjacency`); it is the same graph and the same
weights as the edge-list builders ``multimodal_graph`` / ``angular_norm_weights`` (checked in
``tests/test_backbones.py``), about 10x faster on CPU. The released encoders are >90% of a step;
``kernels="fused"`` (default) runs them packed (position-wise layers on the real utterances only,
attention of each dialogue on its own rows, :func:`merc.models.packed.encoder_packed`),
and the GCNII stack, dropouts and heads on the packed nodes too (only the propagation P h pads them
into the dialogue blocks, :class:`~merc.models.backbones._common.PackedAdjacency`), equal to
``kernels="modules"`` (padded ``nn.TransformerEncoder``) to 1e-5 on logits and gradients
(``tests/test_backbones_fused.py``; its dropouts have the same distribution, not the same random
stream). ``autocast_bf16`` (opt-in): the encoders' matmuls in bf16, attention scores, adjacency,
GCNII and heads in fp32.

Pitfalls of the reference code turned into explicit config values:
* Depth: the original builds ``MM_GCN`` with ``nlayers=64`` *hard-coded* (its ``--Deep_GCN_nlayers 4``
  is ignored for graph_type MMGCN), while the SPCL copy passes ``encoder_nlayers`` (default 2) as
  both the encoder and the GCN depth. ``gcn_layers`` / ``encoder_layers`` default to SPCL's 2
  (``encoder_layers`` 1 for ``light`` / ``mmgcn``); set ``gcn_layers=64`` for the original's depth.
* Edge-weight gradients: the original computes the similarities from the (trainable) encoder
  outputs without detaching, so gradients flow through the adjacency; kept (``detach_adjacency``
  switches it off).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from merc.configs.backbones import MMGCNConfig
from merc.data.dataset import Batch, DatasetMeta
from merc.models.backbones._common import (DenseMultimodalAdjacency, GCNIILayer,
                                           InputWidthTransformer, PackedAdjacency, SequenceEncoder,
                                           bf16_autocast, dropout, late_fusion_output)
from merc.models.base import MercModel, Output, register_model
from merc.models.kernels import fused as use_fused
from merc.models.packed import Packing


class MultimodalGraphEncoder(nn.Module):
    """Steps 1-3 of the module docstring, shared with MM-DFN: encoders, speaker embedding, the
    multimodal graph and its normalised angular weights."""

    def __init__(self, meta: DatasetMeta, cfg, kind: str):
        super().__init__()
        h = cfg.hidden_size
        self.modalities = tuple(meta.modalities)
        if not self.modalities:
            raise ValueError(f"{kind} needs at least one modality")
        released = cfg.encoder == "released"
        layers = cfg.encoder_layers or (2 if released else 1)
        self.encoders = nn.ModuleDict()
        for m in self.modalities:
            if released:
                enc = InputWidthTransformer(meta.dims[m], h, layers, cfg.dropout, cfg.encoder_ff,
                                            cfg.encoder_heads)
            elif cfg.encoder == "light":
                enc = SequenceEncoder("transformer", meta.dims[m], h, cfg.dropout, layers,
                                      cfg.encoder_heads or 4)
            elif m == "text":     # original: text Linear + BiLSTM (2 x h/2 -> h)
                enc = SequenceEncoder("lstm", meta.dims[m], h // 2, cfg.dropout, layers)
            else:                 # original: audio / visual Linear only
                enc = SequenceEncoder("linear", meta.dims[m], h, cfg.dropout)
            self.encoders[m] = enc
        self.dim = min(e.out_dim for e in self.encoders.values())
        self.align = nn.ModuleDict({m: nn.Linear(e.out_dim, self.dim)
                                    for m, e in self.encoders.items() if e.out_dim != self.dim})
        # released: Embedding(S, hidden) created and never applied; use_speaker applies it
        self.speaker = (nn.Embedding(max(meta.num_speakers, 1), self.dim)
                        if released or (cfg.use_speaker and "text" in self.modalities) else None)
        self.use_speaker = cfg.use_speaker and "text" in self.modalities
        self.detach_adjacency = cfg.detach_adjacency
        self.kernels, self.bf16 = cfg.kernels, cfg.autocast_bf16

    @property
    def fused(self) -> bool:
        return use_fused(self.kernels)

    def encode(self, m: str, batch: Batch, pk: Packing) -> torch.Tensor:
        """Modality m's encoder output: fused [U, e] (packed), modules [B, N, e]."""
        enc = self.encoders[m]
        with bf16_autocast(batch.mask.device, self.bf16):
            if self.fused and isinstance(enc, InputWidthTransformer):
                x = enc.forward_packed(pk.unpad(batch.features[m]), pk, batch.mask)
            else:
                x = enc(batch.features[m], batch.mask, batch.lengths)
                x = pk.unpad(x) if self.fused else x
        return x.float()

    def forward(self, batch: Batch) -> tuple[torch.Tensor, DenseMultimodalAdjacency
                                             | PackedAdjacency]:
        """Node features and the normalised adjacency: modules [M, B, N, d] (zero at padding);
        fused [M, U, d] (packed) with a :class:`PackedAdjacency`."""
        mask = batch.mask
        pk = Packing(mask)
        speakers = pk.unpad(batch.speakers) if self.fused else batch.speakers
        rows = []
        for m in self.modalities:
            x = self.encode(m, batch, pk)
            if m in self.align:
                x = self.align[m](x)
            if m == "text" and self.use_speaker:
                x = x + self.speaker(speakers)                       # MMGCN: speaker on text only
            rows.append(x if self.fused else x * mask[..., None])
        nodes = torch.stack(rows, 0)
        feats = nodes.detach() if self.detach_adjacency else nodes
        if self.fused:
            return nodes, PackedAdjacency(DenseMultimodalAdjacency(pk.pad(feats, lead=1), mask),
                                          pk)                       # MMGCN Eqs. (4)-(5)
        return nodes, DenseMultimodalAdjacency(feats, mask)          # MMGCN Eqs. (4)-(5)


def split_heads(h: torch.Tensor, modalities: tuple[str, ...], heads: nn.ModuleDict,
                mask: torch.Tensor, pk: Optional[Packing] = None) -> Output:
    """Per-modality classifier heads on node features [M, B, N, c] (or packed [M, U, c] with
    ``pk``) -> late-fusion Output (the head inputs ride along as ``extras["features_<m>"]``)."""
    if pk is not None:
        z = {m: pk.pad(heads[m](h[k])) for k, m in enumerate(modalities)}
        feats = {f"features_{m}": pk.pad(h[k]) for k, m in enumerate(modalities)}
    else:
        z = {m: heads[m](h[k]) * mask[..., None] for k, m in enumerate(modalities)}
        feats = {f"features_{m}": h[k] for k, m in enumerate(modalities)}
    out = late_fusion_output(z)                                     # SPCL Eqs. (1)-(2)
    out.extras.update(feats)
    return out


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
        variant = cfg.gcn_variant if cfg.gcn_variant is not None else cfg.encoder != "light"
        self.fc_in = nn.Linear(d, h)                                 # GCNII input layer
        self.convs = nn.ModuleList(GCNIILayer(h, cfg.gcn_alpha, cfg.gcn_lambda, l + 1, variant)
                                   for l in range(cfg.gcn_layers))
        self.drop = nn.Dropout(cfg.dropout)
        self.heads = self.build_heads(d, h, meta.num_classes)

    def build_heads(self, d: int, h: int, num_classes: int) -> nn.ModuleDict:
        """MMGCN's per-modality ``uni_fc``: Linear([encoder ; graph] -> C)."""
        return nn.ModuleDict({m: nn.Linear(d + h, num_classes) for m in self.modalities})

    def unused_parameters(self) -> set[str]:
        """The released speaker table is created and never applied (see the module docstring)."""
        released = self.config.encoder == "released"
        return {"graph.speaker.weight"} if released and not self.graph.use_speaker else set()

    def forward(self, batch: Batch) -> Output:
        nodes, adj = self.graph(batch)
        pk = adj.pk if isinstance(adj, PackedAdjacency) else None
        x = self.dropout(nodes)                                      # GCNII_lyc's input dropout
        h = self.propagate(torch.relu(self.fc_in(x)), adj)
        out = torch.cat([x, self.dropout(h)], -1)                    # use_residue: [x ; H^(L)]
        return self.fuse(out, batch, pk)

    def dropout(self, x: torch.Tensor) -> torch.Tensor:
        """``self.drop``; fused: the same distribution from one uniform per element."""
        return dropout(x, self.drop.p, self.training) if self.graph.fused else self.drop(x)

    def fuse(self, out: torch.Tensor, batch: Batch, pk: Optional[Packing]) -> Output:
        """Per-modality heads on [encoder ; graph] node features [M, B, N, d + h] / [M, U, d + h]."""
        return split_heads(out, self.modalities, self.heads, batch.mask, pk)

    def propagate(self, h0: torch.Tensor, adj) -> torch.Tensor:
        """The deep GCNII stack over the multimodal graph."""
        h = h0
        for conv in self.convs:                                      # MMGCN Eqs. (6)-(7)
            h = torch.relu(conv(self.dropout(h), h0, adj))
        return h
