"""Search-space files (``search_spaces/<model>.yaml``): grammar, validation, and best.yaml loading.

Nothing here imports ray or mlflow (optuna only lazily, to check a pruner's / sampler's argument
names against the installed version), so ``merc sweep validate`` and ``merc train --config
best.yaml`` work without starting anything. Every problem is a :class:`SpecError` naming the file
and the key path (``search_spaces/corect.yaml: studies.window.axes.window_pastt: ...``); the CLI
turns it into one line on stderr and exit code 2.

Grammar (all keys optional except ``model``)::

    model: corect                    # registry name (the default model of every trial)
    name: corect                     # sweep family: experiment <name>-<study>, default the model
    models: [corect]                 # models a study may select with the key `model` (axes,
                                     # points, a study's fixed); default [model]
    dataset: synthetic:iemocap6      # default dataset spec (a directory or synthetic:<preset>)
    metric: val_wf1                  # selection metric (per epoch); the trial's value is its best epoch
    mode: max
    defaults:                        # the paper's defaults per dataset family (flat keys)
      iemocap6: {lr: 3.0e-4, window_past: 11, window_future: 9}
    model_defaults:                  # per model and family, over `defaults` (multi-model specs)
      mmdfn: {iemocap6: {spcl_epsilon: 0.4}}
    fixed: {epochs: 50}              # applied to every trial, over the defaults
    quick: {dataset: synthetic:tiny, epochs: 2, num_samples: 8, fixed: {hidden_size: 32}}
    search:
      num_samples: 64
      seed: 0                        # the training seed of search trials
      sampler: {type: tpe, seed: 0}  # tpe | random (+ their Optuna arguments)
      pruner: {type: median, n_warmup_steps: 2}   # none | median | percentile |
                                     # successive_halving | hyperband | wilcoxon | asha
      start_from_defaults: true      # the paper default is trial 0
      space:
        lr: {type: loguniform, low: 1.0e-5, high: 1.0e-3}
        dropout: {type: uniform, low: 0.0, high: 0.7}
        window_past: {type: int, low: 1, high: 15}
        gt_heads: {type: categorical, values: [1, 2, 4, 7]}
        batch_size: 10               # a bare value (or {type: fixed, value: 10}) is fixed
      confirm: {top_k: 3, seeds: [100, 101, 102]}
    studies:
      window:                        # a grid (axes: cartesian product, or points: named configs)
        title: "Fig. 4: past x future window"
        axes: {window_past: [1, 5, 11], window_future: [1, 9]}
        seeds: [0, 1, 2]             # paired: every grid point runs every seed
        reference: {window_past: 11, window_future: 9}   # the paper's configuration
        paper: {iemocap6: {"window_past=11,window_future=9": 70.02}}   # printed values, by label
        quick: {axes: {...}, seeds: [0]}
        curves: [val_wf1, spcl_ratio_]   # per-epoch metrics plotted per point (mean over seeds,
                                     # x = epoch); an entry ending in '_' or '*' is a prefix
    curves: [val_wf1]                # the default curves of every study

Keys: every key is a TrainConfig key, a key of one of the spec's models, or a key of a registered
training strategy (``strategy: spcl`` selects :class:`SPCLConfig`, whose keys are ``spcl_*``); an
unknown key is an error. A trial's config is built per point: defaults + fixed + the study's fixed
+ the point's values; keys another model or another strategy owns (inherited from the defaults,
e.g. ``spcl_epsilon`` on a ``strategy: none`` baseline point) are inactive for that trial and
dropped, while a point that sets such a key itself is an error. Every point of every study is
resolved this way at validation time, for every family of ``defaults``.

``reference`` may name a subset of the axes (``reference: {strategy: none}``): each point is then
compared with the point that shares its other axis values (one reference per group, e.g. per
backbone and modality subset). Named ``points`` that all set the same keys group the same way
(a grid with holes, e.g. Mi-CGA's modality subsets x the missing rates each subset allows).
"""
from __future__ import annotations

import inspect
import itertools
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from merc.config import ConfigError

EXIT_SPEC_ERROR = 2

TOP_KEYS = {"model", "name", "models", "dataset", "description", "metric", "mode", "defaults",
            "model_defaults", "fixed", "quick", "search", "studies", "curves"}
SEARCH_KEYS = {"num_samples", "seed", "sampler", "pruner", "space", "start_from_defaults",
               "confirm", "quick"}
STUDY_KEYS = {"title", "figure", "description", "axes", "points", "seeds", "fixed", "reference",
              "paper", "paper_note", "dataset", "quick", "curves"}
QUICK_KEYS = {"dataset", "epochs", "num_samples", "fixed", "seeds", "axes", "points", "space",
              "pruner"}
MODEL_KEY = "model"   # selects a trial's model (studies only)
DIST_TYPES = {"uniform", "loguniform", "int", "categorical", "fixed"}
SAMPLERS = {"tpe": "TPESampler", "random": "RandomSampler"}
PRUNERS = {"none": "NopPruner", "median": "MedianPruner", "percentile": "PercentilePruner",
           "successive_halving": "SuccessiveHalvingPruner", "hyperband": "HyperbandPruner",
           "wilcoxon": "WilcoxonPruner", "asha": None}
ASHA_ARGS = {"grace_period", "reduction_factor", "brackets"}
METRICS_PREFIXES = ("val_", "test_")


class SpecError(ConfigError):
    """A malformed spec: one message naming the file and key path. Exit code 2."""

    exit_code = EXIT_SPEC_ERROR


# --------------------------------------------------------------------------------------------
# typed spec objects


@dataclass
class Dist:
    """One search dimension: uniform | loguniform | int | categorical | fixed."""

    type: str
    low: Any = None
    high: Any = None
    step: Any = None
    log: bool = False
    values: list = field(default_factory=list)
    value: Any = None

    def to_dict(self) -> dict:
        if self.type == "fixed":
            return {"type": "fixed", "value": self.value}
        if self.type == "categorical":
            return {"type": "categorical", "values": list(self.values)}
        d = {"type": self.type, "low": self.low, "high": self.high}
        if self.step is not None:
            d["step"] = self.step
        if self.log and self.type == "int":
            d["log"] = True
        return d


@dataclass
class SearchSpec:
    num_samples: int = 32
    seed: int = 0
    sampler: dict = field(default_factory=lambda: {"type": "tpe", "seed": 0})
    pruner: dict = field(default_factory=lambda: {"type": "median"})
    start_from_defaults: bool = True
    space: dict[str, Dist] = field(default_factory=dict)
    confirm: dict = field(default_factory=dict)


@dataclass
class GridPoint:
    label: str
    values: dict[str, Any]


@dataclass
class StudySpec:
    name: str
    title: str
    points: list[GridPoint]
    axes: dict[str, list]           # empty for named points
    seeds: list[int]
    fixed: dict[str, Any]
    reference: Optional[str]        # label of the reference point
    paper: dict[str, dict[str, float]]   # family -> label -> value
    paper_note: str = ""
    dataset: Optional[str] = None
    ref_of: dict[str, str] = field(default_factory=dict)   # point label -> its reference's label
    curves: list[str] = field(default_factory=list)        # per-epoch metrics (or prefixes) to plot

    def reference_of(self, label: str) -> Optional[str]:
        """The reference point a point is compared with (one per group for a partial reference)."""
        return self.ref_of.get(label, self.reference)

    @property
    def reference_labels(self) -> set[str]:
        return set(self.ref_of.values()) if self.ref_of else ({self.reference} - {None})

    @property
    def dims(self) -> int:
        return len(self.axes) if self.axes else 1

    @property
    def num_trials(self) -> int:
        return len(self.points) * len(self.seeds)


@dataclass
class SweepSpec:
    path: str
    model: str
    raw: dict
    name: str = ""                  # sweep family (experiment prefix); default the model
    models: list[str] = field(default_factory=list)   # models a study may select
    curves: list[str] = field(default_factory=list)   # default curves of every study
    dataset: Optional[str] = None
    metric: str = "val_wf1"
    mode: str = "max"
    defaults: dict[str, dict] = field(default_factory=dict)
    model_defaults: dict[str, dict[str, dict]] = field(default_factory=dict)  # model -> family ->
    fixed: dict[str, Any] = field(default_factory=dict)
    quick: dict[str, Any] = field(default_factory=dict)
    search: Optional[SearchSpec] = None
    studies: dict[str, StudySpec] = field(default_factory=dict)
    known: set = field(default_factory=set)   # every key of the spec's models and strategies

    def base_flat(self, family: str, quick: bool = False,
                  model: Optional[str] = None) -> dict[str, Any]:
        """Flat overrides every trial (of ``model``, default the spec's) starts from: spec
        defaults[family] + model_defaults[model][family] + fixed (+ quick)."""
        d = dict(self.defaults.get(family, {}))
        d.update(self.model_defaults.get(model or self.model, {}).get(family, {}))
        d.update(self.fixed)
        if quick:
            d.update(self.quick.get("fixed", {}))
            if "epochs" in self.quick:
                d["epochs"] = self.quick["epochs"]
        return d

    def trial_base(self, family: str, quick: bool, upper: dict[str, Any],
                   values: Optional[dict[str, Any]] = None) -> dict[str, Any]:
        """The inherited flat keys of a trial whose point sets ``values``: base_flat for the
        trial's model (``values``' or ``upper``'s key ``model``, else the spec's) + ``upper`` (a
        study's fixed, command-line overrides)."""
        model = (values or {}).get(MODEL_KEY, upper.get(MODEL_KEY, self.model))
        return {**self.base_flat(family, quick, str(model)), **upper}


# --------------------------------------------------------------------------------------------
# helpers


def point_label(values: dict[str, Any], axes: dict[str, list]) -> str:
    """Canonical label of a cartesian grid point: ``v`` for 1-D, ``k1=v1,k2=v2`` otherwise."""
    if len(axes) == 1:
        return _fmt(next(iter(values.values())))
    return ",".join(f"{k}={_fmt(values[k])}" for k in axes)


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    return str(v)


def _type_name(v: Any) -> str:
    return type(v).__name__


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _strategy_fields() -> dict[str, tuple[str, Any]]:
    """Every registered training strategy's keys: name -> (strategy, pydantic field)."""
    from merc.configs import STRATEGY_CONFIGS, strategy_config_cls
    out: dict[str, tuple[str, Any]] = {}
    for sname in STRATEGY_CONFIGS:
        for f, info in strategy_config_cls(sname).model_fields.items():
            out.setdefault(f, (sname, info))
    return out


def _key_name(key: str) -> str:
    return key.rpartition(".")[2]


def trial_strategy(model: str, flat: dict[str, Any], family: str = "iemocap6") -> str:
    """The strategy a trial of ``model`` runs with ``flat`` (the rule of resolve_config: the flat
    key ``strategy``, else the model's paper default, else none)."""
    if "strategy" in flat or "train.strategy" in flat:
        return str(flat.get("strategy", flat.get("train.strategy")))
    from merc.configs import model_config_cls
    try:
        return str(model_config_cls(model).paper_defaults(family).get("strategy", "none"))
    except Exception:
        return "none"


def active_keys(model: str, flat: dict[str, Any]) -> set[str]:
    """The keys a trial of ``model`` uses with ``flat``: TrainConfig + the model's config + the
    selected strategy's config."""
    from merc.configs import model_config_cls, strategy_config_cls
    from merc.configs.train import TrainConfig
    keys = set(TrainConfig.model_fields) | set(model_config_cls(model).model_fields)
    try:
        keys |= set(strategy_config_cls(trial_strategy(model, flat)).model_fields)
    except KeyError:      # an unknown strategy: resolve_config reports it
        pass
    return keys


def split_point(default_model: str, base: dict[str, Any], values: dict[str, Any],
                known: set[str], source: str) -> tuple[str, dict[str, Any]]:
    """``(model, flat)`` of one trial: ``base`` (inherited: defaults, fixed, command line) updated
    with ``values`` (the point's own keys); ``model`` comes from the key ``model`` if set.

    Keys in ``known`` (the spec's keys: other models', other strategies') that this trial's model
    and strategy do not use are dropped when inherited; a point setting one itself is an error
    (:class:`ConfigError`). Keys outside ``known`` stay, for resolve_config to report.
    """
    merged = {**base, **values}
    model = str(merged.pop(MODEL_KEY, default_model))
    active = active_keys(model, merged)
    out = {}
    for k, v in merged.items():
        name = _key_name(k)
        if name in active or name not in known:
            out[k] = v
        elif k in values:
            raise ConfigError(f"{source}: key {k!r} is not used by model {model!r} with strategy "
                              f"{trial_strategy(model, merged)!r}")
    return model, out


class _Ctx:
    """Validation context: the file, the models' and strategies' config classes."""

    def __init__(self, path: str, model: str, models: Optional[list] = None):
        self.path = path
        self.model = model
        from merc.configs import model_config_cls
        from merc.configs.train import TrainConfig
        self.models = [model] + [m for m in (models or []) if m != model]
        self.entries = {}
        for i, m in enumerate(self.models):
            try:
                self.entries[m] = model_config_cls(m)
            except KeyError as err:
                raise SpecError(f"{path}: {'model' if i == 0 else 'models'}: {err.args[0]}") \
                    from None
        self.entry = self.entries[model]
        self.train_cls = TrainConfig
        self.model_cls = self.entry
        self.strategy_of = _strategy_fields()
        self.model_of: dict[str, str] = {}
        for m in self.models:
            for f in self.entries[m].model_fields:
                self.model_of.setdefault(f, m)
        self.fields = {f: info for f, (_, info) in self.strategy_of.items()}
        for m in reversed(self.models):
            self.fields.update(self.entries[m].model_fields)
        self.fields.update(TrainConfig.model_fields)
        self.known = set(self.fields)

    def err(self, key_path: str, msg: str) -> SpecError:
        return SpecError(f"{self.path}: {key_path}: {msg}")

    def _describe(self) -> str:
        models = " + ".join(self.entries[m].__name__ for m in self.models)
        strategies = sorted({self.strategy_of[f][0] for f in self.strategy_of})
        return (f"model {self.model!r}" if len(self.models) == 1 else
                f"models {', '.join(self.models)}") + \
            f" (TrainConfig + {models}" + \
            (f" + strategy keys of {', '.join(strategies)})" if strategies else ")")

    def key(self, key_path: str, key: str, allow_model: bool = False) -> str:
        """The config field a flat key names (``train.lr`` / ``model.x`` / ``strategy.x``
        accepted); ``model`` (the trial's model) only where ``allow_model``."""
        if not isinstance(key, str):
            raise self.err(key_path, f"keys must be strings, found {key!r}")
        if key == MODEL_KEY:
            if allow_model:
                return key
            raise self.err(key_path, "the key 'model' selects a trial's model in a study's "
                                     "axes, points or fixed only (the spec's default model is "
                                     "the top-level `model:`)")
        section, _, name = key.rpartition(".")
        ok = ((section in ("", "train") and name in self.train_cls.model_fields) or
              (section in ("", "model") and name in self.model_of) or
              (section in ("", "strategy") and name in self.strategy_of))
        if not ok:
            close = sorted(self.fields)
            raise self.err(key_path, f"unknown key {key!r} for {self._describe()}; known keys: "
                                     f"{', '.join(close)}")
        return name

    def is_int_field(self, name: str) -> bool:
        if name not in self.fields:
            return False
        ann = self.fields[name].annotation
        args = [a for a in typing.get_args(ann) if a is not type(None)] or [ann]
        return all(a is int for a in args)

    def check_value(self, key_path: str, key: str, value: Any, family: str = "",
                    model: Optional[str] = None) -> None:
        """Validate ``{key: value}`` against the typed configs (pydantic), naming the key path:
        a model key against a model that has it, a strategy key with its strategy selected."""
        from merc.configs.train import resolve_config
        if key == MODEL_KEY:
            if value not in self.models:
                raise self.err(key_path, f"invalid value {value!r}: not one of this spec's "
                                         f"models ({', '.join(self.models)}); list it under "
                                         f"`models:`")
            return
        name = _key_name(key)
        m = model or self.model
        flat = {key: value}
        if name not in self.train_cls.model_fields:
            if name not in self.entries[m].model_fields:
                if name in self.model_of:
                    m = self.model_of[name]
                elif name in self.strategy_of:
                    flat["strategy"] = self.strategy_of[name][0]
        try:
            resolve_config(m, flat, family or _first_family(self.entries[m]),
                           source="spec")
        except ConfigError as err:
            msg = str(err).split("spec: ", 1)[-1]
            raise self.err(key_path, f"invalid value {value!r} ({_type_name(value)}) for "
                                     f"{key!r}: {msg}") from None

    def check_flat(self, key_path: str, flat: Any, family: str = "",
                   allow_model: bool = False) -> dict:
        if flat is None:
            return {}
        if not isinstance(flat, dict):
            raise self.err(key_path, f"expected a mapping of config keys, found "
                                     f"{_type_name(flat)} {flat!r}")
        for k, v in flat.items():
            name = self.key(f"{key_path}.{k}", k, allow_model)
            self.check_value(f"{key_path}.{k}", name, v, family)
        return dict(flat)

    def check_point(self, key_path: str, base: dict, values: dict, family: str) -> None:
        """Resolve one trial's full config (per point, per family) as the runner will."""
        from merc.configs.train import resolve_config
        try:
            model, flat = split_point(self.model, base, values, self.known, "spec")
            resolve_config(model, flat, family, source="spec")
        except ConfigError as err:
            msg = "; ".join(part.split("spec: ", 1)[-1] for part in str(err).split("; "))
            raise self.err(key_path, f"({family}) {msg}") from None


def _first_family(model_cls) -> str:
    return next(iter(model_cls.PAPER_DEFAULTS), "iemocap6")


def _mapping(ctx: _Ctx, key_path: str, value: Any, allowed: Optional[set] = None) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ctx.err(key_path, f"expected a mapping, found {_type_name(value)} {value!r}")
    if allowed is not None:
        for k in value:
            if k not in allowed:
                raise ctx.err(f"{key_path}.{k}" if key_path else str(k),
                              f"unknown key {k!r}; expected one of {', '.join(sorted(allowed))}")
    return value


def _check_optuna_args(ctx: _Ctx, key_path: str, cls_name: str, args: dict) -> None:
    import optuna
    cls = getattr(optuna.pruners if "Pruner" in cls_name else optuna.samplers, cls_name)
    params = inspect.signature(cls.__init__).parameters
    names = {n for n in params if n != "self"}
    for k in args:
        if k not in names:
            raise ctx.err(f"{key_path}.{k}", f"unknown argument {k!r} of optuna {cls_name}; "
                                            f"expected one of {', '.join(sorted(names))}")
    required = {n for n, p in params.items() if n != "self" and p.default is inspect._empty
                and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    missing = required - set(args)
    if missing:
        raise ctx.err(key_path, f"optuna {cls_name} needs {', '.join(sorted(missing))}")
    try:
        cls(**args)
    except Exception as err:  # optuna's own range checks (e.g. percentile in [0, 100])
        raise ctx.err(key_path, f"optuna {cls_name}({args}) rejected: {err}") from None


def parse_dist(ctx: _Ctx, key_path: str, name: str, raw: Any) -> Dist:
    """One search dimension; checks type names, bounds and value types against the config."""
    if not isinstance(raw, dict):  # a bare value is fixed
        ctx.check_value(key_path, name, raw)
        return Dist("fixed", value=raw)
    if "type" not in raw:
        raise ctx.err(key_path, f"a search dimension needs 'type' (one of "
                                f"{', '.join(sorted(DIST_TYPES))}); found {raw!r}")
    t = raw["type"]
    if t not in DIST_TYPES:
        raise ctx.err(f"{key_path}.type", f"unknown type {t!r}; expected one of "
                                          f"{', '.join(sorted(DIST_TYPES))}")
    allowed = {"uniform": {"low", "high", "step"}, "loguniform": {"low", "high"},
               "int": {"low", "high", "step", "log"}, "categorical": {"values"},
               "fixed": {"value"}}[t] | {"type"}
    for k in raw:
        if k not in allowed:
            raise ctx.err(f"{key_path}.{k}", f"unknown key {k!r} for type {t!r}; expected "
                                             f"{', '.join(sorted(allowed - {'type'}))}")
    if t == "fixed":
        if "value" not in raw:
            raise ctx.err(key_path, "type 'fixed' needs 'value'")
        ctx.check_value(f"{key_path}.value", name, raw["value"])
        return Dist("fixed", value=raw["value"])
    if t == "categorical":
        vals = raw.get("values")
        if not isinstance(vals, list) or not vals:
            raise ctx.err(f"{key_path}.values", f"expected a non-empty list, found {vals!r}")
        for i, v in enumerate(vals):
            if v is not None and not isinstance(v, (str, int, float, bool)):
                raise ctx.err(f"{key_path}.values[{i}]", f"categorical values must be scalars, "
                                                         f"found {_type_name(v)} {v!r}")
            ctx.check_value(f"{key_path}.values[{i}]", name, v)
        return Dist("categorical", values=list(vals))
    for b in ("low", "high"):
        if b not in raw:
            raise ctx.err(key_path, f"type {t!r} needs 'low' and 'high'")
        if not _is_num(raw[b]):
            raise ctx.err(f"{key_path}.{b}", f"expected a number, found {_type_name(raw[b])} "
                                             f"{raw[b]!r}")
    low, high = raw["low"], raw["high"]
    if low > high:
        raise ctx.err(key_path, f"low ({low}) > high ({high})")
    if t == "int":
        for b in ("low", "high"):
            if not isinstance(raw[b], int):
                raise ctx.err(f"{key_path}.{b}", f"type 'int' needs integer bounds, found "
                                                 f"{raw[b]!r}")
        step = raw.get("step", 1)
        if not isinstance(step, int) or step < 1:
            raise ctx.err(f"{key_path}.step", f"expected a positive integer, found {step!r}")
        log = raw.get("log", False)
        if not isinstance(log, bool):
            raise ctx.err(f"{key_path}.log", f"expected true/false, found {log!r}")
        if log and low < 1:
            raise ctx.err(key_path, f"log-scaled int needs low >= 1, found {low}")
    else:
        if ctx.is_int_field(name):
            raise ctx.err(f"{key_path}.type", f"{name!r} is an integer key; use type 'int' "
                                              f"(or categorical), not {t!r}")
        if t == "loguniform" and low <= 0:
            raise ctx.err(f"{key_path}.low", f"loguniform needs low > 0, found {low}")
        step = raw.get("step")
        if step is not None and (not _is_num(step) or step <= 0):
            raise ctx.err(f"{key_path}.step", f"expected a positive number, found {step!r}")
    ctx.check_value(f"{key_path}.low", name, low)
    ctx.check_value(f"{key_path}.high", name, high)
    return Dist(t, low=low, high=high, step=raw.get("step") if t != "int" else raw.get("step", 1),
                log=bool(raw.get("log", False)))


def _parse_search(ctx: _Ctx, raw: Any) -> SearchSpec:
    raw = _mapping(ctx, "search", raw, SEARCH_KEYS)
    s = SearchSpec()
    if "num_samples" in raw:
        if not isinstance(raw["num_samples"], int) or raw["num_samples"] < 1:
            raise ctx.err("search.num_samples", f"expected a positive integer, found "
                                                f"{raw['num_samples']!r}")
        s.num_samples = raw["num_samples"]
    if "seed" in raw:
        if not isinstance(raw["seed"], int):
            raise ctx.err("search.seed", f"expected an integer, found {raw['seed']!r}")
        s.seed = raw["seed"]
    if "start_from_defaults" in raw:
        if not isinstance(raw["start_from_defaults"], bool):
            raise ctx.err("search.start_from_defaults", "expected true/false")
        s.start_from_defaults = raw["start_from_defaults"]
    if "sampler" in raw:
        s.sampler = _parse_sampler(ctx, "search.sampler", raw["sampler"])
    if "pruner" in raw:
        s.pruner = _parse_pruner(ctx, "search.pruner", raw["pruner"])
    space = _mapping(ctx, "search.space", raw.get("space"))
    if not space:
        raise ctx.err("search.space", "a search needs a non-empty space")
    for k, v in space.items():
        name = ctx.key(f"search.space.{k}", k)
        s.space[name] = parse_dist(ctx, f"search.space.{k}", name, v)
    conf = _mapping(ctx, "search.confirm", raw.get("confirm"), {"top_k", "seeds"})
    if conf:
        if not isinstance(conf.get("top_k", 1), int) or conf.get("top_k", 1) < 1:
            raise ctx.err("search.confirm.top_k", f"expected a positive integer, found "
                                                  f"{conf.get('top_k')!r}")
        seeds = conf.get("seeds", [])
        if not isinstance(seeds, list) or not all(isinstance(x, int) for x in seeds):
            raise ctx.err("search.confirm.seeds", f"expected a list of integers, found {seeds!r}")
    s.confirm = dict(conf)
    if "quick" in raw:
        _mapping(ctx, "search.quick", raw["quick"], QUICK_KEYS)
    return s


def _typed_entry(ctx: _Ctx, key_path: str, raw: Any, table: dict, default: str,
                 kind: str) -> tuple[str, dict]:
    """``{type: NAME, **args}`` -> (NAME, args); NAME must be a key of ``table``."""
    raw = _mapping(ctx, key_path, raw)
    t = raw.get("type", default)
    if t not in table:
        raise ctx.err(f"{key_path}.type", f"unknown {kind} {t!r}; expected one of "
                                          f"{', '.join(sorted(table))}")
    return t, {k: v for k, v in raw.items() if k != "type"}


def _parse_sampler(ctx: _Ctx, key_path: str, raw: Any) -> dict:
    t, args = _typed_entry(ctx, key_path, raw, SAMPLERS, "tpe", "sampler")
    _check_optuna_args(ctx, key_path, SAMPLERS[t], args)
    return {"type": t, **args}


def _parse_pruner(ctx: _Ctx, key_path: str, raw: Any) -> dict:
    if isinstance(raw, str):
        raw = {"type": raw}
    t, args = _typed_entry(ctx, key_path, raw, PRUNERS, "median", "pruner")
    if t == "asha":
        for k, v in args.items():
            if k not in ASHA_ARGS:
                raise ctx.err(f"{key_path}.{k}", f"unknown argument {k!r} of asha; expected "
                                                f"one of {', '.join(sorted(ASHA_ARGS))}")
            if not _is_num(v) or v <= 0:
                raise ctx.err(f"{key_path}.{k}", f"expected a positive number, found {v!r}")
    else:
        _check_optuna_args(ctx, key_path, PRUNERS[t], args)
    return {"type": t, **args}


def _parse_grid_values(ctx: _Ctx, key_path: str, name: str, vals: Any) -> list:
    if isinstance(vals, dict) and vals.get("type") == "int":  # {type: int, low, high} range
        d = parse_dist(ctx, key_path, name, vals)
        return list(range(d.low, d.high + 1, d.step or 1))
    if not isinstance(vals, list) or not vals:
        raise ctx.err(key_path, f"expected a non-empty list of values (or {{type: int, low, "
                                f"high}}), found {vals!r}")
    for i, v in enumerate(vals):
        ctx.check_value(f"{key_path}[{i}]", name, v)
    return list(vals)


def _parse_grid(ctx: _Ctx, key_path: str, raw: dict) -> tuple[dict, list[GridPoint]]:
    if ("axes" in raw) == ("points" in raw):
        raise ctx.err(key_path, "a study needs exactly one of 'axes' (a cartesian grid) or "
                                "'points' (named configurations)")
    if "axes" in raw:
        axes_raw = _mapping(ctx, f"{key_path}.axes", raw["axes"])
        if not axes_raw:
            raise ctx.err(f"{key_path}.axes", "needs at least one axis")
        axes = {}
        for k, vals in axes_raw.items():
            name = ctx.key(f"{key_path}.axes.{k}", k, allow_model=True)
            axes[name] = _parse_grid_values(ctx, f"{key_path}.axes.{k}", name, vals)
        pts = []
        for combo in itertools.product(*axes.values()):
            values = dict(zip(axes, combo))
            pts.append(GridPoint(point_label(values, axes), values))
        return axes, pts
    pr = _mapping(ctx, f"{key_path}.points", raw["points"])
    if not pr:
        raise ctx.err(f"{key_path}.points", "needs at least one point")
    pts = []
    for label, values in pr.items():
        flat = ctx.check_flat(f"{key_path}.points.{label}", values, allow_model=True)
        pts.append(GridPoint(str(label), {ctx.key(f"{key_path}.points.{label}.{k}", k, True): v
                                          for k, v in flat.items()}))
    return {}, pts


def _parse_seeds(ctx: _Ctx, key_path: str, seeds: Any) -> list[int]:
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        return list(range(seeds))
    if (not isinstance(seeds, list) or not seeds or
            not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)):
        raise ctx.err(key_path, f"expected a non-empty list of integer seeds (or a count), "
                                f"found {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ctx.err(key_path, f"duplicate seeds in {seeds}")
    return list(seeds)


def _parse_curves(ctx: _Ctx, key_path: str, raw: Any) -> list[str]:
    if raw is None:
        return []
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not all(isinstance(c, str) and c.strip("_*") for c in raw):
        raise ctx.err(key_path, f"expected a list of per-epoch metric names (an entry ending in "
                                f"'_' or '*' is a prefix), found {raw!r}")
    return list(raw)


def _resolve_reference(ctx: _Ctx, key_path: str, ref: Any, points: list[GridPoint],
                       axes: dict) -> tuple[Optional[str], dict[str, str]]:
    """(the reference label, point label -> its reference label for a partial reference)."""
    if ref is None:
        return None, {}
    labels = [p.label for p in points]
    if not isinstance(ref, dict):
        if str(ref) not in labels:
            raise ctx.err(key_path, f"unknown point {ref!r}; points: {', '.join(labels[:20])}")
        return str(ref), {}
    vals = {ctx.key(f"{key_path}.{k}", k, allow_model=True): v for k, v in ref.items()}
    hit = [p.label for p in points if set(p.values) == set(vals) and
           all(p.values.get(k) == v for k, v in vals.items())]
    if hit:
        return hit[0], {}
    keys = set(axes)
    if not axes and all(set(p.values) == set(points[0].values) for p in points):
        keys = set(points[0].values)    # named points that set the same keys: a grid with holes
    if keys and vals and set(vals) < keys:   # one reference per group of the other axes
        by_values = {tuple(sorted((k, _fmt(v)) for k, v in p.values.items())): p.label
                     for p in points}
        ref_of = {}
        for p in points:
            target = tuple(sorted((k, _fmt(v)) for k, v in {**p.values, **vals}.items()))
            if target not in by_values:
                raise ctx.err(key_path, f"{ref!r} is not a point of the grid")
            ref_of[p.label] = by_values[target]
        return ref_of[points[0].label], ref_of
    raise ctx.err(key_path, f"{ref!r} is not a point of the grid")


def _families(spec: "SweepSpec", ctx: _Ctx) -> list[str]:
    return list(spec.defaults) or [_first_family(ctx.model_cls)]


def _check_points(ctx: _Ctx, spec: "SweepSpec", kp: str, points: list[GridPoint], fixed: dict,
                  quick: bool, axes: dict) -> None:
    """Every point's full trial config resolves, for every family (as the runner builds it)."""
    for fam in _families(spec, ctx):
        for p in points:
            where = f"{kp}.points.{p.label}" if not axes else f"{kp}.axes (point {p.label})"
            ctx.check_point(where, spec.trial_base(fam, quick, fixed, p.values), p.values, fam)


def _parse_study(ctx: _Ctx, name: str, raw: Any, quick: bool,
                 spec: Optional["SweepSpec"] = None) -> StudySpec:
    kp = f"studies.{name}"
    raw = _mapping(ctx, kp, raw, STUDY_KEYS)
    q = _mapping(ctx, f"{kp}.quick", raw.get("quick"), QUICK_KEYS)
    axes, points = _parse_grid(ctx, kp, raw)
    seeds = _parse_seeds(ctx, f"{kp}.seeds", raw.get("seeds", [0]))
    fixed = ctx.check_flat(f"{kp}.fixed", raw.get("fixed"), allow_model=True)
    fixed = {ctx.key(f"{kp}.fixed.{k}", k, True): v for k, v in fixed.items()}
    labels = [p.label for p in points]
    ref_label, ref_of = _resolve_reference(ctx, f"{kp}.reference", raw.get("reference"), points,
                                           axes)
    paper = _mapping(ctx, f"{kp}.paper", raw.get("paper"))
    for fam, vals in paper.items():
        vals = _mapping(ctx, f"{kp}.paper.{fam}", vals)
        for label, v in vals.items():
            if str(label) not in labels:
                raise ctx.err(f"{kp}.paper.{fam}.{label}", f"unknown grid point {label!r}; "
                                                          f"points: {', '.join(labels[:20])}")
            if not _is_num(v):
                raise ctx.err(f"{kp}.paper.{fam}.{label}", f"expected a number, found {v!r}")
    curves = _parse_curves(ctx, f"{kp}.curves", raw["curves"]) if "curves" in raw else \
        list(spec.curves if spec else [])
    st = StudySpec(name, str(raw.get("title", name)), points, axes, seeds, fixed, ref_label,
                   {f: {str(k): float(v) for k, v in d.items()} for f, d in paper.items()},
                   str(raw.get("paper_note", "")), raw.get("dataset"), ref_of, curves)
    if spec is not None:
        _check_points(ctx, spec, kp, points, fixed, False, axes)
    if q:
        # validate the quick variant always; use it when asked
        sub = {k: v for k, v in raw.items() if k not in ("quick", "axes", "points", "paper")}
        if "axes" in q or "points" in q:
            sub.update({k: q[k] for k in ("axes", "points") if k in q})
        else:
            sub.update({k: raw[k] for k in ("axes", "points") if k in raw})
        if "seeds" in q:
            sub["seeds"] = q["seeds"]
        if "fixed" in q:
            sub["fixed"] = {**(raw.get("fixed") or {}), **q["fixed"]}
        qaxes, qpoints = _parse_grid(ctx, f"{kp}.quick", sub)
        qseeds = _parse_seeds(ctx, f"{kp}.quick.seeds", sub.get("seeds", [0]))
        qfixed = ctx.check_flat(f"{kp}.quick.fixed", sub.get("fixed"), allow_model=True)
        qfixed = {ctx.key(f"{kp}.quick.fixed.{k}", k, True): v for k, v in qfixed.items()}
        if spec is not None:
            _check_points(ctx, spec, f"{kp}.quick", qpoints, qfixed, True, qaxes)
        if quick:
            qlabels = [p.label for p in qpoints]
            try:
                qref, qref_of = _resolve_reference(ctx, f"{kp}.reference", raw.get("reference"),
                                                   qpoints, qaxes)
            except SpecError:   # the reference is outside the quick grid
                qref, qref_of = None, {}
            st.points, st.axes, st.seeds = qpoints, qaxes, qseeds
            st.fixed = qfixed
            st.reference, st.ref_of = qref, qref_of
            st.paper = {f: {k: v for k, v in d.items() if k in qlabels}
                        for f, d in st.paper.items()}
    return st


# --------------------------------------------------------------------------------------------
# entry points


def _read_yaml(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise SpecError(f"{path}: no such spec file")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as err:
        raise SpecError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: expected a mapping at the top level, found {_type_name(raw)}")
    return raw


def load_spec(path: str | Path, quick: bool = False) -> SweepSpec:
    """Parse and validate a search-space file against the model's typed config.

    Raises :class:`SpecError` (exit code 2) with one message naming the file and key path.
    """
    path = str(path)
    raw = _read_yaml(path)
    for k in raw:
        if k not in TOP_KEYS:
            raise SpecError(f"{path}: {k}: unknown top-level key {k!r}; expected one of "
                            f"{', '.join(sorted(TOP_KEYS))}")
    if "model" not in raw or not isinstance(raw["model"], str):
        raise SpecError(f"{path}: model: a spec must name its model (a registry name)")
    models = raw.get("models") or []
    if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
        raise SpecError(f"{path}: models: expected a list of model registry names, found "
                        f"{models!r}")
    ctx = _Ctx(path, raw["model"], models)
    name = raw.get("name", raw["model"])
    if not isinstance(name, str) or not name or "/" in name:
        raise ctx.err("name", f"expected a short name (experiment prefix), found {name!r}")
    spec = SweepSpec(path=path, model=raw["model"], raw=raw, name=name, models=list(ctx.models),
                     curves=_parse_curves(ctx, "curves", raw.get("curves")))
    spec.known = ctx.known
    if "dataset" in raw:
        if not isinstance(raw["dataset"], str):
            raise ctx.err("dataset", f"expected a string, found {raw['dataset']!r}")
        spec.dataset = raw["dataset"]
    metric = raw.get("metric", "val_wf1")
    if not isinstance(metric, str) or not metric.startswith(METRICS_PREFIXES):
        raise ctx.err("metric", f"expected a validation metric name such as 'val_wf1', found "
                                f"{metric!r}")
    if metric.startswith("test_"):   # selection on test would leak the test split
        raise ctx.err("metric", f"{metric!r} is a test metric; trials are selected on validation "
                                f"by design (test is reported at the selected epoch): use "
                                f"{'val_' + metric[5:]!r}")
    spec.metric = metric
    mode = raw.get("mode", "max")
    if mode not in ("max", "min"):
        raise ctx.err("mode", f"expected 'max' or 'min', found {mode!r}")
    spec.mode = mode
    defaults = _mapping(ctx, "defaults", raw.get("defaults"))
    for fam, flat in defaults.items():
        ctx.check_flat(f"defaults.{fam}", flat, family=str(fam))
        spec.defaults[str(fam)] = {ctx.key(f"defaults.{fam}.{k}", k): v
                                   for k, v in (flat or {}).items()}
    md = _mapping(ctx, "model_defaults", raw.get("model_defaults"))
    for m, per_fam in md.items():
        if m not in ctx.models:
            raise ctx.err(f"model_defaults.{m}", f"{m!r} is not one of this spec's models "
                                                 f"({', '.join(ctx.models)}); list it under "
                                                 f"`models:`")
        per_fam = _mapping(ctx, f"model_defaults.{m}", per_fam)
        spec.model_defaults[m] = {}
        for fam, flat in per_fam.items():
            kp = f"model_defaults.{m}.{fam}"
            flat = _mapping(ctx, kp, flat)
            for k, v in flat.items():
                ctx.key(f"{kp}.{k}", k)
                ctx.check_value(f"{kp}.{k}", k, v, str(fam), model=m)
            spec.model_defaults[m][str(fam)] = {_key_name(k): v for k, v in flat.items()}
    spec.fixed = {ctx.key(f"fixed.{k}", k): v
                  for k, v in ctx.check_flat("fixed", raw.get("fixed")).items()}
    q = _mapping(ctx, "quick", raw.get("quick"), QUICK_KEYS)
    if "epochs" in q:
        ctx.check_value("quick.epochs", "epochs", q["epochs"])
    if "num_samples" in q and (not isinstance(q["num_samples"], int) or q["num_samples"] < 1):
        raise ctx.err("quick.num_samples", f"expected a positive integer, found "
                                           f"{q['num_samples']!r}")
    qfixed = {ctx.key(f"quick.fixed.{k}", k): v
              for k, v in ctx.check_flat("quick.fixed", q.get("fixed")).items()}
    spec.quick = {**q, "fixed": qfixed}
    if "search" in raw:
        spec.search = _parse_search(ctx, raw["search"])
        sq = (raw["search"] or {}).get("quick") or {}
        if "pruner" in sq:
            pr = _parse_pruner(ctx, "search.quick.pruner", sq["pruner"])
            if quick:
                spec.search.pruner = pr
        if "num_samples" in sq and quick:
            spec.search.num_samples = sq["num_samples"]
        qspace = _mapping(ctx, "search.quick.space", sq.get("space"))
        for k, v in qspace.items():
            name = ctx.key(f"search.quick.space.{k}", k)
            d = parse_dist(ctx, f"search.quick.space.{k}", name, v)
            if quick:
                spec.search.space[name] = d
    if spec.search is not None:
        for fam in _families(spec, ctx):
            base = spec.base_flat(fam, quick=quick)
            model = spec.model
            active = active_keys(model, base)
            for k in spec.search.space:
                if k not in active:
                    raise ctx.err(f"search.space.{k}", f"key {k!r} is not used by model "
                                                       f"{model!r} with strategy "
                                                       f"{trial_strategy(model, base, fam)!r}")
    studies = _mapping(ctx, "studies", raw.get("studies"))
    for sname, st in studies.items():
        spec.studies[str(sname)] = _parse_study(ctx, str(sname), st, quick, spec)
    return spec


def check_study_name(spec: SweepSpec, name: str) -> StudySpec:
    if name not in spec.studies:
        raise SpecError(f"{spec.path}: studies.{name}: no such study; the file defines "
                        f"{', '.join(spec.studies) or 'none'}")
    return spec.studies[name]


def load_fixed_config(path: str | Path) -> tuple[str, Optional[str], dict[str, Any]]:
    """``(model_name, dataset_spec, flat)`` from a ``best.yaml`` (or any file with ``model`` and
    ``fixed``): the flat config ``merc train`` resolves with ``resolve_config``. The seed in
    ``flat`` is the champion trial's, so training reproduces that trial.

    A search-space file is accepted too: its ``fixed`` values on top of the first family's
    ``defaults``.
    """
    raw = _read_yaml(path)
    model = raw.get("model")
    if not isinstance(model, str):
        raise SpecError(f"{path}: model: expected the model's registry name, found {model!r}")
    fixed = raw.get("fixed") or {}
    if not isinstance(fixed, dict):
        raise SpecError(f"{path}: fixed: expected a mapping of config keys, found {fixed!r}")
    flat = dict(fixed)
    if "defaults" in raw and "source_runs" not in raw:
        defaults = raw.get("defaults") or {}
        if defaults:
            flat = {**(next(iter(defaults.values())) or {}), **flat}
    from merc.configs.train import resolve_config
    try:
        resolve_config(model, flat, raw.get("family") or "iemocap6", source=str(path))
    except KeyError as err:
        raise SpecError(f"{path}: model: {err.args[0]}") from None
    except ConfigError as err:
        raise SpecError(str(err)) from None
    ds = raw.get("dataset")
    return model, (str(ds) if ds is not None else None), flat


def format_summary(spec: SweepSpec) -> str:
    """What ``merc sweep validate`` prints on success."""
    lines = [f"{spec.path}: OK (model {spec.model}, metric {spec.metric} {spec.mode})"]
    if len(spec.models) > 1:
        lines.append(f"  models: {', '.join(spec.models)}")
    if spec.defaults:
        lines.append(f"  defaults for: {', '.join(spec.defaults)}")
    if spec.search:
        s = spec.search
        lines.append(f"  search: {len(s.space)} keys ({', '.join(s.space)}), {s.num_samples} "
                     f"samples, sampler {s.sampler['type']}, pruner {s.pruner['type']}")
    for st in spec.studies.values():
        shape = " x ".join(str(len(v)) for v in st.axes.values()) if st.axes else \
            f"{len(st.points)} points"
        ref = st.reference or "-"
        if st.ref_of:
            ref = f"{len(st.reference_labels)} (one per group, e.g. {st.reference})"
        lines.append(f"  study {st.name}: {shape} x {len(st.seeds)} seeds = {st.num_trials} "
                     f"trials; reference {ref}" +
                     (f"; curves {', '.join(st.curves)}" if st.curves else ""))
    return "\n".join(lines)


def is_finite_number(v: Any) -> bool:
    return _is_num(v) and math.isfinite(v)
