"""A restricted unpickler for the public MERC feature pickles.

The public feature files (IEMOCAP_features.pkl, MELD_features_raw1.pkl, CORECT's data_<ds>.pkl,
Ada2I's iemocap.pkl, GCNet's label pickles, DAG-ERC's vocab pickles) hold only containers,
strings, numbers and numpy arrays, plus, in COGMEN/CORECT files, instances of a small record
class (``cogmen.Sample.Sample``). :class:`RestrictedUnpickler` resolves exactly those globals:

* safe builtins (containers, numbers, strings, ``object`` for ``copyreg._reconstructor``) and
  ``_codecs.encode`` (how protocol-2 pickles store ``bytes``);
* numpy array / dtype / scalar reconstruction under both the numpy 1 (``numpy.core``) and the
  numpy 2 (``numpy._core``) module names;
* ``collections.OrderedDict`` / ``defaultdict``;
* the known foreign record classes in :data:`FOREIGN_RECORDS`, each mapped to a :class:`Record`
  subclass that only stores the pickled state as a dict (no foreign code is imported or run).

Any other global (``os.system``, ``builtins.eval``, ``builtins.open``, ``subprocess.Popen``,
``builtins.getattr``, a torch class, ...) raises :class:`UnsafePickleError` naming
``module.name`` and the file, before anything is called. Persistent ids are refused too.
"""
from __future__ import annotations

import _compat_pickle
import builtins
import codecs
import collections
import copyreg
import io
import os
import pickle
from pathlib import Path
from typing import Any, Optional

import numpy as np

from merc.data.format import DatasetError


class UnsafePickleError(DatasetError, pickle.UnpicklingError):
    """A pickle asked for a global outside the allow-list."""


class Record:
    """Stand-in for a foreign record object (e.g. COGMEN's ``Sample``): holds its pickled state.

    ``state`` is the dict the original object carried (its ``__dict__``); attributes are readable
    as ``record.state['vid']`` or ``record.vid``. ``origin`` is the ``module.class`` pickled.
    """

    origin = "?"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.__dict__["state"] = {}
        self.__dict__["args"] = args

    def __new__(cls, *args: Any, **kwargs: Any):
        obj = object.__new__(cls)
        obj.__dict__["state"] = {}
        obj.__dict__["args"] = args
        return obj

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (dict, slots) form
            merged = dict(state[0] or {})
            merged.update(state[1] or {})
            state = merged
        if not isinstance(state, dict):
            state = {"_state": state}
        self.__dict__["state"] = dict(state)

    def __getattr__(self, name: str) -> Any:
        state = self.__dict__.get("state", {})
        if name in state:
            return state[name]
        raise AttributeError(f"{self.origin} record has no field {name!r} "
                             f"(fields: {sorted(state)})")

    def __repr__(self) -> str:
        return f"Record({self.origin}, fields={sorted(self.state)})"


#: foreign (module, class) pairs admitted as plain :class:`Record` s
FOREIGN_RECORDS = {
    ("cogmen.Sample", "Sample"),
    ("cogmen", "Sample"),
    ("corect.Sample", "Sample"),
    ("corect", "Sample"),
    ("Sample", "Sample"),
}

_RECORD_CLASSES: dict[str, type] = {}


def _record_class(module: str, name: str) -> type:
    key = f"{module}.{name}"
    if key not in _RECORD_CLASSES:
        _RECORD_CLASSES[key] = type(f"Record_{name}", (Record,), {"origin": key})
    return _RECORD_CLASSES[key]


def _numpy_core():
    try:
        from numpy import _core as core  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy import core  # type: ignore[no-redef]
    return core


def _allowed() -> dict[tuple[str, str], Any]:
    core = _numpy_core()
    allow: dict[tuple[str, str], Any] = {}
    for name in ("dict", "list", "set", "frozenset", "tuple", "int", "float", "complex", "str",
                 "bytes", "bytearray", "bool", "slice", "range", "object"):
        allow[("builtins", name)] = getattr(builtins, name)
    allow[("_codecs", "encode")] = codecs.encode
    allow[("copyreg", "_reconstructor")] = copyreg._reconstructor
    allow[("collections", "OrderedDict")] = collections.OrderedDict
    allow[("collections", "defaultdict")] = collections.defaultdict
    reconstruct = core.multiarray._reconstruct
    scalar = core.multiarray.scalar
    frombuffer = getattr(core.numeric, "_frombuffer", None)
    for pkg in ("numpy.core", "numpy._core"):
        allow[(f"{pkg}.multiarray", "_reconstruct")] = reconstruct
        allow[(f"{pkg}.multiarray", "scalar")] = scalar
        if frombuffer is not None:
            allow[(f"{pkg}.numeric", "_frombuffer")] = frombuffer
    allow[("numpy", "ndarray")] = np.ndarray
    allow[("numpy", "dtype")] = np.dtype
    return allow


_ALLOWED: Optional[dict[tuple[str, str], Any]] = None


def _normalise(module: str, name: str) -> tuple[str, str]:
    """Python-2 names (``__builtin__.set``, ``copy_reg._reconstructor``) -> Python 3 names."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose ``find_class`` admits only the allow-list (module docstring)."""

    def __init__(self, file: Any, *, source: str = "<pickle>", encoding: str = "latin1",
                 **kwargs: Any) -> None:
        super().__init__(file, encoding=encoding, **kwargs)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        global _ALLOWED
        if _ALLOWED is None:
            _ALLOWED = _allowed()
        mod, nm = _normalise(module, name)
        if (mod, nm) in _ALLOWED:
            return _ALLOWED[(mod, nm)]
        if (module, name) in FOREIGN_RECORDS or (mod, nm) in FOREIGN_RECORDS:
            return _record_class(module, name)
        raise UnsafePickleError(
            f"{self.source}: refused to unpickle global {module}.{name}: only builtin containers, "
            f"numpy arrays/dtypes/scalars, collections.OrderedDict/defaultdict and the records "
            f"{sorted(f'{m}.{c}' for m, c in FOREIGN_RECORDS)} are allowed")

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"{self.source}: refused persistent id {pid!r} in pickle")


def load_pickle(path: str | os.PathLike, encoding: str = "latin1") -> Any:
    """Load ``path`` through :class:`RestrictedUnpickler` (latin1 for Python-2 numpy pickles)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    with open(path, "rb") as f:
        try:
            return RestrictedUnpickler(f, source=str(path), encoding=encoding).load()
        except UnsafePickleError:
            raise
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
                IndexError, KeyError, UnicodeDecodeError) as err:
            raise DatasetError(f"{path}: not a readable pickle ({type(err).__name__}: {err})") \
                from None


def loads_pickle(data: bytes, source: str = "<bytes>", encoding: str = "latin1") -> Any:
    """:func:`load_pickle` for an in-memory byte string."""
    return RestrictedUnpickler(io.BytesIO(data), source=source, encoding=encoding).load()


def record_state(obj: Any) -> Optional[dict]:
    """The field dict of a :class:`Record`, or ``None`` for anything else."""
    return obj.state if isinstance(obj, Record) else None


__all__ = ["FOREIGN_RECORDS", "Record", "RestrictedUnpickler", "UnsafePickleError",
           "load_pickle", "loads_pickle", "record_state"]
