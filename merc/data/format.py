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
        if len(speakers) and (speakers.min() < 0 or speakers.max() >= manifest.num_speakers):
            raise DatasetError(f"{out}/{split}: speaker ids must lie in [0, {manifest.num_speakers})"
                               f", found [{speakers.min()}, {speakers.max()}]")
        bad = labels[(labels != IGNORE_INDEX) & ((labels < 0) | (labels >= manifest.num_classes))]
        if len(bad):
            raise DatasetError(f"{out}/{split}: labels must lie in [0, {manifest.num_classes}) or "
                               f"be {IGNORE_INDEX}, found {int(bad[0])}")
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
        for p in sorted((root / split).iterdir()):
            h.update(p.name.encode())
            with open(p, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()[:16]


def read_manifest(root: str | os.PathLike) -> Manifest:
    path = Path(root) / "manifest.json"
    if not path.is_file():
        raise DatasetError(f"{root}: not a merc dataset directory (expected {path}); create one "
                           f"with `merc data synth` or `merc data import`")
    try:
        return Manifest.model_validate_json(path.read_text())
    except Exception as err:  # pydantic ValidationError or JSON error
        raise DatasetError(f"{path}: invalid manifest: {err}") from None


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
    return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)


def read_split(root: str | os.PathLike, split: str, manifest: Optional[Manifest] = None,
               mmap: bool = True) -> SplitArrays:
    root = Path(root)
    manifest = manifest or read_manifest(root)
    if split not in manifest.splits:
        raise DatasetError(f"{root}: no split {split!r}; it has {sorted(manifest.splits)}")
    sdir = root / split
    ids = json.loads((sdir / "dialogues.json").read_text())
    arrays = SplitArrays(
        split, ids, _load(sdir / "offsets.npy", False),
        {m: _load(sdir / f"{m}.npy", mmap) for m in manifest.modalities},
        _load(sdir / "speakers.npy", False), _load(sdir / "labels.npy", False),
        {k: _load(sdir / f"labels_{k}.npy", False) for k in manifest.extra_labels}, root)
    for m, dim in manifest.modalities.items():
        shape = arrays.features[m].shape
        if shape != (arrays.offsets[-1], dim):
            raise DatasetError(f"{sdir / (m + '.npy')}: expected shape ({arrays.offsets[-1]}, {dim}) "
                               f"per manifest, found {shape}")
    return arrays


def iter_dialogues(arrays: SplitArrays) -> Iterable[Dialogue]:
    for i in range(arrays.num_dialogues):
        yield arrays.dialogue(i)
