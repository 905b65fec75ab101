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


def split_flat(flat: dict[str, Any], train_cls: type[StrictConfig], model_cls: type[StrictConfig],
               source: str = "overrides") -> tuple[dict[str, Any], dict[str, Any]]:
    """Route flat keys to the train or model config; unknown keys raise :class:`ConfigError`."""
    train_fields, model_fields = set(train_cls.model_fields), set(model_cls.model_fields)
    clash = train_fields & model_fields
    if clash:  # a programming error, caught by the registry tests
        raise RuntimeError(f"{model_cls.__name__} redefines training keys {sorted(clash)}")
    train, model = {}, {}
    for key, value in flat.items():
        section, _, name = key.rpartition(".")
        if section in ("", "train") and name in train_fields and section != "model":
            train[name] = value
        elif section in ("", "model") and name in model_fields:
            model[name] = value
        else:
            known = sorted(train_fields | model_fields)
            raise ConfigError(f"{source}: unknown key {key!r} for model config "
                              f"{model_cls.__name__}; known keys: {', '.join(known)}")
    return train, model


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
