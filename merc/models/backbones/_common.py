"""Pieces shared by the four SPCL backbones: late fusion, sequence encoders, cached graphs.

What: every SPCL backbone (SPCL paper, sec. 4.2) is *late fusion*: one branch per modality gives
uni-modal logits z^m (SPCL Eq. (1)) and the joint logit is their sum (SPCL Eq. (2)). This module
holds that fusion step (:func:`late_fusion_output`), the per-modality sequence encoders the
backbones share (the released SPCL encoder - Transformer layers at the input width, then a linear
map, :class:`InputWidthTransformer` - and, for the lighter ``encoder: light`` structures, a
bidirectional GRU / LSTM, a Transformer after a projection, or a linear map), GCNII layers (plain and
``variant``), and batch-level graph
builders cached on the dialogue lengths (and speakers where relations depend on them), built from
:mod:`merc.graphs` so that no backbone carries a fixed maximum dialogue length. For the backbones'
``kernels="fused"`` paths: the packed encoder (:meth:`InputWidthTransformer.forward_packed`, its CPU
kernels in :mod:`merc.models.packed`), the adjacency on packed nodes
(:class:`PackedAdjacency`) and a cheaper dropout (:func:`dropout`).

Why here: the backbones differ in their context / graph mechanism only; the fusion and the
encoders are common, and caching the graphs once per batch shape keeps CPU training fast.
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Literal

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from merc.configs.backbones import RELEASED_FFN
from merc.graphs import corect_graph, window_edges
from merc.models.base import Output
# re-exported for the backbones: one dropout and one bf16 context for every fused path
from merc.models.kernels import bf16_autocast, dropout, linear  # noqa: F401
from merc.models.packed import Packing, encoder_packed

EncoderKind = Literal["gru", "lstm", "transformer", "linear"]


def released_heads(dim: int) -> int:
    """Heads of the released SPCL ``Transformer_Encoder``: the first h in 5..14 dividing ``dim``,
    else 1 (512 -> 8, 768 -> 6, 1024 -> 8)."""
    return next((h for h in range(5, 15) if dim % h == 0), 1)


def to_padded(flat: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Scatter per-utterance rows [U, C] (flat batch order) back to padded [B, N, C]."""
    out = flat.new_zeros(*mask.shape, flat.shape[-1])
    out[mask] = flat
    return out


def late_fusion_output(modality_logits: dict[str, torch.Tensor]) -> Output:
    """SPCL Eq. (2): z^joint = sum_m z^m; the per-modality z^m (Eq. (1)) ride along for SPCL."""
    joint = torch.stack(list(modality_logits.values()), dim=0).sum(dim=0)
    return Output(logits=joint, modality_logits=dict(modality_logits))


def _heads_for(dim: int, wanted: int) -> int:
    """``wanted`` if it divides ``dim``, else the largest divisor of ``dim`` below it (>= 1)."""
    for h in range(min(wanted, dim), 0, -1):
        if dim % h == 0:
            return h
    return 1


class SequenceEncoder(nn.Module):
    """Context encoder over one dialogue's utterances of one modality, padded [B, N, d] -> [B, N, e].

    ``gru`` / ``lstm``: a bidirectional recurrent net (e = 2 * hidden), packed by the dialogue
    lengths so padding never leaks into the backward direction. ``transformer``: a linear map to
    ``hidden`` then a Transformer encoder with a key padding mask (e = hidden; no positional
    encoding, as in the SPCL copy whose order information comes from the graph). ``linear``:
    Linear + ReLU per utterance, no context (MMGCN's audio / visual encoders; e = hidden).
    """

    def __init__(self, kind: EncoderKind, in_dim: int, hidden: int, dropout: float,
                 layers: int = 1, heads: int = 4):
        super().__init__()
        self.kind = kind
        if kind in ("gru", "lstm"):
            rnn = nn.GRU if kind == "gru" else nn.LSTM
            self.rnn = rnn(in_dim, hidden, num_layers=layers, batch_first=True, bidirectional=True,
                           dropout=dropout if layers > 1 else 0.0)
            self.out_dim = 2 * hidden
        elif kind == "transformer":
            self.proj = nn.Linear(in_dim, hidden)
            layer = nn.TransformerEncoderLayer(hidden, _heads_for(hidden, heads), 2 * hidden,
                                               dropout, batch_first=True)
            self.tf = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
            self.out_dim = hidden
        elif kind == "linear":
            self.proj = nn.Linear(in_dim, hidden)
            self.out_dim = hidden
        else:
            raise ValueError(f"encoder kind must be gru, lstm, transformer or linear, found {kind!r}")

    def forward(self, x: torch.Tensor, mask: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if self.kind in ("gru", "lstm"):
            packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
            out, _ = self.rnn(packed)
            out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
            return out
        if self.kind == "transformer":
            return self.tf(self.proj(x), src_key_padding_mask=~mask)
        return torch.relu(self.proj(x))


class InputWidthTransformer(nn.Module):
    """The released SPCL per-modality encoder (``Transformer_Encoder`` / DialogueGCN's
    ``SeqContext``): ``layers`` Transformer encoder layers *at the input width* d (post-norm, ReLU,
    FFN ``ff`` = 2048, ``heads`` heads), then ``Linear(d, hidden)``: [B, N, d] -> [B, N, hidden].

    Difference from the release: padding is masked (``src_key_padding_mask``); the released
    encoders attend over the zero rows of padded dialogues, so a dialogue's encoding depended on the
    longest dialogue of its batch.
    """

    def __init__(self, in_dim: int, hidden: int, layers: int, dropout: float, ff: int = RELEASED_FFN,
                 heads: int | None = None):
        super().__init__()
        layer = nn.TransformerEncoderLayer(in_dim, heads or released_heads(in_dim), ff, dropout,
                                           batch_first=True)
        self.tf = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.lin_out = nn.Linear(in_dim, hidden)
        self.out_dim = hidden

    def forward(self, x: torch.Tensor, mask: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.lin_out(self.tf(x, src_key_padding_mask=~mask))

    def forward_packed(self, x: torch.Tensor, pk: Packing, mask: torch.Tensor) -> torch.Tensor:
        """``forward(...)[mask]`` from the packed real rows [U, d] (``kernels="fused"``): the
        position-wise layers run on the U real utterances only, each dialogue's attention on its
        own rows, on CPU fp32 through the oneDNN linear / FFN kernels
        (:func:`merc.models.packed.encoder_packed`)."""
        return linear(encoder_packed(self.tf, x, pk, mask), self.lin_out.weight, self.lin_out.bias)


# ---- cached graphs ---------------------------------------------------------------------------

def _key(lengths: torch.Tensor) -> tuple[int, ...]:
    return tuple(int(v) for v in lengths.tolist())


@lru_cache(maxsize=256)
def _window(lengths: tuple[int, ...], past: int, future: int, device: str) -> torch.Tensor:
    return window_edges(lengths, past, future, self_loops=True).to(device)


def cached_window_edges(lengths: torch.Tensor, past: int, future: int,
                        device: torch.device | str) -> torch.Tensor:
    """Utterance window graph with self loops (node i receives from j in [i-past, i+future],
    -1 = unbounded), cached on the lengths. Shared tensor: do not modify in place."""
    return _window(_key(lengths), int(past), int(future), str(device))


def speaker_relation_types(edge_index: torch.Tensor, speakers_flat: torch.Tensor,
                           num_speakers: int) -> torch.Tensor:
    """DialogueGCN's 2 * S^2 relations: (speaker of source, speaker of target, source not before
    target).

    ``type = 2 * (S * spk[src] + spk[dst]) + [src >= dst]``, the layout of the original
    (``edge_type_to_idx[str(s_src) + str(s_dst) + ('0' if src < dst else '1')]``, kept by the SPCL
    copy): a self loop shares its relation with the edges from later utterances.
    """
    src, dst = edge_index
    after = (src >= dst).long()
    return 2 * (num_speakers * speakers_flat[src] + speakers_flat[dst]) + after


def multimodal_graph(lengths: torch.Tensor, num_modalities: int, device) -> torch.Tensor:
    """MMGCN's multimodal graph as an edge list over modality-major nodes ``k * U + u``:
    within each modality every utterance of a dialogue is joined to every other and to itself,
    across modalities only the nodes of the *same* utterance are joined. That is exactly CORECT's
    relational graph with unbounded windows (:func:`merc.graphs.corect_graph`, cached); the
    relation types are not used here."""
    g = corect_graph(lengths, num_modalities, -1, -1, "paper", True, True, device)
    return g.edge_index


def angular_norm_weights(x: torch.Tensor, edge_index: torch.Tensor, num_nodes: int,
                         shrink: float = 0.99999) -> torch.Tensor:
    """MMGCN edge weights: A_ij = 1 - arccos(cos(x_i, x_j)) / pi, then symmetric normalisation
    D^{-1/2} A D^{-1/2} with D the row sums (the edge set is symmetric).

    The cosine is multiplied by ``shrink`` (0.99999 in MMGCN and the SPCL copy) so that arccos
    stays differentiable at cos = 1 (every self loop).
    """
    src, dst = edge_index
    xn = torch.nn.functional.normalize(x, dim=-1)
    cos = (xn[src] * xn[dst]).sum(-1).clamp(-1.0, 1.0) * shrink
    w = 1.0 - torch.arccos(cos) / math.pi
    deg = torch.zeros(num_nodes, dtype=w.dtype, device=w.device).index_add_(0, dst, w)
    dinv = deg.clamp(min=1e-12).rsqrt()
    return dinv[src] * w * dinv[dst]


class DenseMultimodalAdjacency:
    """MMGCN's normalised multimodal adjacency P = D^{-1/2} A D^{-1/2} in dense block form.

    Same graph and weights as :func:`multimodal_graph` + :func:`angular_norm_weights` (the tests
    check the two agree), stored as per-dialogue blocks so that propagation is a batched matmul
    instead of materialising one message per edge (a dialogue of n utterances has n^2 edges per
    modality; IEMOCAP batches have ~10^5):

    * ``within`` [M, B, N, N]: A^{mm}_{b,ij} = 1 - arccos(0.99999 cos(x^m_bi, x^m_bj)) / pi over the
      real utterances i, j of dialogue b (self loop included), normalised;
    * ``cross`` [M, M, B, N]: A^{mk}_{b,i} for the same utterance across modalities m != k (zero on
      the diagonal m = k), normalised.
    """

    def __init__(self, x: torch.Tensor, mask: torch.Tensor, shrink: float = 0.99999):
        M = x.shape[0]
        xn = torch.nn.functional.normalize(x, dim=-1)                       # [M, B, N, d]
        pair = (mask[:, :, None] & mask[:, None, :]).to(x.dtype)           # [B, N, N]
        cos_w = torch.einsum("mbid,mbjd->mbij", xn, xn).clamp(-1.0, 1.0) * shrink
        within = (1.0 - torch.arccos(cos_w) / math.pi) * pair
        cos_c = torch.einsum("mbid,kbid->mkbi", xn, xn).clamp(-1.0, 1.0) * shrink
        off = 1.0 - torch.eye(M, dtype=x.dtype, device=x.device)
        cross = (1.0 - torch.arccos(cos_c) / math.pi) * off[:, :, None, None] * mask.to(x.dtype)
        deg = within.sum(-1) + cross.sum(1)                                 # [M, B, N]
        dinv = torch.where(deg > 0, deg.clamp(min=1e-12).rsqrt(), torch.zeros_like(deg))
        self.within = dinv[..., :, None] * within * dinv[..., None, :]
        self.cross = dinv[:, None] * cross * dinv[None, :]

    def propagate(self, h: torch.Tensor) -> torch.Tensor:
        """P h for node features h [M, B, N, c] (zero rows at padding)."""
        return (torch.einsum("mbij,mbjc->mbic", self.within, h)
                + torch.einsum("mkbi,kbic->mbic", self.cross, h))


class PackedAdjacency:
    """:class:`DenseMultimodalAdjacency` on packed node features [M, U, c] (``kernels="fused"``:
    the position-wise GCN layers, dropouts and heads run on the real utterances only)."""

    def __init__(self, adj: DenseMultimodalAdjacency, pk: Packing):
        self.adj, self.pk = adj, pk

    def propagate(self, h: torch.Tensor) -> torch.Tensor:
        return self.pk.unpad(self.adj.propagate(self.pk.pad(h, lead=1)), lead=1)


class GCNIILayer(nn.Module):
    """One GCNII layer (Chen et al. 2020; MMGCN Eq. (6)) on a dense propagator, b = log(lambda/l + 1),
    r = (1 - a) P h + a h0:

    * plain (PyG ``GCN2Conv`` with shared weights): r ((1 - b) I + b W), W [c, c];
    * ``variant=True`` (GCNII's variant, used by MMGCN's ``GCNII_lyc`` and the SPCL copy):
      (1 - b) r + b [P h ; h0] W with W [2c, c], initialised U(-1/sqrt(c), 1/sqrt(c)) as released.
    """

    def __init__(self, channels: int, alpha: float, lam: float, layer: int, variant: bool = False):
        super().__init__()
        self.alpha = alpha
        self.beta = math.log(lam / layer + 1.0)
        self.variant = variant
        self.weight = nn.Parameter(torch.empty(2 * channels if variant else channels, channels))
        if variant:
            nn.init.uniform_(self.weight, -1.0 / math.sqrt(channels), 1.0 / math.sqrt(channels))
        else:
            nn.init.xavier_uniform_(self.weight)

    def forward(self, h: torch.Tensor, h0: torch.Tensor,
                adj: DenseMultimodalAdjacency | PackedAdjacency) -> torch.Tensor:
        hi = adj.propagate(h)
        r = (1.0 - self.alpha) * hi + self.alpha * h0
        support = torch.cat([hi, h0], -1) if self.variant else r
        return (1.0 - self.beta) * r + self.beta * (support @ self.weight)


def clear_cache() -> None:
    """Drop the cached window graphs."""
    _window.cache_clear()
