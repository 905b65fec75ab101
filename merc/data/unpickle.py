"""A restricted unpickler for the public MERC feature pickles: data in, never code, never a crash.

The public feature files (IEMOCAP_features.pkl, MELD_features_raw1.pkl, CORECT's data_<ds>.pkl,
Ada2I's iemocap.pkl, GCNet's label pickles, DAG-ERC's vocab pickles) hold only containers,
strings, numbers and numpy arrays, plus, in COGMEN/CORECT files, instances of a small record
class (``cogmen.Sample.Sample``). :class:`RestrictedUnpickler` is the pure-Python pickle machine
(``pickle._Unpickler``, protocols 0-5) with every opcode that builds or calls something replaced:

* ``GLOBAL``/``STACK_GLOBAL`` resolve to inert markers, never to the real function; a name off
  the allow-list (``os.system``, ``builtins.eval``, ``builtins.getattr``, a torch class, ...)
  raises :class:`UnsafePickleError` naming ``module.name`` and the file. ``REDUCE`` runs our own
  checked constructor for each allowed name (containers, numbers, ``bytes`` from
  ``_codecs.encode(str, 'latin1')``, ``OrderedDict``/``defaultdict``), with argument types
  checked (``bytearray(2**31)``, ``list(range(...))`` are refused).
* numpy objects are never built from state the file controls. A dtype comes from a whitelist of
  plain numeric / bool / fixed-size string dtypes *by name* (:data:`DTYPE_NAMES`); its pickled
  state may only say the byte order (and a string's item size) - no fields, offsets, subarrays,
  object flags. An array is rebuilt only through :meth:`RestrictedUnpickler._array`: vetted
  dtype, shape of non-negative ints, byte length equal to ``prod(shape) * itemsize`` of a
  ``bytes`` buffer from the file. ``BUILD`` is admitted only on a pending array, a pending dtype
  and a :class:`Record`; ``_frombuffer`` and ``scalar`` take the vetted dtype only.
* Bounds: tuple nesting is checked when a tuple is made (before it can be hashed as a dict key),
  the whole result is walked once, without recursion, for depth (:data:`MAX_DEPTH`), reference
  cycles and its expanded size (a memo "billion laughs" counts each reference), which must stay
  under ``max(ALLOC_FLOOR, ALLOC_FACTOR x file size)`` bytes (``MERC_PICKLE_ALLOC_FACTOR``
  overrides the factor). Raw reads come from the in-memory file, so no length field can make a
  large allocation.
* ``PERSID``, ``EXT*``, out-of-band buffers and instances of any class but the known foreign
  records (mapped to :class:`Record`, which only stores the pickled state) are refused.

Every refusal or malformed file is a :class:`~merc.data.format.DatasetError` whose one-line
message starts with the file.
"""
from __future__ import annotations

import _compat_pickle
import codecs
import collections
import io
import math
import os
import pickle
import struct
from pathlib import Path
from typing import Any, Optional

import numpy as np

from merc.data.format import DatasetError

#: deepest container nesting admitted (public pickles nest < 10 deep)
MAX_DEPTH = 100
#: expanded size limit: max(ALLOC_FLOOR, ALLOC_FACTOR * file size) estimated bytes
ALLOC_FACTOR = 64.0
ALLOC_FLOOR = 256 << 20
#: plain dtypes an array or scalar may have (numpy's pickled names); plus S<n> / U<n> strings
DTYPE_NAMES = frozenset({"b1", "?", "bool", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8",
                         "f2", "f4", "f8", "c8", "c16", "int8", "int16", "int32", "int64",
                         "uint8", "uint16", "uint32", "uint64", "float16", "float32", "float64",
                         "complex64", "complex128"})
MAX_STR_ITEMSIZE = 1 << 20
_MAX_NDIM = 32


class UnsafePickleError(DatasetError, pickle.UnpicklingError):
    """A pickle asked for a global, an opcode or an object outside the allow-list."""


class PickleLimitError(DatasetError):
    """A pickle exceeds a bound (nesting depth, expanded size) or holds a reference cycle."""


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


class _Global:
    """An allowed global as the file named it: an inert marker, never the real callable."""

    __slots__ = ("key",)

    def __init__(self, key: str):
        self.key = key

    def __repr__(self) -> str:
        return f"<global {self.key}>"


_NP = ("numpy.core", "numpy._core")
#: canonical key of each admitted (module, name)
_ALLOWED: dict[tuple[str, str], str] = {}
for _n in ("dict", "list", "set", "frozenset", "tuple", "int", "float", "complex", "str",
           "bytes", "bytearray", "bool", "slice", "object"):
    _ALLOWED[("builtins", _n)] = _n
_ALLOWED[("_codecs", "encode")] = "encode"
_ALLOWED[("copyreg", "_reconstructor")] = "reconstructor"
_ALLOWED[("collections", "OrderedDict")] = "OrderedDict"
_ALLOWED[("collections", "defaultdict")] = "defaultdict"
for _p in _NP:
    _ALLOWED[(f"{_p}.multiarray", "_reconstruct")] = "np._reconstruct"
    _ALLOWED[(f"{_p}.multiarray", "scalar")] = "np.scalar"
    _ALLOWED[(f"{_p}.numeric", "_frombuffer")] = "np._frombuffer"
_ALLOWED[("numpy", "ndarray")] = "np.ndarray"
_ALLOWED[("numpy", "dtype")] = "np.dtype"
_FACTORIES = {"list": list, "dict": dict, "set": set, "int": int, "float": float, "str": str,
              "tuple": tuple, "bytes": bytes, "OrderedDict": collections.OrderedDict}
_ENCODINGS = {"latin1", "latin-1", "iso-8859-1", "ascii", "utf-8", "utf8"}
_LEAVES = (str, bytes, bytearray, int, float, complex, type(None), slice, np.generic)


def _normalise(module: str, name: str) -> tuple[str, str]:
    """Python-2 names (``__builtin__.set``, ``copy_reg._reconstructor``) -> Python 3 names."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


def _short(obj: Any, n: int = 60) -> str:
    try:
        text = repr(obj) if isinstance(obj, (str, bytes, int, float, bool, type(None))) \
            else type(obj).__name__
    except Exception:  # noqa: BLE001 - a repr must never fail an error message
        text = type(obj).__name__
    text = text.replace("\n", " ")
    return text if len(text) <= n else text[:n] + "..."


class _DtypeRef:
    """A ``numpy.dtype(name, align, copy)`` call awaiting its ``BUILD`` (byte order, item size).

    Memoized references taken before the ``BUILD`` see this object; :meth:`get` gives the vetted
    ``np.dtype`` (built by us from the whitelisted name, never through ``dtype.__setstate__``).
    """

    __slots__ = ("name", "dtype", "built")

    def __init__(self, name: str, dtype: np.dtype):
        self.name, self.dtype, self.built = name, dtype, False


class RestrictedUnpickler(pickle._Unpickler):
    """The pure-Python unpickler with every constructing opcode replaced (module docstring)."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file: Any, *, source: str = "<pickle>", encoding: str = "latin1",
                 size: Optional[int] = None, max_bytes: Optional[float] = None) -> None:
        super().__init__(file, encoding=encoding, fix_imports=True)
        self.source = source
        self.size = size
        self.max_bytes = max_bytes if max_bytes is not None else alloc_limit(size or 0)
        self._tuples: dict[int, tuple[Any, int, int]] = {}   # id -> (obj, depth, weight)
        self._pending: dict[int, np.ndarray] = {}              # _reconstruct'ed, awaiting BUILD

    # ---- errors ------------------------------------------------------------------------------
    def _refuse(self, what: str) -> UnsafePickleError:
        return UnsafePickleError(f"{self.source}: refused: {what}")

    def _bad(self, what: str) -> DatasetError:
        return DatasetError(f"{self.source}: malformed pickle: {what}")

    # ---- globals -----------------------------------------------------------------------------
    def find_class(self, module: str, name: str) -> Any:
        mod, nm = _normalise(module, name)
        if (mod, nm) in _ALLOWED:
            return _Global(_ALLOWED[(mod, nm)])
        if (module, name) in FOREIGN_RECORDS or (mod, nm) in FOREIGN_RECORDS:
            return _record_class(module, name)
        raise UnsafePickleError(
            f"{self.source}: refused to unpickle global {module}.{name}: only builtin containers, "
            f"numpy arrays/dtypes/scalars, collections.OrderedDict/defaultdict and the records "
            f"{sorted(f'{m}.{c}' for m, c in FOREIGN_RECORDS)} are allowed")

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"{self.source}: refused persistent id {_short(pid)} in pickle")

    def load_persid(self):
        raise UnsafePickleError(f"{self.source}: refused persistent id (PERSID) in pickle")
    dispatch[pickle.PERSID[0]] = load_persid

    def load_binpersid(self):
        raise UnsafePickleError(f"{self.source}: refused persistent id (BINPERSID) in pickle")
    dispatch[pickle.BINPERSID[0]] = load_binpersid

    def _ext(self):
        raise self._refuse("extension-registry opcode (EXT1/EXT2/EXT4)")
    for _op in (pickle.EXT1, pickle.EXT2, pickle.EXT4):
        dispatch[_op[0]] = _ext

    def _no_buffer(self):
        raise self._refuse("out-of-band buffer (NEXT_BUFFER / READONLY_BUFFER)")
    dispatch[pickle.NEXT_BUFFER[0]] = _no_buffer
    dispatch[pickle.READONLY_BUFFER[0]] = _no_buffer

    def load_bytearray8(self):
        n, = struct.unpack("<Q", self.read(8))
        left = self._left()
        if left is not None and n > left:
            raise self._bad(f"BYTEARRAY8 of {n} bytes, but only {left} bytes are left in the file")
        b = bytearray(n)
        if n and self.readinto(b) != n:
            raise self._bad("BYTEARRAY8 truncated")
        self.append(b)
    dispatch[pickle.BYTEARRAY8[0]] = load_bytearray8

    def _left(self) -> Optional[int]:
        f = getattr(self, "_bio", None)
        if f is None:
            return None
        frame = getattr(self._unframer, "current_frame", None)
        in_frame = len(frame.getbuffer()) - frame.tell() if frame is not None else 0
        return len(f.getbuffer()) - f.tell() + in_frame

    # ---- tuples: depth and weight known at creation (hashing a deep tuple overflows C) -------
    def _note(self, t: Any) -> Any:
        tt = type(t)
        if (tt is tuple or tt is frozenset) and t:
            depth, weight, tuples = 1, 64 + 8 * len(t), self._tuples
            for x in t:
                tx = type(x)
                if (tx is tuple or tx is frozenset) and x:
                    e = tuples.get(id(x))
                    if e is None or e[0] is not x:
                        self._note(x)
                        e = tuples[id(x)]
                    if e[1] >= depth:
                        depth = e[1] + 1
                    weight += e[2]
                else:
                    weight += 32
            if depth > MAX_DEPTH:
                raise PickleLimitError(f"{self.source}: refused: tuples nested more than "
                                       f"{MAX_DEPTH} deep")
            if weight > self.max_bytes:
                raise PickleLimitError(f"{self.source}: refused: a tuple expands to more than "
                                       f"{_mib(self.max_bytes)} (shared references)")
            self._tuples[id(t)] = (t, depth, weight)
        return t

    def load_tuple(self):
        items = self.pop_mark()   # (rebinds self.append: evaluate first)
        self.append(self._note(tuple(items)))
    dispatch[pickle.TUPLE[0]] = load_tuple

    def load_tuple1(self):
        self.stack[-1] = self._note((self.stack[-1],))
    dispatch[pickle.TUPLE1[0]] = load_tuple1

    def load_tuple2(self):
        self.stack[-2:] = [self._note((self.stack[-2], self.stack[-1]))]
    dispatch[pickle.TUPLE2[0]] = load_tuple2

    def load_tuple3(self):
        self.stack[-3:] = [self._note((self.stack[-3], self.stack[-2], self.stack[-1]))]
    dispatch[pickle.TUPLE3[0]] = load_tuple3

    def load_frozenset(self):
        items = self.pop_mark()
        for x in items:
            self._note(x)
        self.append(self._note(frozenset(items)))
    dispatch[pickle.FROZENSET[0]] = load_frozenset

    # ---- container mutation: only on real containers -----------------------------------------
    def load_append(self):
        value = self.stack.pop()
        self._target(list, "APPEND").append(value)
    dispatch[pickle.APPEND[0]] = load_append

    def load_appends(self):
        items = self.pop_mark()
        self._target(list, "APPENDS").extend(items)
    dispatch[pickle.APPENDS[0]] = load_appends

    def load_setitem(self):
        value = self.stack.pop()
        key = self.stack.pop()
        self._target(dict, "SETITEM")[key] = value
    dispatch[pickle.SETITEM[0]] = load_setitem

    def load_setitems(self):
        items = self.pop_mark()
        d = self._target(dict, "SETITEMS")
        if len(items) % 2:
            raise self._bad("SETITEMS with an odd number of items")
        for i in range(0, len(items), 2):
            d[items[i]] = items[i + 1]
    dispatch[pickle.SETITEMS[0]] = load_setitems

    def load_additems(self):
        items = self.pop_mark()
        self._target(set, "ADDITEMS").update(items)
    dispatch[pickle.ADDITEMS[0]] = load_additems

    def _target(self, kind: type, op: str) -> Any:
        if not self.stack:
            raise self._bad(f"{op} on an empty stack")
        obj = self.stack[-1]
        if not isinstance(obj, kind):
            raise self._bad(f"{op} on a {type(obj).__name__}, expected a {kind.__name__}")
        return obj

    # ---- object creation ---------------------------------------------------------------------
    def _record_only(self, cls: Any, op: str) -> type:
        if isinstance(cls, type) and issubclass(cls, Record):
            return cls
        name = cls.key if isinstance(cls, _Global) else _short(cls)
        raise self._refuse(f"{op} of {name} (only the records "
                           f"{sorted(f'{m}.{c}' for m, c in FOREIGN_RECORDS)} are instantiated)")

    def load_newobj(self):
        self.stack.pop()
        cls = self._record_only(self.stack.pop(), "NEWOBJ")
        self.append(cls.__new__(cls))
    dispatch[pickle.NEWOBJ[0]] = load_newobj

    def load_newobj_ex(self):
        self.stack.pop()
        self.stack.pop()
        cls = self.stack.pop()
        self.append(self._record_only(cls, "NEWOBJ_EX").__new__(cls))
    dispatch[pickle.NEWOBJ_EX[0]] = load_newobj_ex

    def load_inst(self):
        module = self.readline()[:-1].decode("ascii")
        name = self.readline()[:-1].decode("ascii")
        cls = self._record_only(self.find_class(module, name), "INST")
        self.pop_mark()
        self.append(cls.__new__(cls))
    dispatch[pickle.INST[0]] = load_inst

    def load_obj(self):
        items = self.pop_mark()
        if not items:
            raise self._bad("OBJ without a class")
        cls = self._record_only(items[0], "OBJ")
        self.append(cls.__new__(cls))
    dispatch[pickle.OBJ[0]] = load_obj

    def load_reduce(self):
        args = self.stack.pop()
        func = self.stack.pop()
        if not isinstance(args, tuple):
            raise self._bad(f"REDUCE arguments must be a tuple, found {type(args).__name__}")
        if isinstance(func, type) and issubclass(func, Record):
            self.append(func.__new__(func))
            return
        if not isinstance(func, _Global):
            raise self._refuse(f"REDUCE on a {type(func).__name__} (only allow-listed globals "
                               f"are called)")
        self.append(self._note(self._call(func.key, args)))
    dispatch[pickle.REDUCE[0]] = load_reduce

    def _call(self, key: str, args: tuple) -> Any:
        """Our own constructor for each allowed global; arguments checked by type."""
        n = len(args)
        if key in ("list", "tuple", "set", "frozenset", "dict", "OrderedDict"):
            if n == 0:
                return {"list": list, "tuple": tuple, "set": set, "frozenset": frozenset,
                        "dict": dict, "OrderedDict": collections.OrderedDict}[key]()
            if n == 1 and isinstance(args[0], (list, tuple, set, frozenset, dict)):
                if key in ("set", "frozenset"):
                    for x in args[0]:
                        self._note(x)
                return {"list": list, "tuple": tuple, "set": set, "frozenset": frozenset,
                        "dict": dict, "OrderedDict": collections.OrderedDict}[key](args[0])
        elif key == "defaultdict":
            fac = args[0] if n else None
            if n <= 1 and (fac is None or (isinstance(fac, _Global) and fac.key in _FACTORIES)):
                return collections.defaultdict(None if fac is None else _FACTORIES[fac.key])
        elif key in ("int", "float", "complex", "bool"):
            if n <= 2 and all(isinstance(a, (int, float, str)) and
                              (not isinstance(a, str) or len(a) <= 4300) for a in args):
                return {"int": int, "float": float, "complex": complex, "bool": bool}[key](*args)
        elif key == "slice":
            if 1 <= n <= 3 and all(a is None or isinstance(a, int) for a in args):
                return slice(*args)
        elif key in ("str", "bytes", "bytearray"):
            make = {"str": str, "bytes": bytes, "bytearray": bytearray}[key]
            if n == 0:
                return make()
            if n == 1 and isinstance(args[0], (bytes, bytearray)) and key != "str":
                return make(args[0])
            if n == 1 and isinstance(args[0], str) and key == "str":
                return args[0]
            if n == 1 and isinstance(args[0], list) and key != "str" and \
                    all(type(a) is int for a in args[0]):
                return make(args[0])
            if n == 2 and isinstance(args[0], (str, bytes)) and isinstance(args[1], str) \
                    and args[1].lower() in _ENCODINGS:
                return make(args[0], args[1])
        elif key == "encode":
            if n == 2 and isinstance(args[0], str) and isinstance(args[1], str) and \
                    args[1].lower() in _ENCODINGS:
                return codecs.encode(args[0], args[1])
        elif key == "reconstructor":
            if n == 3 and isinstance(args[0], type) and issubclass(args[0], Record) and \
                    isinstance(args[1], _Global) and args[1].key == "object" and args[2] is None:
                return args[0].__new__(args[0])
        elif key == "np.dtype":
            return self._dtype_call(args)
        elif key == "np._reconstruct":
            if n == 3 and isinstance(args[0], _Global) and args[0].key == "np.ndarray" and \
                    isinstance(args[1], tuple) and isinstance(args[2], (bytes, str)) and \
                    len(args[2]) <= 8:
                arr = np.empty(0, dtype=np.int8)
                self._pending[id(arr)] = arr
                return arr
        elif key == "np.scalar":
            if n == 2:
                dt = self._vetted(args[0], "numpy scalar")
                data = args[1].encode("latin1") if isinstance(args[1], str) else args[1]
                if isinstance(data, (bytes, bytearray)):
                    if len(data) != dt.itemsize:
                        raise self._bad(f"numpy scalar of dtype {dt.str}: {len(data)} bytes, "
                                        f"expected {dt.itemsize}")
                    return np.frombuffer(bytes(data), dtype=dt, count=1)[0]
        elif key == "np._frombuffer":
            if n == 4:
                buf, dt, shape, order = args
                dt = self._vetted(dt, "numpy array")
                if isinstance(buf, (bytes, bytearray)) and order in ("C", "F"):
                    return self._array(buf, dt, shape, order == "F")
        shown = ", ".join(_short(a) for a in args)
        raise self._refuse(f"call {_GLOBAL_NAMES.get(key, key)}({shown}) (arguments of an "
                           f"unsupported type or count)")

    # ---- numpy: the checked path ---------------------------------------------------------------
    def _dtype_call(self, args: tuple) -> _DtypeRef:
        if not 1 <= len(args) <= 3 or not isinstance(args[0], str) or \
                any(not isinstance(a, (bool, int)) for a in args[1:]):
            raise self._refuse(f"numpy.dtype{tuple(_short(a) for a in args)}: expected "
                               f"(name, align, copy)")
        name = args[0]
        if len(args) > 1 and args[1]:
            raise self._refuse(f"numpy.dtype({name!r}, align=True): aligned dtypes are not data")
        return _DtypeRef(name, self._dtype_by_name(name))

    def _dtype_by_name(self, name: str) -> np.dtype:
        base = name.lstrip("<>|=")
        if base in DTYPE_NAMES:
            return np.dtype(base)
        if len(base) >= 1 and base[0] in "SU" and (base[1:] == "" or base[1:].isdigit()):
            size = int(base[1:] or 0)
            if size <= MAX_STR_ITEMSIZE:
                return np.dtype(f"{base[0]}{size}")
        raise self._refuse(f"numpy dtype {name!r}: only plain dtypes are data "
                           f"({', '.join(sorted(d for d in DTYPE_NAMES if len(d) <= 3))}, "
                           f"S<n>, U<n>)")

    def _build_dtype(self, ref: _DtypeRef, state: Any) -> None:
        if ref.built:
            raise self._refuse("a second BUILD on a numpy dtype")
        ok = isinstance(state, tuple) and len(state) in (8, 9) and state[0] in (3, 4) and \
            state[1] in ("<", ">", "|", "=") and state[2] is None and state[3] is None and \
            state[4] is None and all(type(v) is int for v in state[5:8]) and \
            state[7] == ref.dtype.flags and \
            (len(state) == 8 or state[8] is None)
        if not ok:
            raise self._refuse(f"numpy dtype {ref.name!r} with state {_short(state, 120)}: only "
                               f"the byte order (and a string's item size) may be set; fields, "
                               f"subarrays, offsets and flags are refused")
        dt = ref.dtype
        elsize = state[5]
        if dt.kind in "SU" and elsize > 0:
            unit = 4 if dt.kind == "U" else 1
            if elsize % unit or elsize // unit > MAX_STR_ITEMSIZE:
                raise self._refuse(f"numpy dtype {ref.name!r}: item size {elsize}")
            dt = np.dtype(f"{dt.kind}{elsize // unit}")
        elif elsize not in (-1, dt.itemsize):
            raise self._refuse(f"numpy dtype {ref.name!r}: item size {elsize}, expected "
                               f"{dt.itemsize}")
        if state[1] in "<>" and dt.itemsize > 1 and dt.kind != "S":
            dt = dt.newbyteorder(state[1])
        ref.dtype, ref.built = dt, True

    def _vetted(self, dt: Any, what: str) -> np.dtype:
        if isinstance(dt, _DtypeRef):
            return dt.dtype
        raise self._refuse(f"{what} with dtype given as {_short(dt)} (expected a "
                           f"numpy.dtype(name) call)")

    def _array(self, raw: Any, dt: np.dtype, shape: Any, fortran: bool,
               into: Optional[np.ndarray] = None) -> np.ndarray:
        if isinstance(raw, str):
            raw = raw.encode("latin1")
        if not isinstance(raw, (bytes, bytearray)):
            raise self._refuse(f"numpy array data given as {_short(raw)} (expected bytes; object "
                               f"arrays are not data)")
        if not isinstance(shape, tuple) or len(shape) > _MAX_NDIM or \
                any(type(s) is not int or s < 0 for s in shape):
            raise self._bad(f"numpy array shape {_short(shape, 80)}: expected a tuple of at most "
                            f"{_MAX_NDIM} non-negative ints")
        count = math.prod(shape)
        if count * dt.itemsize != len(raw):
            raise self._bad(f"numpy array of shape {shape} and dtype {dt.str} needs "
                            f"{count * dt.itemsize} bytes, the file gives {len(raw)}")
        if into is not None:
            into.__setstate__((1, shape, dt, bool(fortran), bytes(raw)))
            return into
        order = "F" if fortran else "C"
        arr = np.frombuffer(raw, dtype=dt, count=count).reshape(shape, order=order)
        return arr if isinstance(raw, bytearray) else arr.copy(order=order)

    def load_build(self):
        state = self.stack.pop()
        if not self.stack:
            raise self._bad("BUILD on an empty stack")
        inst = self.stack[-1]
        if isinstance(inst, _DtypeRef):
            self._build_dtype(inst, state)
        elif isinstance(inst, np.ndarray):
            if self._pending.pop(id(inst), None) is not inst:
                raise self._refuse("BUILD on a numpy array that is already built")
            if not isinstance(state, tuple) or len(state) not in (4, 5) or \
                    (len(state) == 5 and state[0] != 1):
                raise self._bad(f"numpy array state {_short(state)}: expected (version, shape, "
                                f"dtype, is_fortran, data)")
            shape, dt, fortran, raw = state[-4:]
            if not isinstance(fortran, (bool, int)):
                raise self._bad("numpy array state: is_fortran must be a bool")
            self._array(raw, self._vetted(dt, "numpy array"), shape, bool(fortran), into=inst)
        elif isinstance(inst, Record):
            if not (isinstance(state, dict) or (isinstance(state, tuple) and len(state) == 2 and
                                                all(s is None or isinstance(s, dict)
                                                    for s in state))):
                raise self._bad(f"{inst.origin} record state {_short(state)}: expected a dict")
            inst.__setstate__(state)
        elif isinstance(inst, dict) and not state:
            pass   # OrderedDict / defaultdict without instance attributes
        else:
            raise self._refuse(f"BUILD (setstate) on a {type(inst).__name__}")
    dispatch[pickle.BUILD[0]] = load_build

    # ---- the whole result -------------------------------------------------------------------
    def load(self) -> Any:
        obj = super().load()
        check_result(obj, self.source, self.max_bytes)
        return obj


_GLOBAL_NAMES = {v: f"{m}.{n}" for (m, n), v in _ALLOWED.items()}


def _mib(n: float) -> str:
    return f"{n / (1 << 20):.0f} MiB"


def alloc_limit(file_size: int) -> float:
    """Expanded-size bound for a pickle of ``file_size`` bytes (``MERC_PICKLE_ALLOC_FACTOR``)."""
    try:
        factor = float(os.environ.get("MERC_PICKLE_ALLOC_FACTOR", ALLOC_FACTOR))
    except ValueError:
        factor = ALLOC_FACTOR
    return max(float(ALLOC_FLOOR), factor * file_size)


def check_result(obj: Any, source: str, max_bytes: float) -> None:
    """Walk ``obj`` once, without recursion: refuse depth > :data:`MAX_DEPTH`, reference cycles,
    an expanded size (each reference counted, as a consumer iterating it would) over
    ``max_bytes``, and anything but data (markers, pending dtypes, object arrays)."""
    info: dict[int, tuple[int, int]] = {}      # id -> (depth, weight) of finished containers
    keep: list = []                            # keeps ids stable while walking
    onpath: set[int] = set()
    todo: list[tuple[Any, bool]] = [(obj, False)]
    while todo:
        o, done = todo.pop()
        i = id(o)
        if done:
            kids = _children(o)
            depth, weight = 1, 64 + 8 * len(kids)
            for k in kids:
                d, w = info.get(id(k)) or _leaf(k, source)
                depth, weight = max(depth, d + 1), weight + w
            onpath.discard(i)
            if depth > MAX_DEPTH:
                raise PickleLimitError(f"{source}: refused: containers nested more than "
                                       f"{MAX_DEPTH} deep")
            if weight > max_bytes:
                raise PickleLimitError(f"{source}: refused: the data expands to more than "
                                       f"{_mib(max_bytes)} (limit max({_mib(ALLOC_FLOOR)}, "
                                       f"MERC_PICKLE_ALLOC_FACTOR x file size); shared "
                                       f"references count once per use)")
            info[i] = (depth, weight)
            continue
        if not isinstance(o, (list, tuple, dict, set, frozenset, Record)):
            _leaf(o, source)
            continue
        if i in info:
            continue
        if i in onpath:
            raise PickleLimitError(f"{source}: refused: a reference cycle "
                                   f"({type(o).__name__} contains itself)")
        onpath.add(i)
        keep.append(o)
        todo.append((o, True))
        for k in _children(o):
            if isinstance(k, (list, tuple, dict, set, frozenset, Record)) and id(k) not in info:
                todo.append((k, False))


def _children(o: Any) -> list:
    if isinstance(o, dict):
        return [x for kv in o.items() for x in kv]
    if isinstance(o, Record):
        return [o.__dict__.get("state", {}), o.__dict__.get("args", ())]
    return list(o)


def _leaf(o: Any, source: str) -> tuple[int, int]:
    if isinstance(o, (str, bytes, bytearray)):
        return 0, 49 + len(o)
    if isinstance(o, np.ndarray):
        if o.dtype.hasobject:
            raise UnsafePickleError(f"{source}: refused: an object array")
        return 0, 112 + o.nbytes
    if isinstance(o, _LEAVES):
        return 0, 32
    if isinstance(o, _Global):
        raise UnsafePickleError(f"{source}: refused: global {_GLOBAL_NAMES.get(o.key, o.key)} "
                                f"used as a value (only data is admitted)")
    if isinstance(o, _DtypeRef):
        raise UnsafePickleError(f"{source}: refused: a bare numpy dtype as a value")
    raise UnsafePickleError(f"{source}: refused: a {type(o).__name__} in the data")


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= 300 else text[:300] + "..."


def loads_pickle(data: bytes, source: str = "<bytes>", encoding: str = "latin1",
                 max_bytes: Optional[float] = None) -> Any:
    """Unpickle ``data`` through :class:`RestrictedUnpickler`; every failure is a one-line
    :class:`DatasetError` (or subclass) starting with ``source``."""
    bio = io.BytesIO(data)
    up = RestrictedUnpickler(bio, source=source, encoding=encoding, size=len(data),
                             max_bytes=max_bytes)
    up._bio = bio
    try:
        return up.load()
    except DatasetError:
        raise
    except RecursionError:
        raise PickleLimitError(f"{source}: refused: nesting too deep") from None
    except MemoryError:
        raise PickleLimitError(f"{source}: refused: out of memory while unpickling") from None
    except Exception as err:  # noqa: BLE001 - any other failure is a malformed file
        raise DatasetError(f"{source}: not a readable pickle ({type(err).__name__}: "
                           f"{_one_line(err)})") from None


def load_pickle(path: str | os.PathLike, encoding: str = "latin1",
                max_bytes: Optional[float] = None) -> Any:
    """Load ``path`` through :class:`RestrictedUnpickler` (latin1 for Python-2 numpy pickles).

    The file is read into memory first, so that no length field in it can ask for more bytes
    than the file has; ``max_bytes`` overrides :func:`alloc_limit` of the file size."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DatasetError(f"{path}: cannot read ({err.strerror or err})") from None
    return loads_pickle(data, source=str(path), encoding=encoding, max_bytes=max_bytes)


def record_state(obj: Any) -> Optional[dict]:
    """The field dict of a :class:`Record`, or ``None`` for anything else."""
    return obj.state if isinstance(obj, Record) else None


__all__ = ["ALLOC_FACTOR", "DTYPE_NAMES", "FOREIGN_RECORDS", "MAX_DEPTH", "PickleLimitError",
           "Record", "RestrictedUnpickler", "UnsafePickleError", "alloc_limit", "check_result",
           "load_pickle", "loads_pickle", "record_state"]
