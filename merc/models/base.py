"""What every model returns, and the registry that builds models by name."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import nn

from merc.config import ModelConfig
from merc.data.dataset import Batch, DatasetMeta


@dataclass
class Output:
    """A model's forward result, padded like the batch.

    ``logits``: joint class logits [B, N, C]. ``modality_logits``: per-modality logits [B, N, C]
    for late-fusion models (what SPCL and gradient-modulation strategies read). ``aux_loss``: a
    scalar added to the classification loss (reconstruction, sparsity...). ``extras``: anything a
    strategy may read by name (e.g. per-modality features).
    """

    logits: torch.Tensor
    modality_logits: Optional[dict[str, torch.Tensor]] = None
    aux_loss: Optional[torch.Tensor] = None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)


class MercModel(nn.Module):
    """Base class: built from (config, dataset meta); ``forward(batch) -> Output``."""

    def __init__(self, config: ModelConfig, meta: DatasetMeta):
        super().__init__()
        self.config = config
        self.meta = meta

    def unused_parameters(self) -> set[str]:
        """Names of parameters the released network creates but never uses: they count in the
        parameter total (pinned against the release) and never get a gradient."""
        return set()

    def forward(self, batch: Batch) -> Output:  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass(frozen=True)
class ModelEntry:
    name: str
    config_cls: type[ModelConfig]
    builder: Callable[[ModelConfig, DatasetMeta], MercModel]
    paper: str


REGISTRY: dict[str, ModelEntry] = {}


def register_model(name: str, config_cls: type[ModelConfig], paper: str = ""):
    """Class decorator: make a model buildable by name (``merc train NAME``, sweeps). The config
    class lives in :mod:`merc.configs` (torch-free, listed in ``MODEL_CONFIGS``) and the module in
    ``merc.configs.MODEL_MODULES``: a sweep's driver validates and plans with those alone."""

    def deco(cls):
        REGISTRY[name] = ModelEntry(name, config_cls, cls, paper)
        return cls

    return deco
