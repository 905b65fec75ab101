"""Model registry: ``build_model(name, config, meta)``; every model module registers itself.

Lazy: ``get_entry(name)`` imports only the module of ``name`` (a sweep's driver validating a
CORECT spec, or a trial worker building one, does not import the seven other models; a model
without PyG then never imports PyG). ``model_names()`` and an unknown name import them all."""
from __future__ import annotations

import importlib

from merc.models.base import REGISTRY, MercModel, ModelEntry, Output, register_model

#: model name -> the module that registers it (importing it fills REGISTRY[name])
MODULES = {"corect": "merc.models.corect", "dialoguegcn": "merc.models.backbones.dialoguegcn",
           "biddin": "merc.models.backbones.biddin", "mmgcn": "merc.models.backbones.mmgcn",
           "mmdfn": "merc.models.backbones.mmdfn", "multidag": "merc.models.multidag",
           "ada2i": "merc.models.ada2i", "micga": "merc.models.micga"}
#: what building a model imports beyond its module: PyG, imported when the model is built so that
#: validating a config (a sweep's driver) does not pay for it; a sweep's Ray workers preload it.
#: (CORECT builds PyG's modules only for ``kernels="modules"``; its default fused path holds their
#: parameters in :mod:`merc.models.pyg_layout`, without PyG.)
BUILD_IMPORTS = {"micga": ("torch_geometric.nn",)}


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
