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
            "merc.data.importers.dagerc", "merc.data.importers.meld_csv",
            "merc.data.importers.dialogue_csv"]


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


def importer_options(fmt: str) -> list[tuple[str, str]]:
    """(option, default) of a format's ``--opt`` keys, from its function's signature."""
    _load_all()
    params = inspect.signature(IMPORTERS[fmt].fn).parameters
    return [(k, "" if p.default is inspect.Parameter.empty else repr(p.default))
            for k, p in params.items() if k not in ("src", "out") and
            p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]


def _takes_any(fmt: str) -> bool:
    params = inspect.signature(IMPORTERS[fmt].fn).parameters.values()
    return any(p.kind == p.VAR_KEYWORD for p in params)


def _doc_options(fn) -> str:
    """The "Options: ..." paragraph of an importer's docstring, on one line."""
    import re
    doc = inspect.getdoc(fn) or ""
    m = re.search(r"Options(?: as ([\w-]+))?[:.]?\s*(.*?)(?:\n\s*\n|$)", doc, re.S)
    if not m:
        return ""
    if m.group(1):
        return f"as {m.group(1)}"
    return " ".join(m.group(2).replace("``", "").split()).rstrip(".")


def formats_help(width: int = 100) -> str:
    """Every format with its one-line help and its options (``merc data import --help``)."""
    import textwrap
    lines = ["formats and their --opt options (defaults in parentheses):"]
    for n in importer_names():
        lines.append(f"  {n}")
        lines += textwrap.wrap(IMPORTERS[n].help, width, initial_indent="      ",
                               subsequent_indent="      ")
        opts = ", ".join(f"{k} ({d})" if d else k for k, d in importer_options(n))
        if _takes_any(n):   # options checked inside: its docstring's "Options" paragraph
            opts = _doc_options(IMPORTERS[n].fn) or "see the importer's docstring"
        lines += textwrap.wrap(f"options: {opts or 'none'}", width, initial_indent="      ",
                               subsequent_indent="        ")
    return "\n".join(lines)


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
