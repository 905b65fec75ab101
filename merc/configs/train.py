"""The training loop's typed config and the resolution of a run's three configs (train, model,
strategy) from paper defaults and flat overrides. Torch-free: a sweep's driver validates every
trial's config with it before Ray starts (the loop itself is :mod:`merc.train`)."""
from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import Field, SerializeAsAny, field_validator

from merc.config import ConfigError, ModelConfig, StrictConfig, build_config, route_flat
from merc.configs import model_config_cls, strategy_config_cls, strategy_keys


class TrainConfig(StrictConfig):
    """Optimisation, data transforms and reproducibility keys shared by every model."""

    lr: float = 3e-4
    weight_decay: float = 0.0
    optimizer: Literal["adam", "adamw"] = "adam"
    epochs: int = Field(50, ge=1)
    batch_size: int = Field(10, ge=1)
    clip_grad_norm: Optional[float] = None
    scheduler: Literal["none", "plateau", "cosine"] = "none"
    early_stopping: int = 0          # patience in epochs on val w-F1; 0 = off
    class_weights: bool = False      # inverse train-split frequency in the loss
    seed: int = 0
    threads: int = 0                 # torch intra-op threads; 0 = leave as is
    device: str = "cpu"
    modalities: str = "ATV"          # any of A, T, V, AT, AV, TV, ATV
    missing_rate: float = 0.0        # rho of the missing-modality protocol
    missing_redraw: bool = False     # redraw the train mask per batch (GCNet) instead of fixed
    strategy: str = "none"           # a registered training strategy (merc.strategies)
    strategy_config: Optional[SerializeAsAny[StrictConfig]] = None  # its typed keys, routed flat

    @field_validator("modalities")
    @classmethod
    def _modalities(cls, v: str) -> str:
        """A subset of A, T, V (``XYZ`` is refused here, not when the data is opened)."""
        from merc.data.format import SUBSETS
        key = "".join(sorted(set(v.upper()), key="ATV".index)) if set(v.upper()) <= set("ATV") \
            else None
        if not v or key not in SUBSETS or len(key) != len(v):
            raise ValueError(f"expected one of {', '.join(SUBSETS)} (letters of audio, text, "
                             f"visual)")
        return v


def resolve_config(model: str, flat: dict[str, Any], family: str = "iemocap6",
                   source: str = "overrides") -> tuple[TrainConfig, ModelConfig]:
    """Paper defaults of ``model`` for the dataset family, then ``flat`` overrides, validated."""
    model_cls = model_config_cls(model)
    base = model_cls.paper_defaults(family)
    strategy = str(flat.get("strategy", flat.get("train.strategy", base.get("strategy", "none"))))
    try:
        scls = strategy_config_cls(strategy)
    except KeyError as err:
        raise ConfigError(f"{source}: {err.args[0]}") from None
    sections = {"train": TrainConfig, "model": model_cls, "strategy": scls}
    # a paper default of another strategy (e.g. Ada2I's alpha under --set strategy=none) is
    # inactive for this run and dropped; an override that sets one is still an error
    inactive = strategy_keys(exclude=strategy) - set(scls.model_fields)
    base = {k: v for k, v in base.items() if k.rpartition(".")[2] not in inactive}
    r0 = route_flat(base, sections, f"{model} paper defaults")
    r1 = route_flat(flat, sections, source)
    train = build_config(TrainConfig, r0["train"] | r1["train"], source)
    train.strategy_config = build_config(scls, r0["strategy"] | r1["strategy"], source)
    return train, build_config(model_cls, r0["model"] | r1["model"], source)
