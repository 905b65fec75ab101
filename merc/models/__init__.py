"""Model registry: ``build_model(name, config, meta)``; every model module registers itself."""
from __future__ import annotations

import importlib

from merc.models.base import REGISTRY, MercModel, ModelEntry, Output, register_model

#: modules that register models; importing them fills REGISTRY
_MODULES = ["merc.models.corect", "merc.models.backbones.dialoguegcn",
            "merc.models.backbones.biddin", "merc.models.backbones.mmgcn",
            "merc.models.backbones.mmdfn", "merc.models.multidag",
            "merc.models.ada2i", "merc.models.micga"]


def _load_all() -> None:
    for mod in _MODULES:
        importlib.import_module(mod)


def get_entry(name: str) -> ModelEntry:
    _load_all()
    if name not in REGISTRY:
        raise KeyError(f"unknown model {name!r}; registered: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


def model_names() -> list[str]:
    _load_all()
    return sorted(REGISTRY)


def build_model(name: str, config, meta) -> MercModel:
    return get_entry(name).builder(config, meta)


__all__ = ["build_model", "get_entry", "model_names", "register_model", "Output", "MercModel"]
