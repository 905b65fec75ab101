"""CPU kernels shared by the fused paths (``kernels="fused"``) of CORECT and the four SPCL
backbones: dropout from random bits, oneDNN linear layers with written-out backward passes, a
one-node Transformer FFN, and the ``autocast_bf16`` context.

What, each the same function as the ``torch.nn.functional`` op it replaces (fp32; no reduced
precision unless ``autocast_bf16`` is on):

* :func:`keep_mask` / :func:`dropout`: inverted dropout whose keep decision compares 8 (or 16)
  random bits with a threshold, the bits cut from full-range int64 draws, instead of ATen's CPU
  ``bernoulli_`` (~14 ns per element) or one float uniform (~4 ns), when p is a multiple of 2^-8
  (2^-16), as the usual 0.5: then P(keep) = 1 - p exactly, the distribution of ``F.dropout``;
  other p draw floats. Not the random stream of ``nn.Dropout``.
* :func:`linear`: ``y = x W^T + b`` (optionally ``relu``) and its two backward products through
  oneDNN's matmul (``torch.ops.mkldnn._linear_pointwise``, the kernel Inductor uses for CPU
  linears) instead of MKL's ``addmm``: 5-10% faster on the encoders' shapes on AVX-512 cores, the
  ReLU fused into the product; the input gradient is skipped when the input needs none.
* :func:`ffn`: ``linear2(dropout(relu(linear1(x))))`` as one autograd node that keeps only the
  dropped-out activation f: its sign is the ReLU mask and the dropout mask together
  (d f / d pre = [f > 0] / (1 - p), exactly), so the backward is one masked scale.

Why: the Transformer encoders (CORECT's text encoder, the backbones' input-width encoders) are most
of a train step and matmul-bound, so what is left is the products' kernel and the passes around
them. Outside a CPU fp32 context (CUDA, ``autocast_bf16``, no oneDNN in the build) :func:`linear`
and :func:`ffn` are the plain ops. ``tests/test_backbones_fused.py`` checks them against their
references.
"""
from __future__ import annotations

import contextlib
import math
import threading

import torch
import torch.nn.functional as F
from torch import nn


def bf16_autocast(device: torch.device, enabled: bool) -> torch.autocast:
    """The ``autocast_bf16`` context of CORECT and the backbones: matmuls in bf16 (attention in
    :mod:`merc.models.packed` stays fp32 on CPU)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def keep_mask(shape, p: float, device: torch.device) -> torch.Tensor:
    """fp32 inverted-dropout multipliers: 0 with probability ``p``, else 1 / (1 - p).

    8 or 16 random bits per element when p is a multiple of 2^-8 (2^-16), else one float (module
    doc). CORECT's text encoder alone draws ~5M per step."""
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
    """Inverted dropout (``F.dropout``'s distribution) with :func:`keep_mask`'s draw."""
    if not training or p == 0.0:
        return x
    keep = keep_mask(x.shape, p, x.device)
    return keep.mul_(x) if x.dtype == keep.dtype else x * keep.to(x.dtype)


_ONEDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def cpu_fp32(x: torch.Tensor) -> bool:
    """``x`` is a CPU fp32 tensor and CPU autocast is off (the default numerics on CPU)."""
    return (x.device.type == "cpu" and x.dtype == torch.float32
            and not torch.is_autocast_enabled("cpu"))


def onednn_ok(x: torch.Tensor) -> bool:
    """Whether :func:`linear` may use oneDNN for ``x``: CPU fp32 outside autocast, and oneDNN's
    fp32 matmuls at full precision (``torch.backends.mkldnn.matmul.fp32_precision`` "none" or
    "ieee"; "bf16" / "tf32" would quietly change the fp32 default's numerics)."""
    return _ONEDNN and cpu_fp32(x) and _full_precision()


def _full_precision() -> bool:
    try:
        return torch.backends.mkldnn.matmul.fp32_precision in ("none", "ieee")
    except AttributeError:                    # older torch: no such setting, full precision
        return True


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


_PATH = threading.local()


def fused(kernels: str) -> bool:
    """Whether a model configured with ``kernels`` computes on its fused path now: False inside
    :func:`module_path`."""
    return kernels == "fused" and not getattr(_PATH, "modules", False)


@contextlib.contextmanager
def module_path():
    """Run every model on its module path (``kernels="modules"``) in this block, in this thread.
    Why: forward hooks (``merc.strategies._balance.partition``, which finds each modality's own
    modules by their inputs) see only modules whose ``forward`` runs; the fused kernels compute
    the same function from the same parameters without calling most of them."""
    before = getattr(_PATH, "modules", False)
    _PATH.modules = True
    try:
        yield
    finally:
        _PATH.modules = before
