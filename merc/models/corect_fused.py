"""CORECT's fused CPU path: the same modules and parameters as :mod:`merc.models.corect`, computed
without padding and without per-edge tensors (``kernels="fused"``, the default).

What: three rewrites of the module path (``kernels="modules"``), each the same function of the same
parameters, so outputs on real utterances agree to float rounding (``tests/test_corect.py`` checks
logits and gradients to 1e-5):

* **Packing.** Every position-wise op (linear layers, layer norms, dropouts, the FFNs) runs on the
  ``U`` real utterances ``[U, d]`` instead of the padded ``[B, N, d]``. In training each dialogue's
  attention runs on its own rows (:func:`dialogue_attention`: no padded products, which are ~56%
  of the padded work on IEMOCAP batches of 10, and a written-out backward); without gradients one
  padded product with the key mask (:func:`padded_attention`). Padded positions were never
  attended to (key mask) and never read, so dropping them changes nothing on real positions. This
  is the text Transformer (eq. 1) and P-CM (eqs. 11-13).
* **Banded RGCN** (eq. 7). CORECT's graph is, per modality, a band ``lo <= j - i <= hi`` inside each
  dialogue (the past / future / self relations of eq. 6) plus the same utterance's other modalities
  (eq. 5). The per-relation mean over a band is a row-normalised band matrix times the padded
  features (one batched matmul), and the sum over relations of ``mean_r(x) W_r`` is one matmul of
  the concatenated means with the stacked weights.
* **Banded Graph Transformer** (eqs. 8-9). The attention logits ``q_i . k_j / sqrt(C)`` of all edges
  come from one batched ``Q K^T`` per (modality, dialogue, head), masked to the band, concatenated
  with the cross-modal logits of the same utterance, and normalised by one softmax per receiving
  node:
  exactly PyG ``TransformerConv``'s softmax over the incoming edges, without materialising the
  ``[E, heads, C]`` query / key / value gathers (90 MB per IEMOCAP batch, the old hot spot).
* **Grouped P-CM.** The six pair encoders' layer i (and the M memory encoders' layer i) run as one
  layer over a group axis: batched matmuls with the stacked weights, attention over group x heads.

Changes of the random stream (not of the distribution) in training: dropout compares 8 or 16
random bits per element with a threshold (:func:`keep_mask`; ATen's CPU ``bernoulli_`` was ~9% of
a bf16 step), also on the attention probabilities. At a negligible rate the fused path reduces to
the module path (tested). Under ``autocast_bf16`` the linear layers and the Graph Transformer's
products run in bf16, attention (logits, softmax, products) in fp32; the fp32 default is unchanged.
Every backward avoids per-index selects (``x[k]``), whose gradient zero-fills the whole tensor.

Why: on CPU the padded positions cost ~37% of the text Transformer and P-CM work on IEMOCAP batches
of 10, the per-edge gathers of the Graph Transformer were memory-bound, and P-CM was ~70 small ops
per layer and pair. ``python -m benchmarks.bench_train side-by-side`` measures it against the
official-shaped step.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from merc.graphs import receive_range, relation_names



class Packing:
    """Map between padded ``[..., B, N, f]`` and packed ``[..., U, f]`` (real positions, flat batch
    order = the row order of ``x[mask]``)."""

    def __init__(self, mask: torch.Tensor):
        self.B, self.N = mask.shape
        self.mask = mask
        self.idx = mask.reshape(-1).nonzero().squeeze(1)
        self.U = self.idx.numel()
        self._sizes: Optional[list[int]] = None

    @property
    def sizes(self) -> list[int]:
        """Packed rows per dialogue (rows are dialogue-major)."""
        if self._sizes is None:
            self._sizes = self.mask.sum(1).tolist()
        return self._sizes

    def unpad(self, x: torch.Tensor, lead: int = 0) -> torch.Tensor:
        """``x`` [*lead, B, N, *f] -> [*lead, U, *f]."""
        shape = x.shape
        flat = x.reshape(*shape[:lead], self.B * self.N, *shape[lead + 2:])
        return flat.index_select(lead, self.idx)

    def pad(self, x: torch.Tensor, lead: int = 0) -> torch.Tensor:
        """``x`` [*lead, U, *f] -> [*lead, B, N, *f], zeros at padding."""
        shape = x.shape
        out = x.new_zeros(*shape[:lead], self.B * self.N, *shape[lead + 1:])
        out.index_copy_(lead, self.idx, x)
        return out.view(*shape[:lead], self.B, self.N, *shape[lead + 1:])


def bf16_autocast(device: torch.device, enabled: bool) -> torch.autocast:
    """The ``autocast_bf16`` context of CORECT and the backbones: matmuls in bf16; the attention
    functions below keep logits and softmax in fp32."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def keep_mask(shape, p: float, device: torch.device) -> torch.Tensor:
    """fp32 inverted-dropout multipliers: 0 with probability ``p``, else 1 / (1 - p).

    When p is a multiple of 2^-8 (2^-16), as the usual 0.5, each
    element compares 8 (16) random bits with a threshold, the bits cut from full-range int64
    draws: P(keep) = 1 - p exactly, the distribution of ``F.dropout``. Other p draw one float
    uniform per element. Why: ATen's CPU ``bernoulli_`` costs ~14 ns per element and a float
    uniform ~4; the text Transformer's dropouts (p = 0.5 on [U, 768], [U, 2048] and the attention
    probabilities) draw ~5M per step. Not the random stream of ``nn.Dropout``."""
    bits = next((b for b in (8, 16) if float(p * 2 ** b).is_integer()), None)
    if bits is None:
        return torch.rand(shape, device=device).ge_(p).mul_(1.0 / (1.0 - p))
    n, per = math.prod(shape), 64 // bits
    words = torch.empty((n + per - 1) // per, dtype=torch.int64, device=device)
    r = words.random_(-2 ** 63, None).view(torch.int8 if bits == 8 else torch.int16)[:n]
    # r is uniform on [-2^(bits-1), 2^(bits-1)): keep iff r >= -2^(bits-1) + p 2^bits
    return r.view(shape).ge(int(p * 2 ** bits) - 2 ** (bits - 1)).to(torch.float32).mul_(
        1.0 / (1.0 - p))


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Inverted dropout (``F.dropout``'s distribution) with :func:`keep_mask`'s draw; the one
    dropout of the fused paths (CORECT and the backbones)."""
    if not training or p == 0.0:
        return x
    keep = keep_mask(x.shape, p, x.device)
    return keep.mul_(x) if x.dtype == keep.dtype else x * keep.to(x.dtype)


def packed_attention(qkv: torch.Tensor, pk: Packing, key_mask: torch.Tensor, heads: int,
                     dropout_p: float) -> torch.Tensor:
    """Multi-head softmax(Q K^T / sqrt(d_h)) V per dialogue; ``qkv`` packed [U, 3d] (projected
    queries | keys | values), ``key_mask`` [B, N] (True = may be attended). Returns [U, d]."""
    return grouped_attention(qkv[None], pk, key_mask[None], heads, dropout_p)[0]


def grouped_attention(qkv: torch.Tensor, pk: Packing, key_mask: torch.Tensor, heads: int,
                      dropout_p: float) -> torch.Tensor:
    """:func:`packed_attention` for G independent attention modules at once: ``qkv`` [G, U, 3d],
    ``key_mask`` [G, B, N]; returns [G, U, d]. In training on CPU (a gradient is needed) each
    dialogue on its own rows (:func:`dialogue_attention`); otherwise (and on GPUs, where a loop
    over dialogues would be kernel launches) one padded product (:func:`padded_attention`)."""
    if qkv.device.type == "cpu" and torch.is_grad_enabled() and qkv.requires_grad:
        return dialogue_attention(qkv, pk, key_mask, heads, dropout_p)
    return padded_attention(qkv, pk, key_mask, heads, dropout_p)


def padded_attention(qkv: torch.Tensor, pk: Packing, key_mask: torch.Tensor, heads: int,
                     dropout_p: float) -> torch.Tensor:
    """:func:`grouped_attention` on the padded view, in fp32 (also under ``autocast_bf16``, as
    :func:`dialogue_attention`): without dropout one fused SDPA over all G x heads; with dropout
    SDPA's math path written out, so that the probabilities go through :func:`dropout`."""
    G, U, d3 = qkv.shape
    d, B, N = d3 // 3, pk.B, pk.N
    dh = d // heads
    # [3, G, heads, B, N, d_h]: q, k, v and heads ahead of the dialogue axis (SDPA's batch and head
    # axes swapped, the same computation), so q, k, v come out of the padding contiguous
    x = pk.pad(qkv.float().view(G, U, 3, heads, dh).permute(2, 0, 3, 1, 4), lead=3)
    # unbind, not x[i]: each select's backward would zero-fill the whole padded qkv
    q, k, v = (t.reshape(G * heads, B, N, dh) for t in x.unbind(0))
    mask = key_mask[:, None, :, None, :].expand(G, heads, B, 1, N).reshape(G * heads, B, 1, N)
    with torch.autocast(qkv.device.type, enabled=False):
        if dropout_p > 0.0:
            # one baddbmm gives the scaled, masked logits (additive -inf bias) in a single pass
            R = G * heads * B
            bias = torch.zeros(mask.shape, device=x.device).masked_fill_(~mask, float("-inf"))
            s = torch.baddbmm(bias.reshape(R, 1, N), q.reshape(R, N, dh),
                              k.reshape(R, N, dh).transpose(1, 2), alpha=1.0 / math.sqrt(dh))
            a = dropout(torch.softmax(s, dim=-1), dropout_p, True)
            o = (a @ v.reshape(R, N, dh)).view(G * heads, B, N, dh)
        else:
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    o = pk.unpad(o.view(G, heads, B, N, dh), lead=2)                  # [G, heads, U, d_h]
    return o.transpose(1, 2).reshape(G, U, d)


class _DialogueAttention(torch.autograd.Function):
    """softmax(Q K^T / sqrt(d_h) + bias) V of each dialogue on its own packed rows, for G groups x
    heads at once, in fp32 whatever the input dtype; the backward written out (no padding, no
    per-dialogue autograd nodes)."""

    @staticmethod
    def forward(ctx, qkv, sizes: list[int], key_mask: Optional[torch.Tensor], heads: int,
                p: float):
        # key_mask: None (every row may be attended) or packed [G, U] bool
        G, U, d3 = qkv.shape
        H, dh = heads, d3 // 3 // heads
        scale = 1.0 / math.sqrt(dh)
        x = qkv.float().view(G, U, 3, H, dh)
        out = x.new_empty(G, U, H, dh)
        saved, o, used = [], 0, 0
        # one dropout draw for every dialogue's probabilities
        keep_all = keep_mask((G * H * sum(n * n for n in sizes),), p, x.device) if p > 0.0 \
            else None
        with torch.autocast(qkv.device.type, enabled=False):
            for n in sizes:
                q, k, v = _dialogue_operands(x, o, n)
                if key_mask is None:
                    s = torch.baddbmm(q.new_empty(G * H, n, n), q, k.transpose(1, 2), beta=0.0,
                                      alpha=scale)
                else:                  # keys a query may not attend to (missing modality): -inf
                    bias = q.new_zeros(G, 1, 1, n).masked_fill_(
                        ~key_mask[:, None, None, o:o + n], float("-inf"))
                    s = torch.baddbmm(bias.expand(G, H, n, n).reshape(G * H, n, n), q,
                                      k.transpose(1, 2), alpha=scale)
                a = torch.softmax(s, dim=-1)
                keep, ad = None, a
                if keep_all is not None:
                    keep = keep_all[used:used + G * H * n * n].view(G * H, n, n)
                    ad, used = a * keep, used + G * H * n * n
                out[:, o:o + n].copy_(torch.bmm(ad, v).view(G, H, n, dh).transpose(1, 2))
                saved += [a, keep, ad]
                o += n
        ctx.sizes, ctx.H, ctx.scale, ctx.saved, ctx.dtype = sizes, H, scale, saved, qkv.dtype
        ctx.save_for_backward(x)
        return out.view(G, U, d3 // 3)

    @staticmethod
    def backward(ctx, g):
        x, = ctx.saved_tensors
        G, U, _, H, dh = x.shape
        gx = torch.empty_like(x)
        g = g.float().reshape(G, U, H, dh)
        o = 0
        with torch.autocast(x.device.type, enabled=False):
            for j, n in enumerate(ctx.sizes):
                a, keep, ad = ctx.saved[3 * j: 3 * j + 3]
                q, k, v = _dialogue_operands(x, o, n)
                go = g[:, o:o + n].transpose(1, 2).reshape(G * H, n, dh)
                ga = torch.bmm(go, v.transpose(1, 2))                  # d loss / d (a * keep)
                if keep is not None:
                    ga.mul_(keep)
                gs = torch._softmax_backward_data(ga, a, -1, torch.float32).mul_(ctx.scale)
                for i, grad in enumerate((torch.bmm(gs, k), torch.bmm(gs.transpose(1, 2), q),
                                          torch.bmm(ad.transpose(1, 2), go))):
                    gx[:, o:o + n, i].copy_(grad.view(G, H, n, dh).transpose(1, 2))
                o += n
        ctx.saved = None
        return gx.view(G, U, -1).to(ctx.dtype), None, None, None, None


def _dialogue_operands(x: torch.Tensor, o: int, n: int) -> tuple[torch.Tensor, ...]:
    """q, k, v [G*H, n, d_h] of the dialogue on rows o..o+n of ``x`` [G, U, 3, H, d_h]."""
    G, _, _, H, dh = x.shape
    return tuple(x[:, o:o + n, i].transpose(1, 2).reshape(G * H, n, dh) for i in range(3))


def dialogue_attention(qkv: torch.Tensor, pk: Packing, key_mask: torch.Tensor, heads: int,
                       dropout_p: float) -> torch.Tensor:
    """:func:`grouped_attention` for training: each dialogue attends over its own packed rows
    (``qkv`` [G, U, 3d], dialogue-major), so nothing is computed for padding (the padded
    products of a batch of IEMOCAP dialogues are ~56% padding) and there are no pad / unpad
    copies. The same function: keys outside ``key_mask`` [G, B, N] get -inf as in the padded
    path. fp32 throughout, also under ``autocast_bf16``: at these sizes (d_h 50-100, n <= 110)
    the bf16 products save less than their casts cost. Returns fp32 [G, U, d]."""
    km = pk.unpad(key_mask, lead=1)                             # [G, U]
    return _DialogueAttention.apply(qkv, pk.sizes, None if bool(km.all()) else km, heads,
                                    dropout_p)


def _stack(mods, name: str) -> torch.Tensor:
    return torch.stack([getattr(m, name) for m in mods])


def _grouped_linear(mods, x: torch.Tensor) -> torch.Tensor:
    """G ``nn.Linear`` modules on ``x`` [G, U, in] -> [G, U, out] as one batched matmul."""
    return torch.baddbmm(_stack(mods, "bias")[:, None], x, _stack(mods, "weight").transpose(1, 2))


def _grouped_layer_norm(mods, x: torch.Tensor) -> torch.Tensor:
    """G ``nn.LayerNorm`` modules on ``x`` [G, U, d]: one normalisation, then each affine."""
    y = F.layer_norm(x, x.shape[-1:], eps=mods[0].eps)
    return torch.addcmul(_stack(mods, "bias")[:, None], y, _stack(mods, "weight")[:, None])


def grouped_cross_modal(layers, z: torch.Tensor, z0: Optional[torch.Tensor], pk: Packing,
                        key_mask: torch.Tensor) -> torch.Tensor:
    """G P-CM layers (``merc.models.corect.CrossModalLayer``: same sizes, own weights) on their
    own packed inputs at once: ``z`` [G, U, d] queries, ``z0`` [G, U, d] sources (None = self
    attention), ``key_mask`` [G, B, N]. Each layer's eqs. (11)-(13) as in its ``forward``;
    batching the six pair encoders (and the M memory encoders) turns ~6x as many small ops into
    one batched op each."""
    first = layers[0]
    p, tr = first.drop.p, first.training
    attn = [m.attn for m in layers]
    q = _grouped_layer_norm([m.ln_q for m in layers], z)
    w, b = _stack(attn, "in_proj_weight"), _stack(attn, "in_proj_bias")[:, None]
    if z0 is None:
        qkv = torch.baddbmm(b, q, w.transpose(1, 2))
    else:
        d = z.shape[-1]
        kv = _grouped_layer_norm([m.ln_kv for m in layers], z0)
        qkv = torch.cat([torch.baddbmm(b[..., :d], q, w[:, :d].transpose(1, 2)),
                         torch.baddbmm(b[..., d:], kv, w[:, d:].transpose(1, 2))], dim=-1)
    a = grouped_attention(qkv, pk, key_mask, first.attn.num_heads,
                          first.attn.dropout if tr else 0.0)
    a = _grouped_linear([m.out_proj for m in attn], a)
    zbar = dropout(a, p, tr) + q                                       # Eqs. (11)-(12)
    h = _grouped_layer_norm([m.ln_ff for m in layers], zbar)
    f = torch.relu(_grouped_linear([m.ff1 for m in layers], h))
    return dropout(_grouped_linear([m.ff2 for m in layers], dropout(f, p, tr)), p, tr) + h  # (13)



def mha_packed(attn: nn.MultiheadAttention, q: torch.Tensor, kv: Optional[torch.Tensor],
               pk: Packing, key_mask: torch.Tensor) -> torch.Tensor:
    """``nn.MultiheadAttention(q, kv, kv, key_padding_mask=~key_mask)`` on packed inputs (its own
    in/out projections and attention dropout); ``kv=None`` = self-attention."""
    w, b = attn.in_proj_weight, attn.in_proj_bias
    if kv is None:
        qkv = F.linear(q, w, b)
    else:
        d = q.shape[-1]
        qkv = torch.cat([F.linear(q, w[:d], b[:d]), F.linear(kv, w[d:], b[d:])], dim=-1)
    p = attn.dropout if attn.training else 0.0
    return attn.out_proj(packed_attention(qkv, pk, key_mask, attn.num_heads, p))


def text_encoder_packed(enc: nn.TransformerEncoder, x: torch.Tensor, pk: Packing,
                        key_mask: torch.Tensor) -> torch.Tensor:
    """``nn.TransformerEncoder`` of post-norm layers (``norm_first=False``) on packed [U, d]."""
    for layer in enc.layers:
        if layer.norm_first:
            raise ValueError("text_encoder_packed: expects post-norm layers (norm_first=False)")
        a = mha_packed(layer.self_attn, x, None, pk, key_mask)
        tr = layer.training
        x = layer.norm1(x + dropout(a, layer.dropout1.p, tr))
        f = layer.linear2(dropout(layer.activation(layer.linear1(x)), layer.dropout.p, tr))
        x = layer.norm2(x + dropout(f, layer.dropout2.p, tr))
    if enc.norm is not None:
        x = enc.norm(x)
    return x


class Bands:
    """The temporal band of CORECT's graph for a batch: node ``i`` receives within its modality from
    ``j`` with ``lo <= j - i <= hi`` inside its dialogue (``merc.graphs.receive_range``)."""

    def __init__(self, lengths: torch.Tensor, N: int, past: int, future: int, semantics: str,
                 use_temp: bool):
        ar = torch.arange(N, device=lengths.device)
        d = ar[None, :] - ar[:, None]                                  # [i, j] = j - i
        real = ar[None, :] < lengths[:, None]                          # [B, N]
        self.real_keys = real[:, None, :]                              # [B, 1, N] key j real
        if use_temp:
            self.lo, self.hi = receive_range(past, future, semantics, N)
        else:
            self.lo, self.hi = 0, 0                                    # self loops only
        self.d = d
        self.use_temp = use_temp

    def mask(self, lo: int, hi: int) -> torch.Tensor:
        """[B, N, N] bool: key j of query i with lo <= j - i <= hi, j real."""
        return ((self.d >= lo) & (self.d <= hi))[None] & self.real_keys

    @property
    def has_self(self) -> bool:
        return self.lo <= 0 <= self.hi


def _row_mean(m: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    a = m.to(dtype)
    return a / a.sum(-1, keepdim=True).clamp(min=1.0)


def rgcn_banded(rgcn, x: torch.Tensor, pk: Packing, bands: Bands, use_multi: bool) -> torch.Tensor:
    """Eq. (7) = PyG ``RGCNConv(aggr="mean", root_weight=True)`` on CORECT's graph (eqs. 5-6).

    ``x`` [M, U, h] packed per modality; returns [M, U, h]. Per receiving modality k:
    ``x_k W_0 + b + mean_past(x_k) W_past_k + mean_future(x_k) W_future_k + x_k W_self_k
    + sum_{a != k} x_a W_cross_(a,k)`` (an empty relation contributes 0, as PyG's mean does).
    """
    M = x.shape[0]
    rel = {r: i for i, r in enumerate(relation_names(M, use_multi, bands.use_temp))}
    # unbind once: every select (x[k], W[r]) would back-propagate into its own zero-filled copy
    # of the whole tensor
    W = rgcn.weight.unbind(0)
    xs = x.unbind(0)
    means = []
    if bands.use_temp:
        xp = pk.pad(x, lead=1)                                         # [M, B, N, h]
        for lo, hi in ((bands.lo, min(bands.hi, -1)), (max(bands.lo, 1), bands.hi)):
            a = _row_mean(bands.mask(lo, hi), x.dtype)                 # [B, N, N]
            means.append(pk.unpad(a @ xp, lead=1).unbind(0))           # M x [U, h]
    outs = []
    for k in range(M):
        feats, ws = [xs[k]], [rgcn.root]
        if bands.use_temp:
            feats += [means[0][k], means[1][k]]
            ws += [W[rel[("past", k, k)]], W[rel[("future", k, k)]]]
        if bands.has_self:                                             # same input as the root
            ws[0] = rgcn.root + W[rel[("self", k, k)]]
        if use_multi:
            for a in range(M):
                if a != k:
                    feats.append(xs[a])
                    ws.append(W[rel[("cross", a, k)]])
        out = torch.cat(feats, -1) @ torch.cat(ws, 0)
        outs.append(out + rgcn.bias if rgcn.bias is not None else out)
    return torch.stack(outs)


def gt_banded(gt, x: torch.Tensor, pk: Packing, bands: Bands, use_multi: bool) -> torch.Tensor:
    """Eqs. (8)-(9) = PyG ``TransformerConv(heads=C, concat=True, root_weight=True)`` on CORECT's
    graph: node i's softmax runs over its band keys (same modality) and, with R_multi, the same
    utterance's other modalities. ``x`` [M, U, h] packed; returns [M, U, C*h]."""
    if gt.lin_edge is not None or gt.lin_beta is not None or gt.dropout or not gt.concat:
        raise ValueError("gt_banded: expects TransformerConv(concat=True, beta=False, dropout=0, "
                         "edge_dim=None)")
    M, U = x.shape[:2]
    H, C = gt.heads, gt.out_channels
    q = gt.lin_query(x).view(M, U, H, C)
    k = gt.lin_key(x).view(M, U, H, C)
    v = gt.lin_value(x).view(M, U, H, C)
    return _gt_attention(q, k, v, pk, bands, use_multi) + gt.lin_skip(x)


def _gt_attention(q, k, v, pk: Packing, bands: Bands, use_multi: bool) -> torch.Tensor:
    # layout [M, H, B, N, C]: heads ahead of the dialogue axis, so padding writes the batched
    # matmuls' operands in place (no permuted copies of the padded tensors)
    # under bf16 autocast the two batched matmuls run in bf16, logits and softmax in fp32
    M, U, H, C = q.shape
    scale = 1.0 / math.sqrt(C)
    if not torch.is_autocast_enabled(q.device.type):
        q, k, v = q.float(), k.float(), v.float()
    qp, kp, vp = (pk.pad(t.transpose(1, 2), lead=2) for t in (q, k, v))   # [M, H, B, N, C]
    q, k = q.float(), k.float()
    band = bands.mask(bands.lo, bands.hi)                              # [B, N, N]
    bias = torch.zeros(band.shape, device=q.device).masked_fill_(~band, float("-inf"))
    s = torch.add(bias, qp @ kp.transpose(-1, -2), alpha=scale)        # fp32 [M, H, B, N, N]
    cross = use_multi and M > 1
    if cross:
        # logits of the same utterance's other modalities (eq. 5 edges), -inf for l == k
        none = q.new_full((U, H), float("-inf"))
        qs, ks = q.unbind(0), k.unbind(0)
        sx = torch.stack([torch.stack([(qs[t] * ks[l]).sum(-1) * scale if l != t else none
                                       for l in range(M)], dim=-1) for t in range(M)])
        s = torch.cat([s, pk.pad(sx.transpose(1, 2), lead=2)], dim=-1)   # [M, H, B, N, N+M]
        p = torch.softmax(s, dim=-1)
    else:   # a node without incoming edges aggregates nothing (0), as in PyG
        ok = band.any(-1)[..., None]                                   # [B, N, 1]
        p = torch.softmax(s.masked_fill(~ok, 0.0), dim=-1) * ok
    N = band.shape[-1]
    out = (p[..., :N] @ vp).float()                                    # [M, H, B, N, C]
    if cross:
        px = [pt.unbind(-1) for pt in p[..., N:].unbind(0)]         # [t][l]: [H, B, N]
        vf = vp.float().unbind(0)
        out = out + torch.stack([sum(px[t][l][..., None] * vf[l] for l in range(M) if l != t)
                                 for t in range(M)])
    return pk.unpad(out, lead=2).transpose(1, 2).reshape(M, U, H * C)
