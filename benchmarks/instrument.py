"""Phase timers around one real ``merc.train.fit`` call, without touching library code.

Inside :func:`instrumented` (a context manager) these are wrapped, and restored on exit:

* graph construction: every ``merc.graphs`` builder, both in ``merc.graphs`` and wherever a model
  module imported it by name (``from merc.graphs import corect_graph``); re-entrant calls (a
  builder calling another) are charged once; CORECT's fused path builds its band masks in
  ``merc.models.corect_fused.Bands`` (and ``Bands.mask``), charged as graph construction too;
* batching: ``DialogueSplit.batch`` (padding a batch from the memory-mapped arrays);
* forward: a forward pre/post hook on the model that ``fit`` builds (``merc.train.build_model``);
* backward: ``torch.Tensor.backward``;
* optimizer: the global optimizer step pre/post hooks (``Optimizer.step``).

Each phase is split by whether the model was in training mode (``train/...``) or evaluation mode
(``eval/...``). "forward" includes graph construction; :func:`step_shares` reports forward
without it. Everything else in the training loop (loss, zero_grad, metric bookkeeping) is "other".
"""
from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Optional

import torch

from benchmarks.common import PhaseTimer

GRAPH_FUNCS = ("corect_graph", "window_edges", "fully_connected_edges", "dag_edges")


@contextmanager
def instrumented(timer: PhaseTimer):
    import merc.graphs as graphs
    import merc.train as train_mod
    from merc.data.dataset import DialogueSplit
    state = {"model": None, "depth": 0}

    def mode() -> str:
        m = state["model"]
        return "train" if (m is not None and m.training) else "eval"

    originals = {getattr(graphs, n): n for n in GRAPH_FUNCS if hasattr(graphs, n)}
    patched: list[tuple[object, str, object]] = []

    def graph_wrapper(fn):
        def wrapped(*a, **kw):
            if state["depth"]:
                return fn(*a, **kw)
            state["depth"] += 1
            try:
                with timer.phase(f"{mode()}/graph"):
                    return fn(*a, **kw)
            finally:
                state["depth"] -= 1
        wrapped.__wrapped__ = fn
        return wrapped

    wrappers = {fn: graph_wrapper(fn) for fn in originals}
    for name, mod in list(sys.modules.items()):
        if mod is None or not (name == "merc.graphs" or name.startswith("merc.models")
                               or name.startswith("merc.strategies")):
            continue
        for attr, val in list(vars(mod).items()):
            if callable(val) and val in wrappers:
                patched.append((mod, attr, val))
                setattr(mod, attr, wrappers[val])

    try:
        from merc.models.corect_fused import Bands
    except ImportError:
        Bands = None
    if Bands is not None:
        for attr in ("__init__", "mask"):
            fn = getattr(Bands, attr)
            patched.append((Bands, attr, fn))
            setattr(Bands, attr, graph_wrapper(fn))

    orig_batch = DialogueSplit.batch

    def batch(self, *a, **kw):
        with timer.phase(f"{mode()}/batching"):
            return orig_batch(self, *a, **kw)
    DialogueSplit.batch = batch

    orig_build = train_mod.build_model
    hooks = []
    fwd_ctx = {}

    def pre(module, args):
        fwd_ctx["cm"] = timer.phase(f"{mode()}/forward")
        fwd_ctx["cm"].__enter__()

    def post(module, args, out):
        cm = fwd_ctx.pop("cm", None)
        if cm is not None:
            cm.__exit__(None, None, None)

    def build_model(*a, **kw):
        model = orig_build(*a, **kw)
        state["model"] = model
        hooks.append(model.register_forward_pre_hook(pre))
        hooks.append(model.register_forward_hook(post))
        return model
    train_mod.build_model = build_model

    orig_backward = torch.Tensor.backward

    def backward(self, *a, **kw):
        with timer.phase(f"{mode()}/backward"):
            return orig_backward(self, *a, **kw)
    torch.Tensor.backward = backward

    opt_ctx = {}

    def opt_pre(opt, args, kwargs):
        opt_ctx["cm"] = timer.phase(f"{mode()}/optimizer")
        opt_ctx["cm"].__enter__()

    def opt_post(opt, args, kwargs):
        cm = opt_ctx.pop("cm", None)
        if cm is not None:
            cm.__exit__(None, None, None)
    from torch.optim.optimizer import (register_optimizer_step_post_hook,
                                       register_optimizer_step_pre_hook)
    h1 = register_optimizer_step_pre_hook(opt_pre)
    h2 = register_optimizer_step_post_hook(opt_post)
    try:
        yield state
    finally:
        h1.remove()
        h2.remove()
        torch.Tensor.backward = orig_backward
        train_mod.build_model = orig_build
        DialogueSplit.batch = orig_batch
        for h in hooks:
            h.remove()
        for mod, attr, val in patched:
            setattr(mod, attr, val)


def step_shares(timer: PhaseTimer, train_seconds: float, kind: str = "wall",
                steps: Optional[int] = None) -> dict[str, float]:
    """Seconds per training phase and 'other' (the rest of the train part of the epochs)."""
    d = timer.wall if kind == "wall" else timer.cpu
    g = d.get("train/graph", 0.0)
    out = {"graph": g, "forward_excl_graph": d.get("train/forward", 0.0) - g,
           "backward": d.get("train/backward", 0.0), "optimizer": d.get("train/optimizer", 0.0),
           "batching": d.get("train/batching", 0.0)}
    out["other"] = train_seconds - sum(out.values())
    return out
