"""Importers of the public MERC feature files into the canonical format (``merc data import``).

Each importer module registers a function ``fn(src: Path, out: Path, **options) -> Manifest``
under a format name. Options arrive as keyword arguments from ``--opt key=value`` on the CLI.
"""
from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from merc.data.format import DatasetError, Manifest


@dataclass(frozen=True)
class Importer:
    name: str
    fn: Callable[..., Manifest]
    help: str


IMPORTERS: dict[str, Importer] = {}
#: modules that register importers
_MODULES = ["merc.data.importers.pickles", "merc.data.importers.gcnet",
            "merc.data.importers.dagerc", "merc.data.importers.meld_csv"]


def register_importer(name: str, help: str = ""):
    def deco(fn):
        IMPORTERS[name] = Importer(name, fn, help or (fn.__doc__ or "").strip().split("\n")[0])
        return fn
    return deco


def _load_all() -> None:
    for mod in _MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as err:  # a module not written yet
            if err.name != mod:
                raise


def importer_names() -> list[str]:
    _load_all()
    return sorted(IMPORTERS)


def run_import(fmt: str, src: str | Path, out: str | Path, **options: Any) -> Manifest:
    _load_all()
    if fmt not in IMPORTERS:
        raise DatasetError(f"--format: unknown format {fmt!r}; known: {', '.join(sorted(IMPORTERS))}")
    fn = IMPORTERS[fmt].fn
    params = inspect.signature(fn).parameters
    if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
        unknown = [k for k in options if k not in params]
        if unknown:
            known = [k for k in params if k not in ("src", "out")]
            raise DatasetError(f"--opt: format {fmt!r} has no option {unknown[0]!r}; "
                               f"options: {', '.join(known) or 'none'}")
    src = Path(src)
    if not src.exists():
        raise DatasetError(f"{src}: source does not exist")
    try:
        return fn(src, Path(out), **options)
    except DatasetError:
        raise
    except (TypeError, AttributeError, IndexError, KeyError, ValueError, OverflowError,
            RecursionError, MemoryError, UnicodeError) as err:
        # a file that unpickles to data of the wrong shape or type: one line, naming the file
        text = " ".join(str(err).split())[:300]
        raise DatasetError(f"{src}: not a valid {fmt!r} source: {type(err).__name__}: {text}") \
            from None
