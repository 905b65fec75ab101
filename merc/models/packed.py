"""Packed (padding-free) Transformer pieces shared by the fused paths of CORECT and the SPCL
backbones: :class:`Packing` between padded ``[B, N, f]`` batches and the ``U`` real utterances
``[U, f]``, multi-head attention per dialogue, and :func:`encoder_packed`, an
``nn.TransformerEncoder``'s output at the real positions.

What: every position-wise op runs on the real rows only. In training on CPU each dialogue's
attention runs on its own rows (:func:`dialogue_attention`: no padded products, which are ~56% of
the padded work on IEMOCAP batches of 10, no pad / unpad copies, a written-out backward); without
gradients, and on GPUs, one padded product with the key mask (:func:`padded_attention`). Attention
is computed in fp32 also under ``autocast_bf16``: at these sizes (d_h 50-128, n <= 110) the bf16
products save less than their casts cost. Padded positions were never attended to (key mask) and
never read, so dropping them changes nothing on real positions (``tests/test_corect.py``,
``tests/test_backbones_fused.py``: logits and gradients to 1e-5 against the module paths).
"""
from __future__ import annotations

import contextlib
import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from merc.models.kernels import dropout, ffn, keep_mask, linear


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
    """:func:`grouped_attention` on the padded view: without dropout one fused SDPA over all
    G x heads; with dropout SDPA's math path written out, so that the probabilities go through
    :func:`dropout`. On CPU in fp32 also under ``autocast_bf16`` (as :func:`dialogue_attention`);
    on a GPU under autocast in its dtype (the fused GPU kernels want bf16 / fp16)."""
    G, U, d3 = qkv.shape
    d, B, N = d3 // 3, pk.B, pk.N
    dh = d // heads
    # [3, G, heads, B, N, d_h]: q, k, v and heads ahead of the dialogue axis (SDPA's batch and head
    # axes swapped, the same computation), so q, k, v come out of the padding contiguous
    cpu = qkv.device.type == "cpu"
    x = pk.pad((qkv.float() if cpu else qkv).view(G, U, 3, heads, dh).permute(2, 0, 3, 1, 4),
               lead=3)
    # unbind, not x[i]: each select's backward would zero-fill the whole padded qkv
    q, k, v = (t.reshape(G * heads, B, N, dh) for t in x.unbind(0))
    mask = key_mask[:, None, :, None, :].expand(G, heads, B, 1, N).reshape(G * heads, B, 1, N)
    with torch.autocast("cpu", enabled=False) if cpu else contextlib.nullcontext():
        if dropout_p > 0.0:
            # one baddbmm gives the scaled, masked logits (additive -inf bias) in a single pass
            R = G * heads * B
            bias = x.new_zeros(mask.shape).masked_fill_(~mask, float("-inf"))
            s = torch.baddbmm(bias.reshape(R, 1, N), q.reshape(R, N, dh),
                              k.reshape(R, N, dh).transpose(1, 2), alpha=1.0 / math.sqrt(dh))
            a = dropout(torch.softmax(s, dim=-1, dtype=torch.float32), dropout_p, True)
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
        ctx.sizes, ctx.scale, ctx.saved, ctx.dtype = sizes, scale, saved, qkv.dtype
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


def encoder_packed(enc: nn.TransformerEncoder, x: torch.Tensor, pk: Packing,
                   key_mask: torch.Tensor) -> torch.Tensor:
    """``nn.TransformerEncoder`` of post-norm ReLU layers on packed rows [U, d] (the padded
    module's output at the real positions, keys outside ``key_mask`` [B, N] masked): position-wise
    products on the U real rows through :func:`merc.models.kernels.linear` / ``ffn``, attention
    per dialogue (:func:`packed_attention`)."""
    for layer in enc.layers:
        if layer.norm_first or layer.activation is not F.relu:
            raise ValueError("encoder_packed: expects post-norm ReLU layers (norm_first=False)")
        at, tr = layer.self_attn, layer.training
        qkv = linear(x, at.in_proj_weight, at.in_proj_bias)
        a = packed_attention(qkv, pk, key_mask, at.num_heads, at.dropout if tr else 0.0)
        a = linear(a, at.out_proj.weight, at.out_proj.bias)
        x = layer.norm1(x + dropout(a, layer.dropout1.p, tr))
        f = ffn(x, layer.linear1, layer.linear2, layer.dropout.p, tr)
        x = layer.norm2(x + dropout(f, layer.dropout2.p, tr))
    if enc.norm is not None:
        x = enc.norm(x)
    return x
