"""DialogueGCN as an SPCL late-fusion backbone.

Ghosal et al., "DialogueGCN: A Graph Convolutional Neural Network for Emotion Recognition in
Conversation", EMNLP 2019; used per modality by SPCL (Nguyen et al., NCAA 2026, sec. 4.2,
``papers/spcl.md``), whose uni-modal logits z^m (SPCL Eq. (1)) are summed into the joint logit
(SPCL Eq. (2)).

What (``encoder="released"``, the default: the SPCL copy ``code/backbone/dialogueGCN.py``
``MultiDialogueGCN`` at its defaults, 37,801,168 parameters at a512/t768/v1024, hidden 200 /
hidden2 150, 6 classes, 2 speakers, pinned by ``tests/test_backbones.py``), one independent branch
per modality m:
1. ``SeqContext``: 2 Transformer encoder layers at the input width (1 head, FFN 2048) then
   ``Linear(d, hidden)`` -> g_i (:class:`InputWidthTransformer`);
2. the utterance graph of ``edge_perms``: edges j -> k for k in [j - window_past, j + window_future]
   (inclusive, self loop included), so node k *receives* from [k - window_future, k + window_past]
   (the mirror of the flag names, as in every PyG-based copy);
3. ``EdgeAtt`` (DialogueGCN Eq. (1)): alpha_jk = softmax over the window of j of (W_e g_k)^T g_j,
   normalised over the *outgoing* edges of j as released (``alpha[j, s:e+1] = softmax``);
4. ``RGCNConv(hidden, hidden2, 2 S^2, num_bases=30)`` with PyG's mean aggregation and no edge
   weights (DialogueGCN Eq. (2) with 1 / c_{i,r} = 1 / |N_i^r|), relation
   2 (S s_src + s_dst) + [src >= dst] (a self loop counts with the later utterances);
5. ``GraphConv(hidden2, hidden2)`` with the attention as edge weights (DialogueGCN Eq. (3));
6. classifier on [g_i ; h_i]: Linear(hidden + hidden2, hidden2)-ReLU-dropout-Linear -> z^m
   (DialogueGCN Eqs. (4)-(5)).

Remaining differences from the release: padding is masked in the encoder (the release attends over
padded rows); ``EdgeAtt``'s ``Linear``-free score has no 110-utterance buffer (the release's
``alpha`` is ``zeros(mx_len, 110)``, so longer dialogues crash); the graph is built vectorised
for the whole batch (same edges, same types).

Speed: the ``SeqContext`` encoders are ~80% of a step (their matmuls; the graph part is small).
``kernels="fused"`` (default) runs them packed, as MMGCN's (position-wise layers on the real
utterances only, attention of each dialogue on its own rows, :mod:`merc.models.packed`; on CPU
fp32 the linears, the FFN and their backward passes through oneDNN, :mod:`merc.models.kernels`),
and the RGCN with only the 2S relations each source can send through
(:func:`rgcn_by_source_speaker`), equal to ``kernels="modules"`` to 1e-5 on logits and gradients
(``tests/test_backbones_fused.py``; dropouts: same distribution, not the same random stream).
``autocast_bf16`` (opt-in): the encoders' matmuls in bf16, the rest fp32. Both keys act on
``encoder="released"`` only.

``encoder="light"`` keeps the lighter structure this project used before: ``context_encoder``
(``gru``: the paper's bidirectional GRU, default; ``transformer``: Linear then one Transformer layer
at ``hidden``), node i receiving from [i - window_past, i + window_future], attention normalised
over each node's incoming window and applied inside the RGCN (:class:`AttentiveRGCNConv`, summing
alpha_ij W_r g_j, as the original's ``edge_norm``), an unweighted ``GraphConv``, one width
``hidden`` throughout.

Pitfalls of the reference code turned into explicit choices:
* Windows: ``window_past`` / ``window_future`` = 2 / 2 are the SPCL launch defaults (``wp=wf=2``);
  the original DialogueGCN uses 10 / 10. ``-1`` = unbounded.
* PyG's ``RGCNConv`` takes no edge weights; :class:`AttentiveRGCNConv` (light) subclasses it, keeps
  its parameters (bases, coefficients, root, bias) and computes sum_r sum_j alpha_ij W_r g_j itself.
* The original's optional "nodal attention" over the whole dialogue (``--nodal-attention``) is not
  part of the SPCL copy and is omitted.
"""
from __future__ import annotations


import torch
from torch import nn
from torch_geometric.nn import GraphConv, RGCNConv
from torch_geometric.utils import softmax

from merc.configs.backbones import DialogueGCNConfig
from merc.data.dataset import Batch, DatasetMeta
from merc.models.backbones._common import (InputWidthTransformer, SequenceEncoder, bf16_autocast,
                                           cached_window_edges, late_fusion_output,
                                           speaker_relation_types, to_padded)
from merc.models.base import MercModel, Output, register_model
from merc.models.kernels import fused as use_fused
from merc.models.packed import Packing


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
            msg = torch.einsum("eb,ebo->eo", self.comp.index_select(0, edge_type),
                               xb.index_select(0, src))
        else:
            w = self.weight if nb is None else (self.comp @ self.weight.view(nb, -1)).view(
                R, self.in_channels_l, self.out_channels)
            xw = torch.einsum("ni,rio->nro", x, w)                  # [U, R, out]
            msg = xw.reshape(-1, self.out_channels).index_select(0, src * R + edge_type)
        out = torch.zeros(x.shape[0], self.out_channels, dtype=x.dtype, device=x.device)
        out = out.index_add(0, dst, msg * edge_weight[:, None])
        out = out + x @ self.root
        return out + self.bias if self.bias is not None else out


class SpeakerRGCNPlan:
    """Index plan of :func:`rgcn_by_source_speaker` for one batch (shared by the modalities).

    DialogueGCN's relation of an edge j -> i is ``r = 2 (S s_j + s_i) + a`` (a = [j >= i]), so a
    source utterance j only ever sends through the 2S relations of its own speaker s_j: ``x_j W_r``
    is needed for those 2S relations only, not all 2 S^2 (half the products at S = 2)."""

    def __init__(self, edge_index: torch.Tensor, edge_type: torch.Tensor, spk: torch.Tensor,
                 num_speakers: int):
        S, U = num_speakers, spk.shape[0]
        src, dst = edge_index
        self.S, self.dst = S, dst
        self.perm = torch.argsort(spk, stable=True)                # nodes grouped by speaker
        self.sizes = torch.bincount(spk, minlength=S).tolist()
        pos = torch.empty_like(self.perm)
        pos[self.perm] = torch.arange(U, device=spk.device)
        # message of edge e: row pos[src] (grouped order), block 2 s_dst + a of its 2S outputs
        self.gather = pos[src] * (2 * S) + 2 * spk[dst] + (src >= dst).long()
        slot = dst * (2 * S * S) + edge_type                       # PyG's mean per (i, r)
        cnt = torch.bincount(slot, minlength=U * 2 * S * S)
        self.coef = 1.0 / cnt[slot].to(torch.float32)


def rgcn_by_source_speaker(conv: RGCNConv, x: torch.Tensor, plan: SpeakerRGCNPlan
                           ) -> torch.Tensor:
    """PyG ``RGCNConv`` (basis decomposition, ``aggr="mean"``, root weight; DialogueGCN Eq. (2))
    on DialogueGCN's speaker relations, ``kernels="fused"``: per source speaker s one product
    ``x_s [W_(s,0,0) .. W_(s,S-1,1)]``, each edge's message gathered from its source's block and
    scaled by 1 / |N_r(i)|, summed per receiver, plus ``x W_root + b``."""
    S, (U, d) = plan.S, x.shape
    w = conv.weight if conv.num_bases is None else conv.comp @ conv.weight.view(conv.num_bases, -1)
    w = w.view(S, 2 * S, d, -1).permute(0, 2, 1, 3).reshape(S, d, -1)   # [s, d, (t, a) x out]
    xs = x.index_select(0, plan.perm).split(plan.sizes)
    y = torch.cat([xs[s] @ w[s] for s in range(S)]).view(U * 2 * S, -1)
    msg = y.index_select(0, plan.gather) * plan.coef[:, None].to(x.dtype)
    out = torch.zeros(U, y.shape[1], dtype=x.dtype, device=x.device).index_add(0, plan.dst, msg)
    out = out + x @ conv.root
    return out + conv.bias if conv.bias is not None else out


class ReleasedBranch(nn.Module):
    """One modality's DialogueGCN as the SPCL copy (module docstring, steps 1-6)."""

    def __init__(self, in_dim: int, cfg: DialogueGCNConfig, num_speakers: int, num_classes: int):
        super().__init__()
        g, h = cfg.hidden_size, cfg.hidden2_size
        self.encoder = InputWidthTransformer(in_dim, g, cfg.encoder_layers or 2, cfg.dropout,
                                             cfg.encoder_ff, cfg.encoder_heads or 1)   # SeqContext
        self.num_speakers = max(num_speakers, 1)
        self.edge_att = nn.Parameter(torch.empty(g, g).normal_(0.0, 2.0 / (g + g)))   # EdgeAtt
        self.rgcn = RGCNConv(g, h, 2 * self.num_speakers ** 2, num_bases=cfg.num_bases)
        self.gconv = GraphConv(h, h)
        self.lin1 = nn.Linear(g + h, h)                              # Classifier
        self.lin2 = nn.Linear(h, num_classes)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, batch: Batch, edge_index: torch.Tensor,
                edge_type: torch.Tensor, pk: Packing | None = None, bf16: bool = False,
                plan: SpeakerRGCNPlan | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        with bf16_autocast(x.device, bf16):
            if pk is not None:                                      # kernels="fused"
                g = self.encoder.forward_packed(pk.unpad(x), pk, batch.mask)
            else:
                g = self.encoder(x, batch.mask, batch.lengths)[batch.mask]
        g = g.float()                                               # [U, g]
        src, dst = edge_index
        # Eq. (1) as released: score_jk = (W g_k)^T g_j, softmax over the targets k of source j
        # W g_k once per node; index_select, not g[src]: advanced indexing's backward (an
        # accumulating index_put) sums repeated rows in a thread-dependent order
        score = ((g @ self.edge_att.T).index_select(0, dst) * g.index_select(0, src)).sum(-1)
        alpha = softmax(score, src, num_nodes=g.shape[0])
        if plan is None:                                            # Eq. (2), mean aggregation
            h = self.rgcn(g, edge_index, edge_type)
        else:                                                       # kernels="fused"
            h = rgcn_by_source_speaker(self.rgcn, g, plan)
        h = self.gconv(h, edge_index, alpha)                        # Eq. (3), attention weights
        v = self.drop(torch.relu(self.lin1(torch.cat([g, h], -1))))  # Eq. (4)
        return self.lin2(v), v                                      # Eq. (5) logits, [U, C]


class DialogueGCNBranch(nn.Module):
    """One modality's light DialogueGCN: context encoder, edge attention, RGCN + GraphConv,
    classifier."""

    def __init__(self, in_dim: int, cfg: DialogueGCNConfig, num_speakers: int, num_classes: int):
        super().__init__()
        h = cfg.hidden_size
        kind = cfg.context_encoder
        self.encoder = SequenceEncoder(kind, in_dim, h // 2 if kind == "gru" else h, cfg.dropout,
                                       cfg.encoder_layers or 1, cfg.encoder_heads or 4)
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
                edge_type: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        g = self.encoder(x, batch.mask, batch.lengths)[batch.mask]    # sequential context [U, e]
        src, dst = edge_index
        # Eq. (1): alpha_ij = softmax over i's window of g_i^T W_e g_j
        score = (self.att(g).index_select(0, dst) * g.index_select(0, src)).sum(-1)
        alpha = softmax(score, dst, num_nodes=g.shape[0])
        h = self.rgcn(g, edge_index, edge_type, alpha)              # Eq. (2)
        h = self.gconv(h, edge_index)                               # Eq. (3)
        v = self.drop(torch.relu(self.fc(torch.cat([g, h], -1))))   # Eq. (4)
        return self.out(v), v                                       # Eq. (5) logits, [U, C]


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
        branch = ReleasedBranch if config.encoder == "released" else DialogueGCNBranch
        self.branches = nn.ModuleDict({m: branch(meta.dims[m], config, meta.num_speakers,
                                                 meta.num_classes)
                                       for m in self.modalities})

    def forward(self, batch: Batch) -> Output:
        cfg = self.config
        mask = batch.mask
        past, future = cfg.window_past, cfg.window_future
        if cfg.encoder == "released":        # edges j -> [j - wp, j + wf]: k receives the mirror
            past, future = future, past
        edge_index = cached_window_edges(batch.lengths, past, future, mask.device)
        num_spk = self.branches[self.modalities[0]].num_speakers
        spk = batch.speakers[mask].clamp(0, num_spk - 1)
        edge_type = speaker_relation_types(edge_index, spk, num_spk)
        z, feats = {}, {}
        extra = {}
        if cfg.encoder == "released":
            fused = use_fused(cfg.kernels)
            extra = {"pk": Packing(mask) if fused else None, "bf16": cfg.autocast_bf16,
                     "plan": SpeakerRGCNPlan(edge_index, edge_type, spk, num_spk) if fused
                     else None}
        for m in self.modalities:
            logit, v = self.branches[m](batch.features[m], batch, edge_index, edge_type, **extra)
            z[m], feats[f"features_{m}"] = to_padded(logit, mask), to_padded(v, mask)  # Eq. (1)
        out = late_fusion_output(z)                                 # SPCL Eq. (2)
        out.extras.update(feats)
        return out
