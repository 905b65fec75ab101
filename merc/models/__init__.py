"""Model registry: ``build_model(name, config, meta)``; every model module registers itself.

Lazy: ``get_entry(name)`` imports only the module of ``name`` (a trial worker building a CORECT
model does not import the seven other models; a model without PyG then never imports PyG; a
sweep's driver imports none: it validates with :mod:`merc.configs`). ``model_names()`` and an
unknown name import them all."""
from __future__ import annotations

import importlib

# model name -> the module that registers it, and what building a model imports beyond its
# module: both in merc.configs, which a sweep's driver reads without torch (the workers' preload)
from merc.configs import BUILD_IMPORTS, MODEL_MODULES as MODULES  # noqa: F401
from merc.models.base import REGISTRY, MercModel, ModelEntry, Output, register_model


def _load_all() -> None:
    for mod in MODULES.values():
        importlib.import_module(mod)


def get_entry(name: str) -> ModelEntry:
    if name not in REGISTRY:
        if name in MODULES:
            importlib.import_module(MODULES[name])
        if name not in REGISTRY:
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
