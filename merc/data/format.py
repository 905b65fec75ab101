"""The canonical on-disk dataset format: a JSON manifest plus memory-mappable ``.npy`` arrays.

Layout of a dataset directory::

    manifest.json                 name, family, classes, label names, modality dims, speakers,
                                  splits (dialogue / utterance counts), provenance, IEMOCAP-4
                                  definition, fingerprint
    <split>/dialogues.json        dialogue ids, in order
    <split>/offsets.npy           int64 [D+1]: utterances of dialogue d are rows offsets[d]:offsets[d+1]
    <split>/<modality>.npy        float32 [U, dim] per modality (audio, text, visual)
    <split>/speakers.npy          int64 [U], speaker ids in [0, num_speakers)
    <split>/labels.npy            int64 [U], class ids; -100 marks an unlabelled utterance
    <split>/labels_<name>.npy     optional extra label sets (e.g. MELD sentiment), int64 or float32
    <split>/text.jsonl            optional: one JSON string per utterance (needed to featurize)

Everything is plain numpy or JSON: no pickles are ever written or read here. Arrays are opened
with ``mmap_mode="r"`` so that loading is instant and many Ray trials on a node share pages.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

MODALITIES = ("audio", "text", "visual")  # canonical order; letters A, T, V
LETTER_TO_MODALITY = {"A": "audio", "T": "text", "V": "visual"}
#: the modality subsets a run may use (``modalities``)
SUBSETS = ("A", "T", "V", "AT", "AV", "TV", "ATV")
MODALITY_TO_LETTER = {v: k for k, v in LETTER_TO_MODALITY.items()}
SPLITS = ("train", "valid", "test")
IGNORE_INDEX = -100

#: the two incompatible "IEMOCAP-4" definitions (reference_impls.md §0.3)
IEMOCAP4_DEFINITIONS = {
    "iemocap4-kept": "COGMEN/CORECT: hap, sad, neu, ang kept as in the 6-way file; exc and fru "
                     "utterances dropped from the dialogues",
    "iemocap4-merged": "GCNet/Mi-CGA: hap and exc merged into class 0 (happy); fru dropped",
}


class DatasetError(ValueError):
    """A problem with a dataset directory or source file: names the file, key, expected, found."""


class SplitInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dialogues: int
    utterances: int


class Manifest(BaseModel):
    """What a dataset directory holds; written as ``manifest.json``."""

    model_config = ConfigDict(extra="forbid")
    format_version: int = 1
    name: str
    family: str = Field(description="iemocap6 | iemocap4 | meld | mosei | mosi | other: selects "
                                    "paper defaults")
    num_classes: int
    label_names: list[str]
    modalities: dict[str, int] = Field(description="modality name -> feature dim, canonical order")
    num_speakers: int
    speaker_names: Optional[list[str]] = None
    speaker_scope: str = Field("global", description="'global' ids or 'dialogue' (per-dialogue "
                                                     "order of appearance)")
    splits: dict[str, SplitInfo]
    extra_labels: dict[str, list[str]] = Field(default_factory=dict)
    iemocap4_definition: Optional[str] = None
    validation: str = ""
    has_text: bool = False
    text_encoder: Optional[dict[str, Any]] = None
    provenance: dict[str, Any] = Field(default_factory=dict)
    fingerprint: str = ""


@dataclass
class Dialogue:
    """One conversation in memory: per-modality features, speakers, labels (and optional text)."""

    id: str
    features: dict[str, np.ndarray]
    speakers: np.ndarray
    labels: np.ndarray
    text: Optional[list[str]] = None
    extra_labels: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(len(self.labels))


def _check_dialogue(d: Dialogue, modalities: dict[str, int], where: str) -> None:
    n = len(d.labels)
    if n == 0:
        raise DatasetError(f"{where}: dialogue {d.id!r} has no utterances")
    if len(d.speakers) != n:
        raise DatasetError(f"{where}: dialogue {d.id!r}: {len(d.speakers)} speakers for {n} labels")
    for mod, dim in modalities.items():
        if mod not in d.features:
            raise DatasetError(f"{where}: dialogue {d.id!r} lacks modality {mod!r}")
        shape = np.shape(d.features[mod])
        if shape != (n, dim):
            raise DatasetError(f"{where}: dialogue {d.id!r} modality {mod!r}: expected shape "
                               f"({n}, {dim}), found {shape}")
    if d.text is not None and len(d.text) != n:
        raise DatasetError(f"{where}: dialogue {d.id!r}: {len(d.text)} texts for {n} labels")


def write_dataset(out: str | os.PathLike, manifest: Manifest,
                  splits: dict[str, list[Dialogue]]) -> Manifest:
    """Write dialogues per split in the canonical format; returns the manifest with counts and
    fingerprint filled in. ``manifest.splits`` is recomputed from the data."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    infos = {}
    for split, dialogues in splits.items():
        if split not in SPLITS:
            raise DatasetError(f"{out}: unknown split {split!r}; expected one of {SPLITS}")
        sdir = out / split
        sdir.mkdir(exist_ok=True)
        for d in dialogues:
            _check_dialogue(d, manifest.modalities, f"{out}/{split}")
        lengths = np.array([len(d) for d in dialogues], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        np.save(sdir / "offsets.npy", offsets)
        for mod, dim in manifest.modalities.items():
            arr = (np.concatenate([np.asarray(d.features[mod], np.float32) for d in dialogues])
                   if dialogues else np.zeros((0, dim), np.float32))
            np.save(sdir / f"{mod}.npy", arr)
        cat = (lambda xs, dt: np.concatenate([np.asarray(x, dt) for x in xs]) if xs
               else np.zeros(0, dt))
        speakers = cat([d.speakers for d in dialogues], np.int64)
        labels = cat([d.labels for d in dialogues], np.int64)
        check_ranges(speakers, labels, manifest, f"{out}/{split}", f"{out}/{split}")
        np.save(sdir / "speakers.npy", speakers)
        np.save(sdir / "labels.npy", labels)
        for name in manifest.extra_labels:
            vals = [d.extra_labels[name] for d in dialogues]
            dt = np.float32 if any(np.asarray(v).dtype.kind == "f" for v in vals) else np.int64
            np.save(sdir / f"labels_{name}.npy", cat(vals, dt))
        (sdir / "dialogues.json").write_text(json.dumps([d.id for d in dialogues]))
        if manifest.has_text:
            with open(sdir / "text.jsonl", "w", encoding="utf-8") as f:
                for d in dialogues:
                    for t in d.text or [""] * len(d):
                        f.write(json.dumps(t, ensure_ascii=False) + "\n")
        infos[split] = SplitInfo(dialogues=len(dialogues), utterances=int(offsets[-1]))
    manifest = manifest.model_copy(update={"splits": infos})
    manifest = manifest.model_copy(update={"fingerprint": fingerprint(out, manifest)})
    (out / "manifest.json").write_text(manifest.model_dump_json(indent=2))
    return manifest


def fingerprint(root: Path, manifest: Manifest) -> str:
    """sha256 over the manifest's content fields and every array file (order-stable)."""
    h = hashlib.sha256()
    h.update(manifest.model_dump_json(exclude={"fingerprint", "provenance"}).encode())
    for split in sorted(manifest.splits):
        sdir = safe_join(Path(root), split, what="split")
        if not sdir.is_dir():
            raise DatasetError(f"{sdir}: missing split directory")
        for p in sorted(sdir.iterdir()):
            if not p.is_file():
                continue
            h.update(p.name.encode())
            with open(p, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()[:16]


def _one_line_validation(err: Exception) -> str:
    errors = getattr(err, "errors", None)
    if callable(errors):
        try:
            return "; ".join(f"{'.'.join(str(x) for x in e.get('loc', ())) or '(top)'}: "
                             f"{e.get('msg')}" for e in errors()[:5])
        except Exception:  # noqa: BLE001 - fall back to the plain text
            pass
    return " ".join(str(err).split())[:300]


def safe_join(root: Path, *parts: str, what: str = "path") -> Path:
    """``root / parts`` when it stays inside ``root`` (lexically, after ``..`` is resolved);
    a ``../`` or absolute part from a manifest or a source file is a DatasetError."""
    base = os.path.normpath(os.path.abspath(root))
    target = os.path.normpath(os.path.join(base, *[str(p) for p in parts]))
    if os.path.isabs(str(parts[-1]) if parts else "") or \
            os.path.commonpath([base, target]) != base or target == base:
        raise DatasetError(f"{root}: {what} {'/'.join(str(p) for p in parts)!r} resolves outside "
                           f"the directory (to {target}); refused")
    return Path(target)


def check_manifest(m: Manifest, path: Path) -> Manifest:
    """Names that become file names are plain names; counts and dims agree."""
    def fail(what: str) -> None:
        raise DatasetError(f"{path}: {what}")
    for s in m.splits:
        if s not in SPLITS:
            fail(f"splits: unknown split {s!r}; expected names from {list(SPLITS)}")
    for mod, dim in m.modalities.items():
        if mod not in MODALITIES:
            fail(f"modalities: unknown modality {mod!r}; expected names from {list(MODALITIES)}")
        if not isinstance(dim, int) or dim < 1:
            fail(f"modalities: {mod} dim must be a positive integer, found {dim!r}")
    for name in m.extra_labels:
        if not name or os.sep in name or "/" in name or name.startswith(".") or \
                not all(c.isalnum() or c in "_-" for c in name):
            fail(f"extra_labels: {name!r} is not a plain name (letters, digits, _ and -)")
    if m.num_classes < 1 or len(m.label_names) != m.num_classes:
        fail(f"num_classes={m.num_classes} with {len(m.label_names)} label_names; expected "
             f"num_classes >= 1 names")
    if m.num_speakers < 1:
        fail(f"num_speakers must be >= 1, found {m.num_speakers}")
    if m.speaker_names is not None and len(m.speaker_names) != m.num_speakers:
        fail(f"{len(m.speaker_names)} speaker_names for num_speakers={m.num_speakers}")
    for s, info in m.splits.items():
        if info.dialogues < 0 or info.utterances < 0:
            fail(f"splits.{s}: negative counts {info}")
    return m


def read_manifest(root: str | os.PathLike) -> Manifest:
    path = Path(root) / "manifest.json"
    if not path.is_file():
        raise DatasetError(f"{root}: not a merc dataset directory (expected {path}); create one "
                           f"with `merc data synth` or `merc data import`")
    try:
        m = Manifest.model_validate_json(path.read_text())
    except Exception as err:  # pydantic ValidationError or JSON error
        raise DatasetError(f"{path}: invalid manifest: {_one_line_validation(err)}") from None
    return check_manifest(m, path)


@dataclass
class SplitArrays:
    """One split, memory-mapped: arrays indexed by utterance, ``offsets`` by dialogue."""

    name: str
    dialogue_ids: list[str]
    offsets: np.ndarray
    features: dict[str, np.ndarray]
    speakers: np.ndarray
    labels: np.ndarray
    extra_labels: dict[str, np.ndarray]
    root: Path

    @property
    def num_dialogues(self) -> int:
        return len(self.dialogue_ids)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def dialogue(self, i: int) -> Dialogue:
        s, e = int(self.offsets[i]), int(self.offsets[i + 1])
        return Dialogue(self.dialogue_ids[i], {m: np.asarray(a[s:e]) for m, a in self.features.items()},
                        np.asarray(self.speakers[s:e]), np.asarray(self.labels[s:e]),
                        extra_labels={k: np.asarray(v[s:e]) for k, v in self.extra_labels.items()})

    def texts(self) -> list[str]:
        path = self.root / self.name / "text.jsonl"
        if not path.is_file():
            raise DatasetError(f"{path}: this dataset keeps no utterance text")
        with open(path, encoding="utf-8") as f:
            return [json.loads(line) for line in f]


def _load(path: Path, mmap: bool) -> np.ndarray:
    if not path.is_file():
        raise DatasetError(f"{path}: missing array file")
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except Exception as err:  # noqa: BLE001 - truncated / not .npy / object array
        raise DatasetError(f"{path}: not a readable .npy array ({type(err).__name__}: "
                           f"{' '.join(str(err).split())[:200]})") from None


def _int_vector(arr: np.ndarray, path: Path, what: str) -> np.ndarray:
    if arr.ndim != 1 or arr.dtype.kind not in "iu":
        raise DatasetError(f"{path}: {what} must be a 1-D integer array, found shape "
                           f"{arr.shape} dtype {arr.dtype}")
    return arr


def read_split(root: str | os.PathLike, split: str, manifest: Optional[Manifest] = None,
               mmap: bool = True) -> SplitArrays:
    """One split, memory-mapped, checked for consistency (cheap: no feature values are read):
    offsets start at 0, increase strictly and end at the utterance count; dialogues.json, the
    labels, speakers, features and extra labels agree in length with them and the manifest;
    labels lie in [0, num_classes) or are -100; speakers in [0, num_speakers)."""
    root = Path(root)
    manifest = manifest or read_manifest(root)
    if split not in manifest.splits:
        raise DatasetError(f"{root}: no split {split!r}; it has {sorted(manifest.splits)}")
    sdir = safe_join(root, split, what="split")
    info = manifest.splits[split]
    dpath = sdir / "dialogues.json"
    try:
        ids = json.loads(dpath.read_text())
    except FileNotFoundError:
        raise DatasetError(f"{dpath}: missing") from None
    except (OSError, ValueError) as err:
        raise DatasetError(f"{dpath}: not valid JSON ({' '.join(str(err).split())[:200]})") \
            from None
    if not isinstance(ids, list) or not all(isinstance(i, (str, int)) for i in ids):
        raise DatasetError(f"{dpath}: expected a JSON list of dialogue ids, found "
                           f"{type(ids).__name__}")
    ids = [str(i) for i in ids]
    opath = sdir / "offsets.npy"
    offsets = _int_vector(_load(opath, False), opath, "offsets")
    D = len(offsets) - 1
    if D < 0 or offsets[0] != 0 or (D > 0 and not (np.diff(offsets) > 0).all()):
        raise DatasetError(f"{opath}: offsets must start at 0 and increase strictly (every "
                           f"dialogue has an utterance), found {offsets[:8].tolist()}"
                           f"{'...' if len(offsets) > 8 else ''}")
    U = int(offsets[-1]) if D >= 0 else 0
    if len(ids) != D:
        raise DatasetError(f"{dpath}: {len(ids)} dialogue ids, but offsets.npy has {D} "
                           f"dialogues")
    if len(set(ids)) != len(ids):
        raise DatasetError(f"{dpath}: duplicate dialogue ids")
    spath, lpath = sdir / "speakers.npy", sdir / "labels.npy"
    labels = _int_vector(_load(lpath, False), lpath, "labels")
    if len(labels) != U:
        raise DatasetError(f"{opath}: offsets end at utterance {U}, but {lpath.name} holds "
                           f"{len(labels)} utterances")
    if (info.dialogues, info.utterances) != (D, U):
        raise DatasetError(f"{root / 'manifest.json'}: splits.{split} says {info.dialogues} "
                           f"dialogues / {info.utterances} utterances, the arrays hold {D} / {U}")
    feats = {m: _load(safe_join(sdir, f"{m}.npy", what="modality"), mmap)
             for m in manifest.modalities}
    speakers = _int_vector(_load(spath, False), spath, "speakers")
    extra = {}
    for k in manifest.extra_labels:
        epath = safe_join(sdir, f"labels_{k}.npy", what="extra label set")
        extra[k] = _load(epath, False)
        if extra[k].shape[:1] != (U,):
            raise DatasetError(f"{epath}: expected {U} rows (offsets.npy), found shape "
                               f"{extra[k].shape}")
    arrays = SplitArrays(split, ids, offsets, feats, speakers, labels, extra, root)
    for m, dim in manifest.modalities.items():
        shape = arrays.features[m].shape
        if shape != (U, dim):
            raise DatasetError(f"{sdir / (m + '.npy')}: expected shape ({U}, {dim}) "
                               f"per manifest, found {shape}")
        if arrays.features[m].dtype.kind != "f":
            raise DatasetError(f"{sdir / (m + '.npy')}: expected float features, found dtype "
                               f"{arrays.features[m].dtype}")
    for path, arr, what in ((spath, speakers, "speaker ids"), (lpath, labels, "labels")):
        if len(arr) != U:
            raise DatasetError(f"{path}: {len(arr)} {what} for {U} utterances (offsets.npy)")
    check_ranges(speakers, labels, manifest, spath, lpath)
    return arrays


def check_ranges(speakers: np.ndarray, labels: np.ndarray, manifest: "Manifest",
                 speakers_at, labels_at) -> None:
    """Speaker ids in [0, num_speakers); labels in [0, num_classes) or IGNORE_INDEX (on write and
    on open: one rule, the error names where the bad value is)."""
    bad = speakers[(speakers < 0) | (speakers >= manifest.num_speakers)]
    if len(bad):
        raise DatasetError(f"{speakers_at}: speaker ids must lie in [0, {manifest.num_speakers}) "
                           f"(manifest num_speakers), found {int(bad[0])}")
    bad = labels[(labels != IGNORE_INDEX) & ((labels < 0) | (labels >= manifest.num_classes))]
    if len(bad):
        raise DatasetError(f"{labels_at}: labels must lie in [0, {manifest.num_classes}) or be "
                           f"{IGNORE_INDEX}, found {int(bad[0])}")


def check_usable(root: Path, splits: dict[str, SplitArrays]) -> None:
    """train, valid and test each exist with a dialogue and a labelled utterance: training,
    selection (valid) and the report (test) each need one."""
    for s in SPLITS:
        if s not in splits:
            raise DatasetError(f"{Path(root) / 'manifest.json'}: split {s!r} is missing (found "
                               f"{sorted(splits)})")
        a = splits[s]
        if a.num_dialogues == 0 or not (np.asarray(a.labels) != IGNORE_INDEX).any():
            raise DatasetError(f"{Path(root) / s}: the {s} split has {a.num_dialogues} dialogues "
                               f"and no labelled utterance; training, selection (valid) and the "
                               f"report (test) each need one")


STAMP = ".merc-verified.json"


def _stat_stamp(root: Path, manifest: Manifest) -> dict:
    out = {}
    for split in sorted(manifest.splits):
        sdir = safe_join(root, split, what="split")
        if sdir.is_dir():
            for p in sorted(sdir.iterdir()):
                st = p.stat()
                out[f"{split}/{p.name}"] = [st.st_size, st.st_mtime_ns]
    return out


def verify_fingerprint(root: str | os.PathLike, manifest: Optional[Manifest] = None,
                       full: bool = False) -> str:
    """Check the manifest's fingerprint against the files; returns how it was checked.

    Cheap at open: when ``.merc-verified.json`` (written after the last full check) lists the
    same size and mtime for every split file, nothing is read. Otherwise (a changed, added or
    removed file, or ``full=True`` as in ``merc data inspect --verify``) every file is hashed
    again and a mismatch is a DatasetError; a match refreshes the stamp (when writable)."""
    root = Path(root)
    manifest = manifest or read_manifest(root)
    if not manifest.fingerprint:
        return "no fingerprint recorded"
    stamp_path = root / STAMP
    stat = _stat_stamp(root, manifest)
    if not full:
        try:
            stamp = json.loads(stamp_path.read_text())
            if stamp.get("fingerprint") == manifest.fingerprint and stamp.get("files") == stat:
                return "unchanged since the last full check (sizes and mtimes)"
        except (OSError, ValueError, AttributeError):
            pass
    found = fingerprint(root, manifest)
    if found != manifest.fingerprint:
        raise DatasetError(f"{root / 'manifest.json'}: fingerprint {manifest.fingerprint} does not "
                           f"match the files ({found}): a file under "
                           f"{', '.join(sorted(manifest.splits))} changed after the dataset was "
                           f"written; re-create or re-import it")
    try:
        tmp = root / f"{STAMP}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps({"fingerprint": found, "files": stat}))
        os.replace(tmp, stamp_path)
    except OSError:
        pass  # a read-only dataset: the next open hashes again
    return "hashed in full"


def iter_dialogues(arrays: SplitArrays) -> Iterable[Dialogue]:
    for i in range(arrays.num_dialogues):
        yield arrays.dialogue(i)


def verify_dataset(root: str | os.PathLike) -> str:
    """The full check of ``merc data inspect --verify``: every file hashed against the manifest
    fingerprint, every split's consistency (:func:`read_split`) and every feature value finite.
    Returns a one-line summary; raises DatasetError naming the first problem."""
    root = Path(root)
    manifest = read_manifest(root)
    splits = {s: read_split(root, s, manifest) for s in manifest.splits}
    check_usable(root, splits)
    how = verify_fingerprint(root, manifest, full=True)
    rows = 0
    for split, arrays in splits.items():
        for m, arr in arrays.features.items():
            for s in range(0, len(arr), 1 << 16):
                if not np.isfinite(arr[s:s + (1 << 16)]).all():
                    raise DatasetError(f"{root / split / (m + '.npy')}: features contain NaN or "
                                       f"inf (rows from {s})")
            rows += len(arr)
    return (f"fingerprint {manifest.fingerprint} {how}; {len(manifest.splits)} splits "
            f"consistent; {rows} feature rows finite")


def check_dataset(root: str | os.PathLike) -> Manifest:
    """The checks of opening ``root`` for training, without building anything: manifest, every
    split's consistency, usable splits, fingerprint (cheap when unchanged). A sweep driver calls
    it before Ray starts, so that a broken dataset is one message, not N errored trials."""
    root = Path(root)
    manifest = read_manifest(root)
    check_usable(root, {s: read_split(root, s, manifest) for s in manifest.splits})
    verify_fingerprint(root, manifest)
    return manifest
