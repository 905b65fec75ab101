"""The restricted unpickler admits data and refuses code (DESIGN.md: safe input)."""
from __future__ import annotations

import collections
import os
import pickle
import sys
import types

import numpy as np
import pytest

from merc.data.format import DatasetError
from merc.data.unpickle import Record, UnsafePickleError, load_pickle, loads_pickle


class _System:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


class _Exec:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (exec, (f"open({str(self.target)!r}, 'w').write('x')",))


class _Open:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (str(self.target), "w"))


class _Eval:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (eval, (f"__import__('pathlib').Path({str(self.target)!r}).touch()",))


def _getattr_chain(target) -> bytes:
    """builtins.getattr(os module?) -> system: hand-written protocol-0 pickle."""
    return (b"cbuiltins\ngetattr\n(cos\nsystem\nS'x'\ntR(S'touch " + str(target).encode() +
            b"'\ntR.")


@pytest.mark.parametrize("maker", [_System, _Exec, _Open, _Eval])
@pytest.mark.parametrize("proto", [0, 2, 4])
def test_malicious_pickle_is_refused_and_has_no_effect(tmp_path, maker, proto):
    target = tmp_path / "PWNED"
    path = tmp_path / "evil.pkl"
    payload = {"trainVid": [1, 2], "x": maker(target)}
    path.write_bytes(pickle.dumps(payload, protocol=proto))
    with pytest.raises(UnsafePickleError) as err:
        load_pickle(path)
    msg = str(err.value)
    assert str(path) in msg and "refused" in msg
    assert not target.exists()


def test_error_names_module_class_and_file(tmp_path):
    target = tmp_path / "PWNED"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(_System(target), protocol=2))
    with pytest.raises(DatasetError, match=r"(posix|nt|os)\.system") as err:
        load_pickle(path)
    assert "evil.pkl" in str(err.value)
    assert not target.exists()


def test_handwritten_getattr_and_subprocess_refused(tmp_path):
    target = tmp_path / "PWNED"
    with pytest.raises(UnsafePickleError, match="builtins.getattr"):
        loads_pickle(_getattr_chain(target))
    sub = b"csubprocess\nPopen\n((S'touch'\nS'" + str(target).encode() + b"'\nltR."
    with pytest.raises(UnsafePickleError, match="subprocess.Popen"):
        loads_pickle(sub)
    py2 = b"c__builtin__\neval\n(S'1'\ntR."  # Python-2 spelling is mapped, then refused
    with pytest.raises(UnsafePickleError, match="eval"):
        loads_pickle(py2)
    assert not target.exists()


def test_persistent_id_refused():
    data = b"P0\n."  # PERSID
    with pytest.raises(UnsafePickleError, match="persistent"):
        loads_pickle(data)


@pytest.mark.parametrize("proto", [0, 2, 4, 5])
def test_data_round_trips(proto):
    obj = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": {1, 2}, "c": frozenset("x"),
           "d": b"\x00\xff", "e": collections.OrderedDict(k=[1.5, None]),
           "f": collections.defaultdict(list, {"z": [1]}), "g": np.float64(2.5),
           "h": (1, "s", True, 3 + 1j), "i": np.array(["M", "F"])}
    back = loads_pickle(pickle.dumps(obj, protocol=proto))
    np.testing.assert_array_equal(back["a"], obj["a"])
    assert back["b"] == {1, 2} and back["c"] == obj["c"] and back["d"] == obj["d"]
    assert back["e"] == obj["e"] and back["f"]["z"] == [1] and back["g"] == 2.5
    assert back["h"] == obj["h"] and back["i"].tolist() == ["M", "F"]


def test_foreign_sample_becomes_record(monkeypatch):
    mod = types.ModuleType("cogmen.Sample")

    class Sample:
        def __init__(self, vid, speaker):
            self.vid, self.speaker = vid, speaker

    Sample.__module__ = "cogmen.Sample"
    Sample.__qualname__ = "Sample"
    mod.Sample = Sample
    pkg = types.ModuleType("cogmen")
    pkg.Sample = mod
    monkeypatch.setitem(sys.modules, "cogmen", pkg)
    monkeypatch.setitem(sys.modules, "cogmen.Sample", mod)
    blobs = [pickle.dumps([Sample("v1", ["M"])], protocol=p) for p in (0, 2, 4)]
    monkeypatch.delitem(sys.modules, "cogmen")
    monkeypatch.delitem(sys.modules, "cogmen.Sample")
    for blob in blobs:
        (rec,) = loads_pickle(blob)
        assert isinstance(rec, Record) and rec.origin == "cogmen.Sample.Sample"
        assert rec.state == {"vid": "v1", "speaker": ["M"]} and rec.vid == "v1"
    assert "cogmen" not in sys.modules


def test_other_classes_refused():
    blob = pickle.dumps(_Open("x"), protocol=2)  # class with __reduce__ -> builtins.open
    with pytest.raises(UnsafePickleError, match="io.open|builtins.open"):
        loads_pickle(blob, source="thing.pkl")
    # a plain class of an unknown module is refused by name, not imported
    blob = b"\x80\x02cmymod.sub\nKlass\nq\x00)\x81q\x01}q\x02b."
    with pytest.raises(UnsafePickleError, match=r"mymod\.sub\.Klass.*") as err:
        loads_pickle(blob, source="thing.pkl")
    assert "thing.pkl" in str(err.value)


def test_garbage_is_a_dataset_error(tmp_path):
    p = tmp_path / "x.pkl"
    p.write_bytes(b"not a pickle")
    with pytest.raises(DatasetError, match="x.pkl"):
        load_pickle(p)
    with pytest.raises(DatasetError, match="not found"):
        load_pickle(tmp_path / "missing.pkl")


def test_numpy1_module_names_accepted():
    """Files written by numpy 1.x name numpy.core.multiarray; numpy 2 writes numpy._core."""
    a = np.arange(4, dtype=np.float64).reshape(2, 2)
    blob = pickle.dumps({"x": a, "s": np.int64(3)}, protocol=2)
    old = blob.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert old != blob and b"numpy._core" not in old
    back = loads_pickle(old)
    np.testing.assert_array_equal(back["x"], a)
    assert back["s"] == 3


def test_python2_numpy_pickle_loads():
    """The public IEMOCAP/MELD files are Python-2 numpy pickles: `numpy.core` names, dtype args
    as ints, the dtype char and the raw data as (latin-1) byte strings."""
    import struct
    raw = np.arange(3, dtype="<f8").tobytes()

    def s(b: bytes) -> bytes:  # BINSTRING (Python 2 str)
        return b"T" + struct.pack("<i", len(b)) + b

    blob = (b"\x80\x02}q\x00U\x01xcnumpy.core.multiarray\n_reconstruct\nq\x01cnumpy\nndarray\n"
            b"q\x02K\x00\x85U\x01b\x87Rq\x03(K\x01K\x03\x85cnumpy\ndtype\nq\x04U\x02f8K\x00K\x01"
            b"\x87R(K\x03U\x01<NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89" + s(raw) +
            b"tbs.")
    back = loads_pickle(blob)
    np.testing.assert_array_equal(back["x"], np.arange(3.0))
    assert back["x"].flags.writeable
