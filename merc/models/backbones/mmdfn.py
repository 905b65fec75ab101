"""MM-DFN as an SPCL late-fusion backbone.

Hu et al., "MM-DFN: Multimodal Dynamic Fusion Network for Emotion Recognition in Conversations",
ICASSP 2022; used by SPCL (Nguyen et al., NCAA 2026, sec. 4.2, ``papers/spcl.md``) with
per-modality heads giving z^m (SPCL Eq. (1)) summed into the joint logit (SPCL Eq. (2)).

What (``encoder="released"``, the default: the SPCL copy ``code/backbone/MM_DFN.py`` at its
defaults, 35,759,898 parameters at a512/t768/v1024, hidden 200, 6 classes, pinned by
``tests/test_backbones.py``): MMGCN's encoders, multimodal graph and ``GCNII_lyc`` stack
(:class:`merc.models.backbones.mmgcn.MMGCN`, steps 1-4: input-width Transformer encoders, angular
adjacency, GCNII ``variant``), giving per node g^m = [x^m ; H^m] (2 hidden), then MM-DFN's gated
cross-modal fusion after the graph (``MMGatedAttention`` of the SPCL copy; MM-DFN sec. 2.3's
"dynamic fusion" that keeps complementary and filters redundant information):

* h^m = dropout(ReLU(W_m g^m + b_m))                                    (2 hidden -> hidden)
* z^{mk} = sigma(W_{mk} [h^m ; h^k ; h^m * h^k] + b_{mk})                for every ordered m != k
* o^m = sum_{k != m} z^{mk} * h^m + (1 - z^{mk}) * h^k                   (o^m = h^m with one modality)

and per modality ``Linear(hidden, C)`` on o^m -> z^m.

``encoder="light"`` keeps the lighter structure this project used before: MMGCN's light encoders
and plain GCNII with a GRU-style gate across the graph layers (H^(l) = GRUCell(C^(l), H^(l-1)), one
``nn.GRUCell`` per layer, the GDF gating of the MM-DFN paper) and MMGCN's heads on
[encoder ; graph]; no cross-modal gated attention. ``encoder="mmgcn"``: the original's
BiLSTM / Linear encoders with the released gated attention.

Remaining differences from the release: as MMGCN (padding masked in the encoders, dense adjacency
blocks); the gated attention's dropout is ``dropout`` (the release hard-codes 0.5, equal at the
default); ``extras["features_<m>"]`` carries o^m (for the RNA plug-in).

Speed: as MMGCN (``kernels="fused"``: packed encoders, the default; ``autocast_bf16``: opt-in).
"""
from __future__ import annotations


import torch
from torch import nn

from merc.configs.backbones import MMDFNConfig
from merc.data.dataset import Batch, DatasetMeta
from merc.models.backbones.mmgcn import MMGCN, split_heads
from merc.models.base import Output, register_model


class MMGatedAttention(nn.Module):
    """MM-DFN's post-graph gated cross-modal fusion (module docstring): [M, B, N, c] -> [M, B, N, h]."""

    def __init__(self, in_dim: int, hidden: int, num_modalities: int, dropout: float):
        super().__init__()
        M = num_modalities
        self.transform = nn.ModuleList(nn.Linear(in_dim, hidden) for _ in range(M))
        self.cross = nn.ModuleDict({f"{i}{j}": nn.Linear(3 * hidden, hidden)
                                    for i in range(M) for j in range(M) if i != j})
        self.drop = nn.Dropout(dropout)

    def forward(self, g: torch.Tensor) -> torch.Tensor:
        hx = [self.drop(torch.relu(t(g[i]))) for i, t in enumerate(self.transform)]
        if len(hx) == 1:
            return hx[0][None]
        out = []
        for i, hi in enumerate(hx):
            acc = 0
            for j, hj in enumerate(hx):
                if i != j:
                    z = torch.sigmoid(self.cross[f"{i}{j}"](torch.cat([hi, hj, hi * hj], -1)))
                    acc = acc + z * hi + (1 - z) * hj
            out.append(acc)
        return torch.stack(out, 0)


@register_model("mmdfn", MMDFNConfig, paper="Hu et al., ICASSP 2022 (as an SPCL late-fusion backbone)")
class MMDFN(MMGCN):
    """Late-fusion MM-DFN: MMGCN's graph and GCNII stack, then gated cross-modal fusion (released)
    or gated filtering across the graph layers (``light``)."""

    config: MMDFNConfig
    graph_name = "MM-DFN"

    def __init__(self, config: MMDFNConfig, meta: DatasetMeta):
        super().__init__(config, meta)
        h = config.hidden_size
        self.light = config.encoder == "light"
        if self.light:
            self.gates = nn.ModuleList(nn.GRUCell(h, h) for _ in range(config.gcn_layers))
        else:
            self.gated = MMGatedAttention(self.graph.dim + h, h, len(self.modalities),
                                          config.dropout)

    def build_heads(self, d: int, h: int, num_classes: int) -> nn.ModuleDict:
        if self.config.encoder == "light":
            return super().build_heads(d, h, num_classes)
        return nn.ModuleDict({m: nn.Linear(h, num_classes) for m in self.modalities})  # uni_fc

    def propagate(self, h0: torch.Tensor, adj) -> torch.Tensor:
        if not self.light:
            return super().propagate(h0, adj)
        h = h0
        for conv, gate in zip(self.convs, self.gates):
            c = torch.relu(conv(self.dropout(h), h0, adj))           # graph aggregation C^(l)
            # gated filtering across layers: GRUCell(input C^(l), hidden H^(l-1)) per node
            h = gate(c.reshape(-1, c.shape[-1]), h.reshape(-1, h.shape[-1])).view_as(c)
        return h

    def fuse(self, out: torch.Tensor, batch: Batch, pk=None) -> Output:
        if self.light:
            return super().fuse(out, batch, pk)
        return split_heads(self.gated(out), self.modalities, self.heads, batch.mask, pk)
