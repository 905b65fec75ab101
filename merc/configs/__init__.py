"""Every typed config by name, without torch: models', strategies' and the training loop's.

The networks and strategies (:mod:`merc.models`, :mod:`merc.strategies`) import torch; their
configs live here so that what only validates - a sweep's driver checking a spec and every
trial's resolved config before Ray starts - does not pay ~2 CPU-s for importing torch. Each
model and strategy module imports its config from here (the registries pair them;
``tests/test_sweep_throughput_setup.py`` checks that the names and classes agree).
"""
from __future__ import annotations

import importlib

from merc.config import ModelConfig, StrictConfig

#: model registry name -> "module:class" of its config
MODEL_CONFIGS = {
    "corect": "merc.configs.corect:CorectConfig",
    "dialoguegcn": "merc.configs.backbones:DialogueGCNConfig",
    "biddin": "merc.configs.backbones:BiDDINConfig",
    "mmgcn": "merc.configs.backbones:MMGCNConfig",
    "mmdfn": "merc.configs.backbones:MMDFNConfig",
    "multidag": "merc.configs.multidag:MultiDAGConfig",
    "ada2i": "merc.configs.ada2i:Ada2IConfig",
    "micga": "merc.configs.micga:MicgaConfig",
}
#: model registry name -> the module that defines and registers the network (merc.models)
MODEL_MODULES = {"corect": "merc.models.corect", "dialoguegcn": "merc.models.backbones.dialoguegcn",
                 "biddin": "merc.models.backbones.biddin", "mmgcn": "merc.models.backbones.mmgcn",
                 "mmdfn": "merc.models.backbones.mmdfn", "multidag": "merc.models.multidag",
                 "ada2i": "merc.models.ada2i", "micga": "merc.models.micga"}
#: what building a model imports beyond its module: PyG, imported when the model is built so that
#: validating a config (a sweep's driver) does not pay for it; a sweep's Ray workers preload it.
#: (CORECT builds PyG's modules only for ``kernels="modules"``; its default fused path holds their
#: parameters in :mod:`merc.models.pyg_layout`, without PyG.)
BUILD_IMPORTS = {"micga": ("torch_geometric.nn",)}
#: strategy name -> "module:class" of its config
STRATEGY_CONFIGS = {
    "none": "merc.configs.strategies:NoConfig",
    "spcl": "merc.configs.strategies:SPCLConfig",
    "bucket_cl": "merc.configs.strategies:BucketCLConfig",
    "ada2i": "merc.configs.strategies:Ada2IStrategyConfig",
    "rna": "merc.configs.strategies:RNAConfig",
    "ogm_ge": "merc.configs.strategies:OGMGEConfig",
    "opm": "merc.configs.strategies:OPMConfig",
    "fagm": "merc.configs.strategies:FAGMConfig",
}


def _load(ref: str) -> type:
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


def model_config_cls(name: str) -> type[ModelConfig]:
    """The config class of model ``name`` (KeyError naming the known models)."""
    if name not in MODEL_CONFIGS:
        raise KeyError(f"unknown model {name!r}; registered: {', '.join(sorted(MODEL_CONFIGS))}")
    return _load(MODEL_CONFIGS[name])


def strategy_config_cls(name: str) -> type[StrictConfig]:
    """The config class of strategy ``name`` (KeyError naming the known strategies)."""
    if name not in STRATEGY_CONFIGS:
        raise KeyError(f"strategy: unknown strategy {name!r}; known: "
                       f"{', '.join(sorted(STRATEGY_CONFIGS))}")
    return _load(STRATEGY_CONFIGS[name])


def strategy_keys(exclude: str = "none") -> set[str]:
    """Every key of every strategy except ``exclude``'s (to drop inactive paper defaults)."""
    return {k for n in STRATEGY_CONFIGS if n != exclude
            for k in strategy_config_cls(n).model_fields}


__all__ = ["BUILD_IMPORTS", "MODEL_CONFIGS", "MODEL_MODULES", "STRATEGY_CONFIGS",
           "model_config_cls", "strategy_config_cls", "strategy_keys"]
