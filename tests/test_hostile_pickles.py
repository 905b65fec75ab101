"""Hostile pickles: each payload is built here, imported by ``merc data import`` in a subprocess,
and must end with exit 2 and one stderr line naming the file - no signal, no traceback.

Several are pickles built only from allow-listed names that crashed or exhausted the old loader
(issue 10): a forged ``numpy.dtype`` state, ``_frombuffer`` with an object dtype, a 200,000-deep
tuple used as a dict key, a 21-byte ``BYTEARRAY8`` of 2 GiB, memo "billion laughs".
"""
from __future__ import annotations

import os
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from merc.data.format import DatasetError
from merc.data.unpickle import PickleLimitError, UnsafePickleError, loads_pickle

PROTO2, PROTO5, STOP = b"\x80\x02", b"\x80\x05", b"."


def G(mod: str, name: str) -> bytes:                       # GLOBAL
    return b"c" + mod.encode() + b"\n" + name.encode() + b"\n"


def U(s: str) -> bytes:                                    # BINUNICODE
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def B(b: bytes) -> bytes:                                  # BINBYTES (protocol 3)
    return b"B" + struct.pack("<I", len(b)) + b


def I(n: int) -> bytes:                                    # LONG1 (any int)
    raw = n.to_bytes((n.bit_length() + 8) // 8 or 1, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw


def T(*parts: bytes) -> bytes:                             # MARK ... TUPLE
    return b"(" + b"".join(parts) + b"t"


NONE, TRUE, FALSE = b"N", b"\x88", b"\x89"


def dtype(name: str, state: bytes | None = None) -> bytes:
    d = G("numpy", "dtype") + T(U(name), FALSE, TRUE) + b"R"
    return d + (state + b"b" if state is not None else b"")


def dstate(order="<", names=NONE, fields=NONE, elsize=-1, align=-1, flags=0) -> bytes:
    return T(I(3), U(order), NONE, names, fields, I(elsize), I(align), I(flags))


def reconstruct() -> bytes:
    return G("numpy._core.multiarray", "_reconstruct") + \
        T(G("numpy", "ndarray"), T(I(0)), B(b"b")) + b"R"


def nested_tuple_key(depth: int) -> bytes:
    return PROTO2 + b"}" + NONE + b"\x85" * depth + NONE + b"s" + STOP


def laughs(levels: int, as_tuple: bool) -> bytes:
    body = U("lol")
    for _ in range(levels):
        body += b"q\x00" + (b"h\x00\x86" if as_tuple else b"0(h\x00h\x00l")
    return PROTO2 + (b"}" + body + NONE + b"s" if as_tuple else body) + STOP


class _System:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


PAYLOADS = {
    # numpy dtype BUILD with forged fields / object flags: bytes of the file as object pointers
    "dtype-forged-fields": PROTO2 + dtype("f8", dstate("|", T(U("a")), b"}" + U("a") +
                                                       T(dtype("f8"), I(0)) + b"s", 8, 1, 63))
                           + STOP,
    "dtype-object-flags": PROTO2 + dtype("f8", dstate(flags=63)) + STOP,
    "dtype-field-offset-outside-item": PROTO2 + dtype("V8", dstate("|", T(U("x")), b"}" + U("x")
                                                                   + T(dtype("f8"), I(1 << 20))
                                                                   + b"s", 8)) + STOP,
    "dtype-object-name": PROTO2 + dtype("O") + STOP,
    # _frombuffer with a file-chosen dtype: segfault at 0x4141... with the old loader
    "frombuffer-object-dtype": PROTO5 + G("numpy._core.numeric", "_frombuffer") +
    T(B(b"A" * 16), dtype("O8"), T(I(2)), U("C")) + b"R" + STOP,
    "frombuffer-dtype-as-string": PROTO5 + G("numpy._core.numeric", "_frombuffer") +
    T(B(b"A" * 16), U("O"), T(I(2)), U("C")) + b"R" + STOP,
    "frombuffer-shape-mismatch": PROTO5 + G("numpy._core.numeric", "_frombuffer") +
    T(B(b"A" * 16), dtype("f8"), T(I(1 << 40)), U("C")) + b"R" + STOP,
    "array-object-state": PROTO2 + reconstruct() +
    T(I(1), T(I(1)), dtype("O8"), FALSE, b"]" + G("os", "getcwd") + b"a") + b"b" + STOP,
    "array-length-mismatch": PROTO2 + reconstruct() +
    T(I(1), T(I(1 << 40)), dtype("f8"), FALSE, B(b"\0" * 8)) + b"b" + STOP,
    "array-negative-shape": PROTO2 + reconstruct() +
    T(I(1), T(I(-1)), dtype("f8"), FALSE, B(b"")) + b"b" + STOP,
    "array-built-twice": PROTO2 + reconstruct() + b"q\x01" +
    T(I(1), T(I(1)), dtype("f8"), FALSE, B(b"\0" * 8)) + b"b0h\x01" +
    T(I(1), T(I(4)), dtype("f8"), FALSE, B(b"\0" * 8)) + b"b" + STOP,
    "scalar-wrong-length": PROTO2 + G("numpy._core.multiarray", "scalar") +
    T(dtype("f8"), B(b"ab")) + b"R" + STOP,
    # nesting and allocation bounds
    "tuple-200000-deep-as-dict-key": nested_tuple_key(200_000),
    "list-200000-deep": PROTO2 + b"]" * 200_000 + b"a" * 199_999 + STOP,
    "bytearray8-2GiB-in-21-bytes": PROTO5 + b"\x96" + struct.pack("<Q", 1 << 31) + STOP,
    "bytearray-of-int": PROTO2 + G("builtins", "bytearray") + T(I(1 << 31)) + b"R" + STOP,
    "billion-laughs-tuple-key": laughs(64, as_tuple=True),
    "billion-laughs-lists": laughs(64, as_tuple=False),
    "reference-cycle": PROTO2 + b"]q\x00h\x00a" + STOP,
    # opcodes and globals
    "os-system": pickle.dumps(_System(), protocol=2),
    "getattr-chain": b"cbuiltins\ngetattr\n(cos\nsystem\nS'x'\ntR(S'touch PWNED'\ntR.",
    "build-setattr-on-dict": PROTO2 + b"}" + b"}" + U("__class__") + U("x") + b"s" + b"b" + STOP,
    "append-on-a-string": PROTO2 + U("s") + NONE + b"a" + STOP,
    "reconstructor-of-dict": PROTO2 + G("copyreg", "_reconstructor") +
    T(G("builtins", "dict"), G("builtins", "object"), NONE) + b"R" + STOP,
    "defaultdict-bytearray-factory": PROTO2 + G("collections", "defaultdict") +
    T(G("builtins", "bytearray")) + b"R" + STOP,
    "global-as-value": PROTO2 + b"]" + G("builtins", "list") + b"a" + STOP,
    "extension-opcode": PROTO2 + b"\x82\x01" + STOP,
    "persistent-id": b"P0\n.",
    "int-of-a-million-digits": b"I" + b"9" * 1_000_000 + b"\n.",
    "truncated": pickle.dumps({"a": np.arange(100.0)}, protocol=2)[:-40],
    "garbage": b"this is not a pickle at all",
    "empty-file": b"",
    "wrong-layout-list": pickle.dumps([1, 2, 3], protocol=2),
    "9tuple-of-wrong-types": pickle.dumps((1, 2, 3, 4, 5, 6, 7, "a", None), protocol=2),
}


@pytest.mark.parametrize("name", sorted(PAYLOADS))
def test_hostile_pickle_exit_2_one_line(tmp_path, name):
    path = tmp_path / f"{name}.pkl"
    path.write_bytes(PAYLOADS[name])
    env = dict(os.environ, MERC_NO_COLOR="1")
    r = subprocess.run([sys.executable, "-m", "merc.cli", "data", "import", "--format",
                        "iemocap-9tuple", str(path), str(tmp_path / "out")],
                       capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])   # < 0 would be a signal
    assert len(lines) == 1 and path.name in lines[0], r.stderr[-2000:]
    assert "Traceback" not in r.stderr and not (tmp_path / "PWNED").exists()


def test_corpus_is_large_enough():
    assert len(PAYLOADS) >= 25


@pytest.mark.parametrize("name,err,match", [
    ("dtype-forged-fields", UnsafePickleError, "fields, subarrays"),
    ("frombuffer-object-dtype", UnsafePickleError, "only plain dtypes"),
    ("tuple-200000-deep-as-dict-key", PickleLimitError, "nested more than"),
    ("list-200000-deep", PickleLimitError, "nested more than"),
    ("bytearray8-2GiB-in-21-bytes", DatasetError, "only .* bytes are left"),
    ("billion-laughs-tuple-key", PickleLimitError, "expands to more than"),
    ("billion-laughs-lists", PickleLimitError, "expands to more than"),
    ("reference-cycle", PickleLimitError, "cycle"),
    ("array-built-twice", UnsafePickleError, "already built"),
])
def test_refusal_reason(name, err, match):
    with pytest.raises(err, match=match):
        loads_pickle(PAYLOADS[name], source=f"{name}.pkl")


def test_alloc_limit_is_relative_to_file_size_and_configurable(monkeypatch):
    """A 4 MiB array in a ~4 MiB pickle loads; with the factor at 0 and the floor lowered, the
    same file is refused as too large."""
    import merc.data.unpickle as up
    blob = pickle.dumps([np.zeros(1 << 19)], protocol=4)
    assert loads_pickle(blob)[0].shape == (1 << 19,)
    monkeypatch.setattr(up, "ALLOC_FLOOR", 1 << 20)
    monkeypatch.setenv("MERC_PICKLE_ALLOC_FACTOR", "0.5")
    with pytest.raises(PickleLimitError, match="MERC_PICKLE_ALLOC_FACTOR"):
        loads_pickle(blob)
    monkeypatch.setenv("MERC_PICKLE_ALLOC_FACTOR", "2")
    assert loads_pickle(blob)[0].nbytes == 1 << 22


def test_big_endian_and_fortran_arrays_load():
    a = np.arange(6, dtype=">f4").reshape(2, 3)
    f = np.asfortranarray(np.arange(6.0).reshape(2, 3))
    for proto in (2, 4, 5):
        back = loads_pickle(pickle.dumps({"a": a, "f": f, "u": np.array(["ab", "c"])},
                                         protocol=proto))
        np.testing.assert_array_equal(back["a"], a)
        assert back["a"].dtype.kind == "f" and back["a"].dtype.itemsize == 4  # values equal
        assert back["f"].flags.f_contiguous
        assert back["u"].tolist() == ["ab", "c"]
