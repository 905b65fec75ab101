"""CORECT's fused CPU path: the same modules and parameters as :mod:`merc.models.corect`, computed
without padding and without per-edge tensors (``kernels="fused"``, the default).

What: three rewrites of the module path (``kernels="modules"``), each the same function of the same
parameters, so outputs on real utterances agree to float rounding (``tests/test_corect.py`` checks
logits and gradients to 1e-5):

* **Packing.** Every position-wise op (linear layers, layer norms, dropouts, the FFNs) runs on the
  ``U`` real utterances ``[U, d]`` instead of the padded ``[B, N, d]``. In training each
  dialogue's attention runs on its own rows (:func:`merc.models.packed.dialogue_attention`: no
  padded products, which are ~56% of the padded work on IEMOCAP batches of 10, and a written-out
  backward); without gradients one padded product with the key mask. Padded positions were never
  attended to (key mask) and never read, so dropping them changes nothing on real positions. This
  is the text Transformer (eq. 1, :func:`merc.models.packed.encoder_packed`, shared with the
  backbones) and P-CM (eqs. 11-13).
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
random bits per element with a threshold (:func:`merc.models.kernels.keep_mask`; ATen's CPU
``bernoulli_`` was ~9% of a bf16 step), also on the attention probabilities. At a negligible rate
the fused path reduces to the module path (tested). Under ``autocast_bf16`` the linear layers and
the Graph Transformer's products run in bf16, attention (logits, softmax, products) on CPU in fp32;
the fp32 default is unchanged. Every backward avoids per-index selects (``x[k]``), whose gradient
zero-fills the whole tensor.

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

from merc.graphs import receive_range, relation_names
from merc.models.kernels import dropout
from merc.models.packed import Packing, grouped_attention


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
