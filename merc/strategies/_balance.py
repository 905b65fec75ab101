"""Shared pieces of the modality-balancing plug-ins RNA, OGM-GE, OPM and FAGM (the baselines SPCL
compares against, SPCL Tables 3-4): the per-modality logits check, uni-modal scores and discrepancy
ratios, and the partition of a model's modules into modality-specific and shared ones.

The plug-ins read only :class:`merc.models.Output` (``modality_logits``, optionally
``extras["features_<m>"]``) plus, for gradient modulation, the model handed to ``after_backward``.
Which modules belong to which modality is found the way FAGM's released ``modulation_init`` does
(Wang et al., ACM MM 2023): forward hooks record every parameterised module's input with all
modalities and with only modality m present (the others zeroed); a module whose input does not
change when the other modalities vanish is specific to m. This needs no model-specific code.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Optional

import torch
from pydantic import Field
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from merc.configs.strategies import WindowConfig
from merc.data.dataset import Batch
from merc.models.kernels import module_path
from merc.strategies.base import Strategy

#: backbones whose Output carries modality_logits
LATE_FUSION = "dialoguegcn, biddin, mmgcn, mmdfn"


def model_name(model: nn.Module) -> str:
    """The registry name of ``model`` (its class name when it is not registered)."""
    from merc.models.base import REGISTRY
    for name, entry in REGISTRY.items():
        if entry.builder is type(model):
            return name
    return type(model).__name__


class BalanceStrategy(Strategy):
    """Base of the four plug-ins: epoch window, the per-modality-logits requirement, metric sums."""

    name = "balance"
    prefix = ""

    def __init__(self, config):
        self.config = config
        self._missing = False
        self._sums: dict[str, float] = {}
        self._count = 0

    def active(self, epoch: int) -> bool:
        c = self.config
        start = getattr(c, f"{self.prefix}_start_epoch")
        end = getattr(c, f"{self.prefix}_end_epoch")
        return epoch >= start and (end is None or epoch < end)

    def modality_logits(self, output) -> Optional[dict[str, torch.Tensor]]:
        """``output.modality_logits``, or None (remembered: ``after_backward`` then raises with the
        model's name, before any optimiser step)."""
        mlog = getattr(output, "modality_logits", None)
        if not mlog:
            self._missing = True
            return None
        return mlog

    def check_model(self, model: nn.Module) -> None:
        if self._missing:
            raise TypeError(f"strategy {self.name!r} needs per-modality logits "
                            f"(Output.modality_logits) and model {model_name(model)!r} returns "
                            f"none; use a late-fusion model ({LATE_FUSION})")

    def after_backward(self, epoch, model, output, batch) -> None:
        self.check_model(model)

    def log(self, **values: float) -> None:
        for k, v in values.items():
            self._sums[k] = self._sums.get(k, 0.0) + float(v)
        self._count += 1 if values else 0

    def epoch_end(self, epoch: int) -> dict[str, float]:
        out = {f"{self.prefix}_{k}": v / max(self._count, 1) for k, v in self._sums.items()}
        self._sums, self._count = {}, 0
        return out


# ---- scores and ratios -------------------------------------------------------------------------

def labelled(batch: Batch) -> torch.Tensor:
    return batch.labels != -100


def modality_scores(mlog: dict[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    """s^m = sum_i softmax(z^m_i)[y_i] over the labelled utterances of the batch (OGM-GE's uni-modal
    score; Ada2I Eq. (16)): [M], no gradient."""
    keep = labels != -100
    y = labels.clamp(min=0)[..., None]
    probs = torch.stack([torch.softmax(z.detach().float(), -1).gather(-1, y)[..., 0]
                         for z in mlog.values()])
    return (probs * keep).sum((1, 2))


def discrepancy_ratios(scores: torch.Tensor) -> torch.Tensor:
    """rho^m = s^m / min_j s^j (Ada2I Eq. (17), the three-modality form of OGM-GE's ratio s^a / s^v
    used by the SPCL group): 1 for the weakest modality, > 1 for the stronger ones."""
    return scores / scores.min().clamp(min=1e-12)


def modulation_coefficients(ratios: torch.Tensor, alpha: float) -> torch.Tensor:
    """k^m = 1 - tanh(alpha rho^m) where rho^m > 1, else 1 (Ada2I Eq. (18); OGM-GE's coefficient
    in its three-modality form)."""
    return torch.where(ratios > 1.0, 1.0 - torch.tanh(alpha * ratios), torch.ones_like(ratios))


def without(batch: Batch, drop: set[str]) -> Batch:
    """The batch with the features of the modalities in ``drop`` zeroed (FAGM's probes)."""
    feats = {m: torch.zeros_like(x) if m in drop else x for m, x in batch.features.items()}
    return replace(batch, features=feats)


# ---- module partition (FAGM modulation_init) ---------------------------------------------------

def _as_tensor(x) -> Optional[torch.Tensor]:
    if isinstance(x, PackedSequence):
        return x.data
    return x if isinstance(x, torch.Tensor) else None


class ActivationRecorder:
    """Forward hooks on every module that owns parameters (``recurse=False``) except embeddings:
    records the module's first positional input per call (detached)."""

    def __init__(self, model: nn.Module):
        self.modules = [mod for mod in model.modules()
                        if any(True for _ in mod.parameters(recurse=False))
                        and not isinstance(mod, nn.Embedding)]
        self.acts: dict[nn.Module, list[torch.Tensor]] = {}

    def _hook(self, mod, args, out):
        x = _as_tensor(args[0]) if args else None
        if x is not None:
            self.acts.setdefault(mod, []).append(x.detach())

    def run(self, model: nn.Module, batch: Batch, grad: bool = True):
        """Forward ``batch`` in eval mode; returns (output, {module: [inputs]}). With ``grad`` (the
        probe of :func:`partition`) autograd stays on so that PyTorch's fused Transformer fast
        path, which skips the hooks of a layer's submodules, is off; without it (FAGM's per-step
        estimate, which needs the shared modules' inputs only) the pass is cheaper."""
        handles = [m.register_forward_hook(self._hook) for m in self.modules]
        was = model.training
        model.eval()
        try:
            # the module path: the fused kernels compute the same outputs without calling most
            # modules' forward, so their hooks would not fire
            with torch.set_grad_enabled(grad), module_path():
                out = model(batch)
        finally:
            model.train(was)
            for h in handles:
                h.remove()
        acts, self.acts = self.acts, {}
        return out, acts


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(x.shape == y.shape and torch.equal(x, y) for x, y in zip(a, b))


def partition(model: nn.Module, batch: Batch, modalities: tuple[str, ...]
              ) -> tuple[dict[str, list[nn.Module]], list[nn.Module]]:
    """(modality -> its specific modules, shared modules). A module is specific to m when its
    inputs with only m present equal its inputs with all modalities; a module that qualifies for
    several modalities (its input depends on none, e.g. positions) counts as shared."""
    rec = ActivationRecorder(model)
    _, full = rec.run(model, batch)
    owners: dict[nn.Module, list[str]] = {mod: [] for mod in full}
    for m in modalities:
        _, only = rec.run(model, without(batch, set(modalities) - {m}))
        for mod, acts in full.items():
            if mod in only and _same(acts, only[mod]):
                owners[mod].append(m)
    specific = {m: [] for m in modalities}
    shared = []
    for mod, own in owners.items():
        if len(own) == 1 or (len(modalities) == 1 and own):
            specific[own[0]].append(mod)
        else:
            shared.append(mod)
    return specific, shared


def own_params(modules: list[nn.Module]):
    for mod in modules:
        yield from (p for p in mod.parameters(recurse=False) if p.grad is not None)


__all__ = ["BalanceStrategy", "WindowConfig", "modality_scores", "discrepancy_ratios",
           "modulation_coefficients", "without",
           "partition", "ActivationRecorder", "own_params", "labelled", "Field"]
