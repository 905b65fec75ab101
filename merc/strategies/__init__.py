"""Training plug-ins (curricula, self-paced learning, gradient modulation) and their registry.

A strategy registers with a typed config class (defined in :mod:`merc.configs.strategies`, which
imports no torch); its keys share the flat namespace of ``merc train --set`` and the sweep specs
(``strategy=spcl spcl_epsilon=0.8``).
"""
from __future__ import annotations

import importlib
from typing import Optional

from merc.config import StrictConfig
from merc.configs import strategy_config_cls, strategy_keys
from merc.configs.strategies import NoConfig
from merc.strategies.base import Strategy


STRATEGIES: dict[str, tuple[type[Strategy], type[StrictConfig]]] = {"none": (Strategy, NoConfig)}
#: modules that register strategies
_MODULES = ["merc.strategies.spcl", "merc.strategies.bucket_cl", "merc.strategies.ada2i",
            "merc.strategies.rna", "merc.strategies.ogm_ge", "merc.strategies.opm",
            "merc.strategies.fagm"]


def register_strategy(name: str, config_cls: type[StrictConfig]):
    """Class decorator: a training strategy by name; its config class lives in
    :mod:`merc.configs.strategies` (listed in ``merc.configs.STRATEGY_CONFIGS``)."""
    def deco(cls):
        STRATEGIES[name] = (cls, config_cls)
        return cls
    return deco


def _load_all() -> None:
    for mod in _MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as err:
            if err.name != mod:
                raise


def build_strategy(name: str, config: Optional[StrictConfig] = None) -> Strategy:
    _load_all()
    cls, cfg_cls = STRATEGIES[name] if name in STRATEGIES else (None, None)
    if cls is None:
        raise KeyError(f"strategy: unknown strategy {name!r}; known: "
                       f"{', '.join(sorted(STRATEGIES))}")
    return cls() if cls is Strategy else cls(config or cfg_cls())


__all__ = ["Strategy", "STRATEGIES", "register_strategy", "build_strategy", "strategy_config_cls",
           "strategy_keys"]
