"""NOT USED ANY MORE (lead, 10:30): the backbones and CORECT now take these kernels from
:mod:`merc.models.kernels` (linear, ffn, keep_mask, dropout) and :mod:`merc.models.packed`
(attention per dialogue, encoder_packed). Edit those; this file goes once its tests move.

CPU kernels of the backbones' packed input-width encoders (``kernels="fused"``): oneDNN linear
layers with hand-written backward passes, a fused FFN, and a cheaper dropout draw.

What: the released SPCL encoders (:class:`merc.models.backbones._common.InputWidthTransformer`:
two post-norm Transformer layers at the input width 512 / 768 / 1024 with FFN 2048) are ~80% of a
backbone's train step, and that 80% is fp32 matrix products already running near the core's peak.
Three changes, each the same function in fp32 (no reduced precision anywhere):

* :func:`linear`: ``y = x W^T + b`` (optionally ``relu``) and its two backward products through
  oneDNN's matmul (``torch.ops.mkldnn._linear_pointwise``, the kernel Inductor uses for CPU
  linears) instead of MKL's ``addmm``: 5-10% faster on these shapes on AVX-512 cores, the ReLU fused
  into the product; the input gradient is skipped when the input needs none (the raw features).
* :func:`ffn`: ``linear2(dropout(relu(linear1(x))))`` as one autograd node that keeps only the
  dropped-out activation f: its sign is the ReLU mask and the dropout mask together
  (d f / d pre = [f > 0] / (1 - p), exactly), so the backward is one masked scale.
* :func:`dropout`: inverted dropout whose keep decision compares 8 (or 16) random bits with a
  threshold (``randint`` words viewed as narrower integers) instead of one ``torch.rand`` float per
  element (~4.5 ns each on CPU, ~3% of a step), when p is a multiple of 2^-8 (2^-16), as the
  released 0.5: then P(keep) = 1 - p exactly, the same distribution; other p draw floats as
  before. Not the random stream of ``nn.Dropout``.

Outside a CPU fp32 context (CUDA, ``autocast_bf16``, no oneDNN in the build) every function falls
back to the plain ``torch.nn.functional`` ops. ``tests/test_backbones_fused.py`` checks the fused
encoders against ``kernels="modules"`` (logits and every gradient to 1e-5) and these functions
against their references.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from merc.models.packed import Packing, packed_attention

_ONEDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def cpu_fp32(x: torch.Tensor) -> bool:
    """``x`` is a CPU fp32 tensor and CPU autocast is off (the default numerics on CPU)."""
    return (x.device.type == "cpu" and x.dtype == torch.float32
            and not torch.is_autocast_enabled("cpu"))


def onednn_ok(x: torch.Tensor) -> bool:
    """Whether :func:`linear` may use oneDNN for ``x``: CPU fp32 outside autocast."""
    return _ONEDNN and cpu_fp32(x)


def _mm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None,
        attr: str = "none") -> torch.Tensor:
    """oneDNN ``x @ w.T (+ b)``, ``attr`` "relu" fuses the ReLU; strided operands are fine."""
    return torch.ops.mkldnn._linear_pointwise(x, w, b, attr, [], "")


class _Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, b, relu: bool):
        y = _mm(x, w, b, "relu" if relu else "none")
        ctx.relu, ctx.has_b = relu, b is not None
        ctx.save_for_backward(x, w, y if relu else None)
        return y

    @staticmethod
    def backward(ctx, gy):
        x, w, y = ctx.saved_tensors
        if ctx.relu:
            gy = torch.ops.aten.threshold_backward(gy, y, 0)        # F.relu's backward
        gx = _mm(gy, w.t()) if ctx.needs_input_grad[0] else None     # gy W
        gw = _mm(gy.t(), x.t()) if ctx.needs_input_grad[1] else None  # gy^T x
        gb = gy.sum(0) if ctx.has_b and ctx.needs_input_grad[2] else None
        return gx, gw, gb, None


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           relu: bool = False) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` (then ReLU if ``relu``) for 2-d ``x``; oneDNN on CPU fp32."""
    if onednn_ok(x):
        return _Linear.apply(x, weight, bias, relu)
    y = F.linear(x, weight, bias)
    return torch.relu(y) if relu else y


def keep_mask(shape: tuple[int, ...], p: float, device: torch.device) -> torch.Tensor:
    """fp32 inverted-dropout multipliers: 0 with probability p, else 1 / (1 - p) (module doc)."""
    bits = next((b for b in (8, 16) if float(p * 2 ** b).is_integer()), None)
    if bits is None:                                   # p not a multiple of 2^-16: one float each
        return torch.rand(shape, device=device).ge_(p).mul_(1.0 / (1.0 - p))
    n, per = math.prod(shape), 64 // bits
    words = torch.randint(-2 ** 63, 2 ** 63 - 1, ((n + per - 1) // per,), dtype=torch.int64,
                          device=device)
    r = words.view(torch.int8 if bits == 8 else torch.int16)[:n].view(shape)
    # r is uniform on [-2^(bits-1), 2^(bits-1)): keep iff r >= -2^(bits-1) + p 2^bits
    thr = -2 ** (bits - 1) + int(p * 2 ** bits)
    return r.ge(thr).to(torch.float32).mul_(1.0 / (1.0 - p))


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Inverted dropout (``F.dropout``'s distribution) with :func:`keep_mask`'s draw."""
    if not training or p == 0.0:
        return x
    keep = keep_mask(tuple(x.shape), p, x.device)
    return keep.mul_(x) if x.dtype == keep.dtype else x * keep.to(x.dtype)


class _FFN(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w1, b1, w2, b2, p: float, training: bool):
        f = _mm(x, w1, b1, "relu")                                  # relu(x W1^T + b1)
        scale = 1.0
        if training and p > 0.0:
            f.mul_(keep_mask(tuple(f.shape), p, f.device))
            scale = 1.0 / (1.0 - p)
        ctx.scale = scale
        ctx.save_for_backward(x, w1, w2, f)
        return _mm(f, w2, b2)

    @staticmethod
    def backward(ctx, gy):
        x, w1, w2, f = ctx.saved_tensors
        gw2, gb2 = _mm(gy.t(), f.t()), gy.sum(0)
        # d f / d pre = [f > 0] * scale: f > 0 iff the ReLU passed and dropout kept it
        gpre = torch.ops.aten.threshold_backward(_mm(gy, w2.t()), f, 0)
        if ctx.scale != 1.0:
            gpre.mul_(ctx.scale)
        gx = _mm(gpre, w1.t()) if ctx.needs_input_grad[0] else None
        return gx, _mm(gpre.t(), x.t()), gpre.sum(0), gw2, gb2, None, None


def ffn(x: torch.Tensor, lin1: nn.Linear, lin2: nn.Linear, p: float, training: bool
        ) -> torch.Tensor:
    """``lin2(dropout(relu(lin1(x)), p))``, the Transformer layer's feed-forward block."""
    if onednn_ok(x):
        return _FFN.apply(x, lin1.weight, lin1.bias, lin2.weight, lin2.bias, p, training)
    return lin2(dropout(torch.relu(lin1(x)), p, training))


class _DialogueAttention(torch.autograd.Function):
    """softmax(Q K^T / sqrt(d_h)) V per dialogue on its own rows of the packed ``qkv``."""

    @staticmethod
    def forward(ctx, qkv, sizes: list[int], heads: int, p: float):
        U, d = qkv.shape[0], qkv.shape[1] // 3
        x, scale = qkv.view(U, 3, heads, d // heads), 1.0 / math.sqrt(d // heads)
        out = qkv.new_empty(U, heads, d // heads)
        # one dropout draw for every dialogue's probabilities (empty: no dropout)
        keep = keep_mask((heads * sum(n * n for n in sizes),), p, qkv.device) if p > 0.0 \
            else qkv.new_empty(0)
        probs, o, used = [], 0, 0
        for n in sizes:
            q, k, v = (x[o:o + n, i].transpose(0, 1) for i in range(3))     # [H, n, dh]
            a = torch.softmax(torch.baddbmm(q.new_empty(heads, n, n), q, k.transpose(1, 2),
                                            beta=0.0, alpha=scale), dim=-1)
            ad = a * keep[used:used + heads * n * n].view(heads, n, n) if p > 0.0 else a
            out[o:o + n].copy_(torch.bmm(ad, v).transpose(0, 1))
            probs.append(a)
            o, used = o + n, used + heads * n * n
        ctx.sizes, ctx.heads, ctx.scale = sizes, heads, scale
        ctx.save_for_backward(qkv, keep, *probs)
        return out.view(U, d)

    @staticmethod
    def backward(ctx, g):
        qkv, keep, *probs = ctx.saved_tensors
        U, d, H = qkv.shape[0], qkv.shape[1] // 3, ctx.heads
        x, gx = qkv.view(U, 3, H, d // H), torch.empty_like(qkv).view(U, 3, H, d // H)
        g = g.reshape(U, H, d // H)
        o = used = 0
        for a, n in zip(probs, ctx.sizes):
            q, k, v = (x[o:o + n, i].transpose(0, 1) for i in range(3))     # [H, n, dh]
            go = g[o:o + n].transpose(0, 1)
            ga = torch.bmm(go, v.transpose(1, 2))                            # d / d(dropped a)
            ad = a
            if keep.numel():
                kb = keep[used:used + H * n * n].view(H, n, n)
                ad, ga = a * kb, ga.mul_(kb)
            gx[o:o + n, 2].copy_(torch.bmm(ad.transpose(1, 2), go).transpose(0, 1))
            gs = torch._softmax_backward_data(ga, a, -1, a.dtype).mul_(ctx.scale)
            gx[o:o + n, 0].copy_(torch.bmm(gs, k).transpose(0, 1))
            gx[o:o + n, 1].copy_(torch.bmm(gs.transpose(1, 2), q).transpose(0, 1))
            o, used = o + n, used + H * n * n
        return gx.view(U, 3 * d), None, None, None


def dialogue_attention(qkv: torch.Tensor, sizes: list[int], heads: int, p: float
                       ) -> torch.Tensor:
    """Multi-head self-attention of each dialogue over its own utterances: ``qkv`` packed
    [U, 3d] (projected queries | keys | values, dialogue-major rows, ``sizes`` rows per
    dialogue), dropout ``p`` on the probabilities; returns [U, d]. Exactly the padded attention
    with a key mask at the real rows, without the padding (~3x fewer products on IEMOCAP
    batches, whose dialogues are 20-110 long) and without the pad / unpad copies."""
    return _DialogueAttention.apply(qkv, sizes, heads, p)


def encoder_packed(enc: nn.TransformerEncoder, x: torch.Tensor, pk: Packing,
                   key_mask: torch.Tensor) -> torch.Tensor:
    """``nn.TransformerEncoder`` of post-norm ReLU layers on packed rows [U, d] (the padded
    module's output at the real positions): position-wise products on the U real rows through
    :func:`linear` / :func:`ffn`, attention per dialogue on its own rows
    (:func:`dialogue_attention`; off CPU fp32, e.g. under ``autocast_bf16``, one masked padded
    product, :func:`merc.models.corect_fused.packed_attention`)."""
    sizes = key_mask.sum(1).tolist()                   # rows per dialogue (dialogue-major rows)
    for layer in enc.layers:
        if layer.norm_first or layer.activation is not F.relu:
            raise ValueError("encoder_packed: expects post-norm ReLU layers")
        at, tr = layer.self_attn, layer.training
        qkv = linear(x, at.in_proj_weight, at.in_proj_bias)
        p = at.dropout if tr else 0.0
        a = (dialogue_attention(qkv, sizes, at.num_heads, p) if cpu_fp32(qkv)
             else packed_attention(qkv, pk, key_mask, at.num_heads, p))
        a = linear(a, at.out_proj.weight, at.out_proj.bias)
        x = layer.norm1(x + dropout(a, layer.dropout1.p, tr))
        f = ffn(x, layer.linear1, layer.linear2, layer.dropout.p, tr)
        x = layer.norm2(x + dropout(f, layer.dropout2.p, tr))
    if enc.norm is not None:
        x = enc.norm(x)
    return x
