"""Data that reaches every Ray node: the sweep's dataset, shipped once per node.

The driver resolves the dataset (``synthetic:<preset>``, a directory, ``file://`` or an
``s3://``/``gs://`` URI copied to its cache) into a *local* directory. That path means nothing on
another node: on a cluster whose head runs no trials (``cluster/gpu.yaml``: ``CPU: 0``) every
trial would open a directory that does not exist there. So the driver puts the dataset's files
(a JSON manifest and ``.npy`` arrays, :mod:`merc.data.format`) into Ray's object store once, and
hands the trials a small :class:`DataHandle` holding that object's reference and the dataset's
fingerprint. On each node the first trial that needs the data materialises it under
``<cache>/shipped/<fingerprint>`` (a file lock keeps concurrent trials of the node to one copy;
the copy is written to a temporary directory, checked against the fingerprint and renamed into
place), and every later trial of that node opens the same memory-mapped files. A node that sees
the driver's directory itself with the same fingerprint (the driver's node, a shared file system)
uses it as is and fetches nothing.

Why the object store and not the URI per node: one mechanism for every kind of dataset (local
paths, synthetic specs, remote URIs alike), no storage credentials needed on the workers for the
data, and Ray moves the bytes to a node once however many trials run there.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

MANIFEST = "manifest.json"


class DataShippingError(RuntimeError):
    """The dataset could not be made available on this node."""


def local_path(uri: str) -> Optional[Path]:
    """The local path of a path or ``file://`` URI; None for other URIs (``s3://`` ...)."""
    s = str(uri)
    if s.startswith("file://"):
        p = urllib.parse.urlparse(s)
        if p.netloc not in ("", "localhost"):
            raise DataShippingError(f"--data-dir {s}: a file:// URI names a local path "
                                    f"(file:///abs/path), found host {p.netloc!r}")
        return Path(urllib.parse.unquote(p.path))
    if "://" in s:
        return None
    return Path(s).expanduser()


@dataclass
class DataHandle:
    """What a trial needs to open the sweep's dataset on whatever node it runs.

    ``files`` is an ObjectRef to ``{relative path: uint8 array}`` (None outside Ray, e.g. unit
    tests that open ``driver_root`` directly)."""

    spec: str
    fingerprint: str
    driver_root: str
    files: Any = None
    nbytes: int = 0
    names: list = field(default_factory=list)


def dataset_files(root: Path) -> list[str]:
    """The files of a canonical dataset, relative to ``root`` (manifest + each split's files)."""
    from merc.data.format import read_manifest
    man = read_manifest(root)
    out = [MANIFEST]
    for split in sorted(man.splits):
        sdir = root / split
        out += [f"{split}/{p.name}" for p in sorted(sdir.iterdir()) if p.is_file()]
    return out


def ship(spec: str, root: str | os.PathLike) -> DataHandle:
    """Driver side: put the dataset at ``root`` into the object store (Ray must be initialised)."""
    import numpy as np
    import ray
    from merc.data.format import read_manifest
    root = Path(root)
    man = read_manifest(root)
    names = dataset_files(root)
    payload = {n: np.fromfile(root / n, dtype=np.uint8) for n in names}
    nbytes = int(sum(a.nbytes for a in payload.values()))
    return DataHandle(spec, man.fingerprint, str(root), ray.put(payload), nbytes, names)


def _fingerprint_at(root: Path) -> Optional[str]:
    from merc.data.format import read_manifest
    try:
        return read_manifest(root).fingerprint
    except Exception:
        return None


@contextlib.contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def node_cache() -> Path:
    from merc.data.synthetic import cache_root
    return cache_root() / "shipped"


def node_root(handle: DataHandle) -> Path:
    """Trial side: a directory on this node holding the handle's dataset (see the module doc)."""
    own = Path(handle.driver_root)
    if _fingerprint_at(own) == handle.fingerprint:
        return own
    target = node_cache() / handle.fingerprint
    if _fingerprint_at(target) == handle.fingerprint:
        return target
    if handle.files is None:
        raise DataShippingError(f"dataset {handle.spec}: {own} is not readable on this node and "
                                f"the sweep shipped no copy")
    with _locked(node_cache() / f".{handle.fingerprint}.lock"):
        if _fingerprint_at(target) == handle.fingerprint:   # another trial of this node won
            return target
        _materialise(handle, target)
    return target


def _materialise(handle: DataHandle, target: Path) -> None:
    import ray
    from merc.data.format import fingerprint, read_manifest
    payload = ray.get(handle.files)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{handle.fingerprint}-"))
    try:
        for name, arr in payload.items():
            if Path(name).is_absolute() or ".." in Path(name).parts:
                raise DataShippingError(f"dataset {handle.spec}: bad file name {name!r}")
            dest = tmp / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            arr.tofile(dest)
        found = fingerprint(tmp, read_manifest(tmp))
        if found != handle.fingerprint:
            raise DataShippingError(f"dataset {handle.spec}: the copy on this node has "
                                    f"fingerprint {found}, expected {handle.fingerprint} (the "
                                    f"driver's manifest); was {handle.driver_root} modified "
                                    f"during the sweep?")
        if target.exists():                 # a stale or partial copy from an earlier crash
            shutil.rmtree(target)
        os.rename(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
