"""Typed configuration shared by every model and the training loop.

A run is described by two typed configs: :class:`merc.train.TrainConfig` (optimisation, data
transforms, seed) and the model's own config (a :class:`ModelConfig` subclass). On the command line
and in YAML specs both are addressed through one *flat* namespace (``lr``, ``window_past``,
``modalities``) so that a sweep varies them uniformly; ``train.lr`` / ``model.window_past`` are
accepted too. Field names never collide between the two (checked by :func:`split_flat`).
"""
from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError


class ConfigError(ValueError):
    """A configuration problem a person can act on: which source, which key, expected vs found."""


class StrictConfig(BaseModel):
    """Base for typed configs: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


class ModelConfig(StrictConfig):
    """Base of every model config. Subclasses give the paper's defaults per dataset family."""

    #: paper defaults per dataset family (flat keys; may include training keys such as ``lr``)
    PAPER_DEFAULTS: ClassVar[dict[str, dict[str, Any]]] = {}

    @classmethod
    def paper_defaults(cls, family: str) -> dict[str, Any]:
        """Flat overrides the paper uses for ``family`` (falls back to the first family listed)."""
        if family in cls.PAPER_DEFAULTS:
            return dict(cls.PAPER_DEFAULTS[family])
        if cls.PAPER_DEFAULTS:
            return dict(next(iter(cls.PAPER_DEFAULTS.values())))
        return {}


def parse_value(text: str) -> Any:
    """Parse a ``--set`` value: YAML scalars/lists (``1e-3``, ``true``, ``[1, 2]``), else the string."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def route_flat(flat: dict[str, Any], sections: dict[str, type[StrictConfig]],
               source: str = "overrides") -> dict[str, dict[str, Any]]:
    """Route flat (or ``section.key``) keys to typed config sections; unknown keys raise
    :class:`ConfigError` naming the source and the key."""
    owner: dict[str, str] = {}
    for sec, cls in sections.items():
        for name in cls.model_fields:
            if name in owner:  # a programming error, caught by the registry tests
                raise RuntimeError(f"{cls.__name__} redefines {owner[name]} key {name!r}")
            owner[name] = sec
    out: dict[str, dict[str, Any]] = {sec: {} for sec in sections}
    for key, value in flat.items():
        section, _, name = key.rpartition(".")
        sec = owner.get(name)
        if sec is None or section not in ("", sec):
            raise ConfigError(f"{source}: unknown key {key!r}; known keys: "
                              f"{', '.join(sorted(owner))}")
        out[sec][name] = value
    return out


def split_flat(flat: dict[str, Any], train_cls: type[StrictConfig], model_cls: type[StrictConfig],
               source: str = "overrides") -> tuple[dict[str, Any], dict[str, Any]]:
    """Route flat keys to the train or model config; unknown keys raise :class:`ConfigError`."""
    r = route_flat(flat, {"train": train_cls, "model": model_cls}, source)
    return r["train"], r["model"]


def build_config(cls: type[StrictConfig], values: dict[str, Any], source: str) -> Any:
    """Validate ``values`` into ``cls``; errors name the source and key path."""
    try:
        return cls(**values)
    except ValidationError as err:
        msgs = []
        for e in err.errors():
            loc = ".".join(str(p) for p in e["loc"]) or "<root>"
            found = e.get("input")
            msgs.append(f"{source}: key {loc!r}: {e['msg']} (found {found!r})")
        raise ConfigError("; ".join(msgs)) from None
