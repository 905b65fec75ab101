"""PyG's ``RGCNConv`` and ``TransformerConv`` as parameter holders that do not import PyG.

What: :class:`RGCNParams` and :class:`TransformerConvParams` register the parameters of
``torch_geometric.nn.RGCNConv(in, out, R, aggr="mean", root_weight=True)`` and
``TransformerConv(in, out, heads, concat=True, root_weight=True)`` (no bases / blocks, no edge
features, no beta) under PyG's names, shapes and registration order, drawn by PyG's own
initialisation calls in PyG's order (glorot for the RGCN weights; a PyG ``Linear`` draws its
weight and bias once when built and again in the conv's ``reset_parameters``). So a model seeded
alike gets the same state dict, bit for bit, with either (``tests/test_corect.py`` pins it), and
the optimizer and checkpoints see the same parameter list.

Calling one (the module path, e.g. inside :func:`merc.models.kernels.module_path`) runs PyG's own
``forward`` on these very parameters: PyG is imported then, once, and a PyG twin built under a
forked RNG has its parameters bound to these before each call.

Why: CORECT's fused kernels (``merc.models.corect_fused``) read these parameters and never call
PyG, and ``import torch_geometric`` costs ~2.5-3.7 CPU-s (it imports ``torch._dynamo`` and, when
installed, ``transformers``): every sweep trial process paid it before its first trial.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn


def _glorot(p: torch.Tensor) -> None:
    """``torch_geometric.nn.inits.glorot``."""
    stdv = math.sqrt(6.0 / (p.size(-2) + p.size(-1)))
    p.data.uniform_(-stdv, stdv)


class PygLinear(nn.Linear):
    """``torch_geometric.nn.Linear(in, out)`` with its default initialisers (kaiming-uniform
    weight with a = sqrt(5) on fan-in, uniform bias with bound 1 / sqrt(fan-in))."""

    def reset_parameters(self) -> None:
        fan = self.in_features
        bound = math.sqrt(6 / ((1 + math.sqrt(5) ** 2) * fan))
        self.weight.data.uniform_(-bound, bound)
        if self.bias is not None:
            b = 1.0 / math.sqrt(fan)
            self.bias.data.uniform_(-b, b)


class _PygTwin(nn.Module):
    """Calls PyG's module of the same configuration on this module's parameters."""

    def _build_twin(self) -> nn.Module:
        raise NotImplementedError

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        twin = self.__dict__.get("_twin")
        if twin is None:
            with torch.random.fork_rng(devices=[]):     # building it draws its own init
                twin = self._build_twin()
            self.__dict__["_twin"] = twin                  # not a submodule: no state dict keys
        for name, p in self.named_parameters():
            *path, leaf = name.split(".")
            owner = twin
            for part in path:
                owner = getattr(owner, part)
            owner._parameters[leaf] = p
        twin.train(self.training)
        return twin(*args, **kwargs)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop("_twin", None)
        return state


class RGCNParams(_PygTwin):
    """``RGCNConv(in_channels, out_channels, num_relations, aggr="mean", root_weight=True)``."""

    def __init__(self, in_channels: int, out_channels: int, num_relations: int,
                 aggr: str = "mean", root_weight: bool = True, bias: bool = True) -> None:
        super().__init__()
        if aggr != "mean" or not root_weight:
            raise ValueError(f"RGCNParams: holds RGCNConv(aggr='mean', root_weight=True) only, "
                             f"got aggr={aggr!r}, root_weight={root_weight}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.num_relations = num_relations
        self.weight = nn.Parameter(torch.empty(num_relations, in_channels, out_channels))
        self.register_parameter("comp", None)
        self.root = nn.Parameter(torch.empty(in_channels, out_channels))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        _glorot(self.weight)
        _glorot(self.root)
        if self.bias is not None:
            self.bias.data.zero_()

    def _build_twin(self) -> nn.Module:
        from torch_geometric.nn import RGCNConv
        return RGCNConv(self.in_channels, self.out_channels, self.num_relations, aggr="mean",
                        root_weight=True, bias=self.bias is not None)


class TransformerConvParams(_PygTwin):
    """``TransformerConv(in_channels, out_channels, heads, concat=True, root_weight=True)``."""

    def __init__(self, in_channels: int, out_channels: int, heads: int = 1, concat: bool = True,
                 root_weight: bool = True, bias: bool = True) -> None:
        super().__init__()
        if not concat or not root_weight:
            raise ValueError(f"TransformerConvParams: holds TransformerConv(concat=True, "
                             f"root_weight=True) only, got concat={concat}, "
                             f"root_weight={root_weight}")
        self.in_channels, self.out_channels, self.heads = in_channels, out_channels, heads
        self.concat, self.beta, self.root_weight = True, False, True
        self.dropout, self.edge_dim = 0.0, None
        width = heads * out_channels
        self.lin_key = PygLinear(in_channels, width, bias=bias)
        self.lin_query = PygLinear(in_channels, width, bias=bias)
        self.lin_value = PygLinear(in_channels, width, bias=bias)
        self.register_parameter("lin_edge", None)
        self.lin_skip = PygLinear(in_channels, width, bias=bias)
        self.register_parameter("lin_beta", None)
        for lin in (self.lin_key, self.lin_query, self.lin_value, self.lin_skip):
            lin.reset_parameters()                     # PyG's reset_parameters draws them again

    def _build_twin(self) -> nn.Module:
        from torch_geometric.nn import TransformerConv
        return TransformerConv(self.in_channels, self.out_channels, heads=self.heads,
                               concat=True, root_weight=True,
                               bias=self.lin_key.bias is not None)
