"""The backbones' ``kernels="fused"`` path (the default) computes the ``"modules"`` path's function:
logits and every parameter gradient to 1e-5, at the released structure (small widths)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from merc.data.dataset import MercData
from merc.models import build_model
from merc.train import resolve_config

#: the released structures at small widths (as tests/test_backbones.py's RELEASED_SMALL)
RELEASED_SMALL = {"mmgcn": {"encoder_ff": 16}, "mmdfn": {"encoder_ff": 16},
                  "dialoguegcn": {"encoder_ff": 16, "hidden2_size": 6},
                  "biddin": {"party_size": 6, "emotion_size": 4, "classifier_size": 4}}
FUSED = list(RELEASED_SMALL)


@pytest.fixture(scope="module")
def small(small_dir):
    return MercData(small_dir, "ATV")


def _twins(name: str, meta, **over):
    """(modules, fused) models with the same parameters, every dropout off."""
    kw = {"hidden_size": 8, "dropout": 0.0} | RELEASED_SMALL[name] | over
    models = []
    for kernels in ("modules", "fused"):
        _, cfg = resolve_config(name, kw | {"kernels": kernels})
        torch.manual_seed(0)
        models.append(build_model(name, cfg, meta))
    models[1].load_state_dict(models[0].state_dict())
    for model in models:
        for mod in model.modules():
            if isinstance(mod, nn.Dropout):
                mod.p = 0.0                       # BiDDIN's fixed positional dropout (0.1)
    return models


def _run(model, batch) -> dict[str, torch.Tensor]:
    model.train()
    out = model(batch)
    w = torch.linspace(-1, 1, out.logits.shape[-1])
    loss = (out.logits[batch.mask] * w).sum()
    for k, z in enumerate(out.modality_logits.values()):        # per-modality logits too
        loss = loss + 0.1 * (k + 1) * (z[batch.mask] * w).sum()
    loss.backward()
    res = {n: p.grad for n, p in model.named_parameters()}
    res["train logits"] = out.logits[batch.mask].detach()
    model.eval()
    with torch.no_grad():
        res["eval logits"] = model(batch).logits[batch.mask]
    return res


#: the other structures whose post-encoder part the fused path packs too
OTHER = [("mmgcn", {"encoder": "mmgcn", "use_speaker": True, "gcn_layers": 3}),
         ("mmdfn", {"encoder": "light"}), ("mmdfn", {"encoder": "mmgcn", "use_speaker": True})]


@pytest.mark.parametrize("name,over", [(n, {}) for n in FUSED] + OTHER)
@pytest.mark.parametrize("idx", [(0, 1, 2, 5), (3,)])
def test_fused_equals_modules(name, over, idx, small, assert_twins_agree):
    """Logits (train and eval mode) and every parameter gradient agree to 1e-5; the parameters
    the release never uses get no gradient on either path."""
    mods, fused = _twins(name, small.meta, **over)
    assert fused.config.kernels == "fused" and mods.config.kernels == "modules"
    batch = small["train"].batch(list(idx))
    assert_twins_agree(_run(mods, batch), _run(fused, batch))


@pytest.mark.parametrize("name", FUSED)
def test_fused_default_and_padding_invariant(name, small):
    """A dialogue's logits do not depend on the other dialogues of its batch (eval mode)."""
    _, cfg = resolve_config(name, {"hidden_size": 8} | RELEASED_SMALL[name])
    assert cfg.kernels == "fused" and cfg.autocast_bf16 is False
    torch.manual_seed(0)
    model = build_model(name, cfg, small.meta).eval()
    one, many = small["train"].batch([2]), small["train"].batch([2, 3, 5])
    n = int(one.lengths[0])
    with torch.no_grad():
        assert torch.allclose(model(one).logits[0, :n], model(many).logits[0, :n], atol=1e-5)


@pytest.mark.parametrize("name", FUSED)
def test_autocast_bf16_trains(name, small):
    """bf16 autocast (opt-in): fp32 logits and gradients, close to the fp32 logits."""
    _, cfg = resolve_config(name, {"hidden_size": 8, "autocast_bf16": True}
                            | RELEASED_SMALL[name])
    torch.manual_seed(0)
    model = build_model(name, cfg, small.meta)
    _, ref_cfg = resolve_config(name, {"hidden_size": 8} | RELEASED_SMALL[name])
    ref = build_model(name, ref_cfg, small.meta)
    ref.load_state_dict(model.state_dict())
    batch = small["train"].batch([0, 1])
    out = model(batch)
    assert out.logits.dtype == torch.float32
    assert all(z.dtype == torch.float32 for z in out.modality_logits.values())
    out.logits[batch.mask].sum().backward()
    assert all(p.grad is None or (p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all())
               for p in model.parameters())
    model.eval(), ref.eval()
    with torch.no_grad():
        lo, hi = model(batch).logits[batch.mask], ref(batch).logits[batch.mask]
    assert torch.allclose(lo, hi, atol=0.1 * float(hi.abs().max()) + 1e-3)
    assert not torch.equal(lo, hi)                               # bf16 really ran


def test_fused_dropout_distribution():
    """The fused paths' dropout: zeros with probability p, survivors (and their gradient) scaled
    by 1 / (1 - p), nothing in eval mode."""
    from merc.models.backbones._common import dropout
    torch.manual_seed(0)
    x = torch.full((200_000,), 2.0, requires_grad=True)
    y = dropout(x, 0.1, True)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.9) < 0.005
    assert torch.allclose(y[kept], torch.tensor(2.0 / 0.9))
    y.sum().backward()
    assert torch.equal(x.grad, kept.float() / 0.9)
    assert dropout(x, 0.1, False) is x and dropout(x, 0.0, True) is x


# ---- the packed encoders' CPU kernels (merc.models.kernels, merc.models.packed) -----------------

def _grads(fn, *ts):
    out = fn(*ts)
    out.backward(torch.linspace(-1, 1, out.numel()).view_as(out))
    return [out.detach()] + [t.grad for t in ts]


@pytest.mark.parametrize("relu,bias,input_grad", [(False, True, True), (True, True, False),
                                                  (False, False, True)])
def test_fused_linear_equals_functional(relu, bias, input_grad):
    """``linear`` = ``F.linear`` (+ ReLU): output and the gradients of x, W, b to 1e-5; no input
    gradient is formed when the input needs none (the raw features)."""
    from merc.models import kernels
    torch.manual_seed(0)
    x = torch.randn(37, 24, requires_grad=input_grad)
    w, b = torch.randn(40, 24, requires_grad=True), torch.randn(40, requires_grad=True)
    args = (x, w, b) if bias else (x, w)

    def ref(x, w, b=None):
        y = torch.nn.functional.linear(x, w, b)
        return torch.relu(y) if relu else y
    want = _grads(ref, *args)
    for t in args:
        t.grad = None
    got = _grads(lambda *a: kernels.linear(*a, relu=relu), *args)
    for a, b_ in zip(want, got):
        assert (a is None) == (b_ is None)
        if a is not None:
            assert torch.allclose(a, b_, atol=1e-5, rtol=1e-5)
    assert kernels.onednn_ok(x) == kernels._ONEDNN


@pytest.mark.parametrize("p", [0.5, 0.0])
def test_fused_ffn_equals_modules(p):
    """``ffn`` = ``lin2(dropout(relu(lin1(x))))`` with the same dropout mask: output and every
    gradient to 1e-5 (the backward's single mask [f > 0] / (1 - p) is exact)."""
    from merc.models.kernels import ffn, keep_mask
    torch.manual_seed(0)
    lin1, lin2 = nn.Linear(24, 64), nn.Linear(64, 24)
    x = torch.randn(53, 24, requires_grad=True)
    torch.manual_seed(1)
    got = _grads(lambda x: ffn(x, lin1, lin2, p, True), x)
    g1 = [t.grad.clone() for t in (*lin1.parameters(), *lin2.parameters())]
    x.grad = None
    lin1.zero_grad(), lin2.zero_grad()
    torch.manual_seed(1)
    keep = keep_mask((53, 64), p, x.device) if p else 1.0
    want = _grads(lambda x: lin2(torch.relu(lin1(x)) * keep), x)
    g0 = [t.grad for t in (*lin1.parameters(), *lin2.parameters())]
    for a, b in zip(want + g0, got + g1):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("p,values", [(0.5, {0.0, 2.0}), (0.25, {0.0, 4 / 3}),
                                      (3 / 2 ** 12, {0.0, 1 / (1 - 3 / 2 ** 12)}),
                                      (0.1, {0.0, 1 / 0.9})])
def test_fused_keep_mask_distribution(p, values):
    """``keep_mask``: 0 with probability p (8- / 16-bit draws for dyadic p, floats otherwise),
    survivors 1 / (1 - p); the dropout built on it passes survivors' gradients scaled the same."""
    from merc.models.kernels import dropout, keep_mask
    torch.manual_seed(0)
    k = keep_mask((500, 800), p, torch.device("cpu"))
    assert k.dtype == torch.float32 and k.shape == (500, 800)
    assert set(torch.unique(k).tolist()) <= {float(torch.tensor(v)) for v in values}
    assert abs((k == 0).float().mean().item() - p) < 4 * (p * (1 - p) / k.numel()) ** 0.5 + 1e-6
    x = torch.full((1000,), 3.0, requires_grad=True)
    y = dropout(x, p, True)
    y.sum().backward()
    assert torch.equal(x.grad, (y != 0).float() / (1 - p))
    assert dropout(x, p, False) is x


@pytest.mark.parametrize("threads", [1, 2])
def test_fused_step_is_deterministic(small, threads):
    """Same seed, same batch: bitwise-equal logits and gradients, with every dropout on, also at
    2 threads (where an accumulating gather backward, ``g[src]``, once summed repeated rows in a
    thread-dependent order)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        runs = []
        for _ in range(10):
            _, cfg = resolve_config("dialoguegcn", {"hidden_size": 64, "encoder_ff": 256})
            torch.manual_seed(0)
            model = build_model("dialoguegcn", cfg, small.meta).train()
            out = model(small["train"].batch(list(range(10))))
            out.logits.sum().backward()
            runs.append([out.logits.detach()] + [p.grad for p in model.parameters()
                                                 if p.grad is not None])
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(a, b) for r in runs[1:] for a, b in zip(runs[0], r))


@pytest.mark.parametrize("heads,p", [(1, 0.5), (2, 0.5), (2, 0.0)])
def test_dialogue_attention_equals_padded(heads, p):
    """``dialogue_attention`` (training on CPU) = per dialogue softmax(Q K^T / sqrt(d_h)) V with
    dropout on the probabilities (the same draw), on packed rows: output and the gradient of qkv
    to 1e-5; without dropout also equal to the padded masked product (``padded_attention``)."""
    from merc.models.kernels import keep_mask
    from merc.models.packed import Packing, dialogue_attention, padded_attention
    sizes, d = [5, 1, 9, 3], 8
    U, dh = sum(sizes), d // heads
    mask = torch.arange(max(sizes))[None] < torch.tensor(sizes)[:, None]
    pk = Packing(mask)
    torch.manual_seed(0)
    qkv = torch.randn(U, 3 * d, requires_grad=True)
    torch.manual_seed(1)
    got = _grads(lambda t: dialogue_attention(t[None], pk, mask[None], heads, p)[0], qkv)
    qkv.grad = None
    torch.manual_seed(1)
    keep = keep_mask((heads * sum(n * n for n in sizes),), p, qkv.device) if p else None

    def ref(t):
        outs, o, used = [], 0, 0
        for n in sizes:
            q, k, v = (t[o:o + n, i * d:(i + 1) * d].view(n, heads, dh).transpose(0, 1)
                       for i in range(3))
            a = torch.softmax(q @ k.transpose(1, 2) / dh ** 0.5, -1)
            if keep is not None:
                a = a * keep[used:used + heads * n * n].view(heads, n, n)
            outs.append((a @ v).transpose(0, 1).reshape(n, d))
            o, used = o + n, used + heads * n * n
        return torch.cat(outs)
    want = _grads(ref, qkv)
    for a, b in zip(want, got):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5)
    if not p:
        with torch.no_grad():
            padded = padded_attention(qkv[None], pk, mask[None], heads, 0.0)[0]
        assert torch.allclose(padded, got[0], atol=1e-5)


@pytest.mark.parametrize("num_speakers,num_bases", [(3, 30), (2, None)])
def test_rgcn_by_source_speaker_equals_pyg(num_speakers, num_bases):
    """DialogueGCN's fused RGCN (per source speaker only its 2S relations) = PyG ``RGCNConv``
    (mean aggregation, basis decomposition or none) on its speaker relations: output and the
    gradients of x and of every parameter to 1e-5."""
    from torch_geometric.nn import RGCNConv

    from merc.models.backbones._common import cached_window_edges, speaker_relation_types
    from merc.models.backbones.dialoguegcn import SpeakerRGCNPlan, rgcn_by_source_speaker
    torch.manual_seed(0)
    lengths = torch.tensor([7, 1, 12, 4])
    ei = cached_window_edges(lengths, 2, 3, "cpu")
    spk = torch.randint(0, num_speakers, (int(lengths.sum()),))
    et = speaker_relation_types(ei, spk, num_speakers)
    conv = RGCNConv(6, 5, 2 * num_speakers ** 2, num_bases=num_bases)
    x = torch.randn(int(lengths.sum()), 6, requires_grad=True)
    plan = SpeakerRGCNPlan(ei, et, spk, num_speakers)
    res = []
    for fn in (lambda x: conv(x, ei, et), lambda x: rgcn_by_source_speaker(conv, x, plan)):
        x.grad = None
        conv.zero_grad()
        res.append(_grads(fn, x) + [p.grad.clone() for p in conv.parameters()])
    for a, b in zip(*res):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5)


def test_onednn_linear_only_at_full_fp32_precision():
    """A process that lowers oneDNN's fp32 matmul precision must not get it in the fp32 default:
    ``linear`` then falls back to ``F.linear``."""
    from merc.models import kernels
    x = torch.randn(4, 3)
    before = torch.backends.mkldnn.matmul.fp32_precision
    try:
        torch.backends.mkldnn.matmul.fp32_precision = "bf16"
        assert not kernels.onednn_ok(x)
    finally:
        torch.backends.mkldnn.matmul.fp32_precision = before
    assert kernels.onednn_ok(x) == kernels._ONEDNN
