"""Importers of the public dialogue pickles (reference_impls.md §0, §1, §4, §5).

Formats registered here:

* ``iemocap-9tuple``  DialogueRNN/DialogueGCN/COGMEN/CORECT ``IEMOCAP_features.pkl`` and the
  MMGCN/MM-DFN file of the same name (same 9-tuple, other dims); ``four_way=kept|merged`` derives
  IEMOCAP-4 under either definition of §0.3.
* ``iemocap4-9tuple`` COGMEN/CORECT ``IEMOCAP_features_4.pkl`` (4 classes hap/sad/neu/ang, the
  "kept" definition).
* ``corect-pkl``      CORECT/COGMEN ``data_<ds>.pkl`` = {train, dev, test} lists of dict samples or
  pickled ``cogmen.Sample`` objects (read as plain records, never imported).
* ``meld-10tuple``    MMGCN/MM-DFN ``MELD_features_raw1.pkl``.
* ``meld-9tuple``     DialogueRNN ``MELD_features_raw.pkl`` (no visual; sentiment as extra labels).
* ``ada2i-pkl``       Ada2I/SPCL ``iemocap.pkl`` / ``meld.pkl`` dicts.

Every pickle is read with :func:`merc.data.unpickle.load_pickle` (restricted: containers, numpy
and known records only). The helpers below (option coercion, speaker mapping, feature matrices,
validation carving, manifest assembly) are shared with :mod:`.gcnet` and :mod:`.dagerc`.

Speaker ids: IEMOCAP ``'M'``/``'F'`` map to 0/1 as COGMEN/CORECT do (one-hot ``[1,0]``/``[0,1]``
as DialogueGCN/MMGCN store them give the same ids); one-hot vectors elsewhere map to their argmax.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import numpy as np

from merc.data.format import (IEMOCAP4_DEFINITIONS, IGNORE_INDEX, MODALITIES, DatasetError,
                              Dialogue, Manifest, write_dataset)
from merc.data.importers import register_importer
from merc.data.unpickle import Record, load_pickle

IEMOCAP6_LABELS = ["hap", "sad", "neu", "ang", "exc", "fru"]
IEMOCAP4_LABELS = ["hap", "sad", "neu", "ang"]
MELD_LABELS = ["neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger"]
#: DialogueRNN MELD sentiment ids; the order is the MELD baseline convention, not verifiable from
#: the loaders (reference_impls.md §0.2 names only the 7 emotion classes)
MELD_SENTIMENT_LABELS = ["neutral", "positive", "negative"]
MOSEI_BINARY_LABELS = ["negative", "positive"]
FAMILIES = ("iemocap6", "iemocap4", "meld", "mosei", "mosi", "other")

IEMOCAP_9TUPLE = ("videoIDs", "videoSpeakers", "videoLabels", "videoText", "videoAudio",
                  "videoVisual", "videoSentence", "trainVid", "testVid")
MELD_10TUPLE = ("videoIDs", "videoSpeakers", "videoLabels", "videoText", "videoAudio",
                "videoVisual", "videoSentence", "trainVid", "testVid", "_")
MELD_9TUPLE = ("videoIDs", "videoSpeakers", "videoLabels", "videoText", "videoAudio",
               "videoSentence", "trainVid", "testVid", "videoSentimentLabels")


# --------------------------------------------------------------------------- option coercion
# Options arrive as strings from ``--opt key=value`` or as Python values from code.

def opt_int(name: str, value: Any, minimum: Optional[int] = None, allow_none: bool = False
            ) -> Optional[int]:
    if value is None or (allow_none and str(value).lower() in ("none", "")):
        if allow_none:
            return None
        raise DatasetError(f"--opt {name}: expected an integer, found nothing")
    try:
        out = int(str(value)) if not isinstance(value, int) else value
    except ValueError:
        raise DatasetError(f"--opt {name}: expected an integer, found {value!r}") from None
    if minimum is not None and out < minimum:
        raise DatasetError(f"--opt {name}: expected an integer >= {minimum}, found {out}")
    return out


def opt_float(name: str, value: Any, lo: float, hi: float, allow_none: bool = False
              ) -> Optional[float]:
    if allow_none and (value is None or str(value).lower() in ("none", "")):
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise DatasetError(f"--opt {name}: expected a number, found {value!r}") from None
    if not lo <= out <= hi:
        raise DatasetError(f"--opt {name}: expected a number in [{lo}, {hi}], found {out}")
    return out


def opt_choice(name: str, value: Any, choices: Sequence[str]) -> str:
    v = str(value).lower()
    if v not in choices:
        raise DatasetError(f"--opt {name}: expected one of {', '.join(choices)}, found {value!r}")
    return v


def nice_key(k: Any) -> Any:
    """Sort key that orders ints numerically and strings naturally, mixed types stably."""
    return (0, k, "") if isinstance(k, (int, np.integer)) else (1, 0, str(k))


# --------------------------------------------------------------------------- id lists and splits

def id_list(obj: Any, path: Path, where: str) -> tuple[list, bool]:
    """A split's dialogue ids in file order; a set (GCNet, maybe Ada2I) is sorted. Returns
    ``(ids, was_set)``."""
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=nice_key), True
    if isinstance(obj, dict):
        return list(obj), False
    if isinstance(obj, (list, tuple, np.ndarray)):
        return list(obj.tolist() if isinstance(obj, np.ndarray) else obj), False
    raise DatasetError(f"{path.name}: {where}: expected a list or set of dialogue ids, found "
                       f"{type(obj).__name__}")


def carve_valid(train_ids: list, was_set: bool, source: str, *, n_valid: Optional[int] = None,
                fraction: Optional[float] = None, take: str = "first", seed: int = 0
                ) -> tuple[list, list, str]:
    """Split ``train_ids`` into (train, valid) deterministically; returns a sentence saying how.

    ``n_valid`` wins over ``fraction`` (rounded down, as ``int(len*0.1)`` in the reference repos).
    ``take``: ``first`` / ``last`` dialogues of the list, or ``shuffle``: Python
    ``random.Random(seed).shuffle`` of the list, then the first ones.
    """
    n = len(train_ids)
    k = n_valid if n_valid is not None else int(n * (fraction if fraction is not None else 0.1))
    if not 0 < k < n:
        raise DatasetError(f"{source}: cannot carve {k} validation dialogues out of {n} train "
                           f"dialogues (need 0 < k < {n}; set --opt valid_dialogues=...)")
    order = "sorted " if was_set else ""
    how = f"{k} of the {n} dialogues of {source}'s {order}train list"
    if take == "first":
        return train_ids[k:], train_ids[:k], f"valid = the first {how} (file order" + \
            (", sorted because the file stores a set)" if was_set else ", no shuffle)")
    if take == "last":
        return train_ids[:-k], train_ids[-k:], f"valid = the last {how} (file order" + \
            (", sorted because the file stores a set)" if was_set else ", no shuffle)")
    ids = list(train_ids)
    random.Random(seed).shuffle(ids)
    chosen = set(map(repr, ids[:k]))
    valid = [v for v in ids[:k]]
    train = [v for v in train_ids if repr(v) not in chosen]
    return train, valid, (f"valid = {how}, taken first after random.Random({seed}).shuffle of "
                          f"that list; remaining train dialogues keep file order")


def valid_options(options: dict, default_n: Optional[int], default_fraction: Optional[float]
                  ) -> dict:
    """Read valid_dialogues / valid_fraction / valid_take / valid_seed."""
    n = opt_int("valid_dialogues", options.get("valid_dialogues", default_n), 1, allow_none=True)
    frac = opt_float("valid_fraction", options.get("valid_fraction", default_fraction), 0.0, 0.9,
                     allow_none=True)
    if options.get("valid_fraction") is not None and options.get("valid_dialogues") is None:
        n = None  # an explicit fraction replaces the default count
    take = opt_choice("valid_take", options.get("valid_take", "first"),
                      ("first", "last", "shuffle"))
    seed = opt_int("valid_seed", options.get("valid_seed", 0))
    return {"n_valid": n, "fraction": frac, "take": take, "seed": seed}


# --------------------------------------------------------------------------- speakers

class SpeakerMap:
    """Maps raw speaker entries (strings, ints, one-hot vectors) to ids, learning names."""

    def __init__(self, names: Optional[list[str]] = None, fixed: bool = False):
        self.names: list[str] = list(names or [])
        self.fixed = fixed
        self.onehot_width = 0
        self.max_int = -1

    def ids(self, raw: Any, n: int, path: Path, where: str) -> np.ndarray:
        if isinstance(raw, np.ndarray) and raw.ndim == 2 or (
                isinstance(raw, (list, tuple)) and len(raw) and
                isinstance(raw[0], (list, tuple, np.ndarray))):
            arr = np.asarray(raw, dtype=np.float64)
            if arr.ndim != 2:
                raise DatasetError(f"{path.name}: {where}: expected one-hot speaker vectors, "
                                   f"found an array of shape {arr.shape}")
            if not np.allclose(arr.sum(1), 1.0):
                raise DatasetError(f"{path.name}: {where}: speaker vectors are not one-hot "
                                   f"(row sums {np.unique(arr.sum(1))[:5].tolist()})")
            self.onehot_width = max(self.onehot_width, arr.shape[1])
            out = arr.argmax(1).astype(np.int64)
        else:
            items = list(np.asarray(raw).tolist()) if isinstance(raw, np.ndarray) else list(raw)
            if items and all(isinstance(x, (str, bytes)) for x in items):
                out = np.empty(len(items), np.int64)
                for i, x in enumerate(items):
                    x = x.decode("latin1") if isinstance(x, bytes) else x
                    if x not in self.names:
                        if self.fixed:
                            raise DatasetError(f"{path.name}: {where}: unknown speaker {x!r}; "
                                               f"expected one of {self.names}")
                        self.names.append(x)
                    out[i] = self.names.index(x)
            else:
                try:
                    out = np.asarray(items, dtype=np.int64)
                except (TypeError, ValueError):
                    raise DatasetError(f"{path.name}: {where}: expected speaker names, ids or "
                                       f"one-hot vectors, found {items[:3]!r}") from None
                if out.ndim != 1 or (len(out) and out.min() < 0):
                    raise DatasetError(f"{path.name}: {where}: speaker ids must be "
                                       f"non-negative integers, found {items[:3]!r}")
                if len(out):
                    self.max_int = max(self.max_int, int(out.max()))
        if len(out) != n:
            raise DatasetError(f"{path.name}: {where}: {len(out)} speakers for {n} labels")
        return out

    def count(self) -> int:
        return max(len(self.names), self.onehot_width, self.max_int + 1, 1)

    def speaker_names(self) -> Optional[list[str]]:
        return [s or "unknown" for s in self.names] if self.names and not (
            self.onehot_width or self.max_int >= 0) else None


def iemocap_speakers() -> SpeakerMap:
    return SpeakerMap(["M", "F"], fixed=True)


# --------------------------------------------------------------------------- features

def feature_matrix(raw: Any, n: int, path: Path, where: str) -> np.ndarray:
    """A [n, D] float32 matrix from a list of vectors or a 2-D array."""
    try:
        arr = np.asarray(raw, dtype=np.float32)
    except (TypeError, ValueError) as err:
        raise DatasetError(f"{path.name}: {where}: expected {n} feature vectors of equal length "
                           f"({err})") from None
    if arr.ndim == 1 and n == 1:
        arr = arr[None]
    if arr.ndim == 3 and arr.shape[1] == 1:  # [n, 1, D]
        arr = arr[:, 0]
    if arr.ndim != 2 or arr.shape[0] != n:
        raise DatasetError(f"{path.name}: {where}: expected a [{n}, D] feature matrix (one row per "
                           f"utterance), found shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise DatasetError(f"{path.name}: {where}: features contain NaN or inf")
    return arr


def label_vector(raw: Any, path: Path, where: str) -> np.ndarray:
    try:
        arr = np.asarray(raw)
    except (TypeError, ValueError):
        raise DatasetError(f"{path.name}: {where}: expected a list of integer labels") from None
    if arr.ndim == 2 and arr.shape[1] > 1:   # one-hot labels
        arr = arr.argmax(1)
    arr = arr.reshape(-1)
    if arr.dtype.kind == "f" and not np.all(arr == np.round(arr)):
        raise DatasetError(f"{path.name}: {where}: expected integer class labels, found floats "
                           f"such as {arr[:3].tolist()}")
    if arr.dtype.kind not in "iuf":
        raise DatasetError(f"{path.name}: {where}: expected integer class labels, found "
                           f"{arr[:3].tolist()}")
    return arr.astype(np.int64)


def sentences(raw: Any, n: int, path: Path, where: str) -> Optional[list[str]]:
    if raw is None:
        return None
    items = list(raw)
    if len(items) != n:
        raise DatasetError(f"{path.name}: {where}: {len(items)} sentences for {n} labels")
    return [x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x) for x in items]


def field(sample: Any, names: Sequence[str], path: Path, where: str, required: bool = True) -> Any:
    """Read a field of a dict sample or a :class:`Record` under any of ``names``."""
    state = sample.state if isinstance(sample, Record) else sample
    if not isinstance(state, dict):
        raise DatasetError(f"{path.name}: {where}: expected a dict or a COGMEN Sample, found "
                           f"{type(sample).__name__}")
    for nm in names:
        if nm in state:
            return state[nm]
    if required:
        raise DatasetError(f"{path.name}: {where}: missing key {names[0]!r} (found keys "
                           f"{sorted(map(str, state))})")
    return None


# --------------------------------------------------------------------------- label transforms

def four_way(dialogues: list[Dialogue], mode: str) -> tuple[list[Dialogue], int, int]:
    """IEMOCAP-6 -> IEMOCAP-4 (§0.3): ``kept`` drops exc(4)/fru(5) utterances; ``merged`` maps
    exc -> hap(0) and drops fru. Utterances are removed from the dialogues (context breaks, as
    in the reference files); dialogues left empty are dropped. Returns (dialogues, utterances
    dropped, dialogues dropped)."""
    out, dropped_u, dropped_d = [], 0, 0
    for d in dialogues:
        lab = d.labels.copy()
        if mode == "merged":
            lab[lab == 4] = 0
            keep = lab != 5
        else:
            keep = (lab >= 0) & (lab <= 3) | (lab == IGNORE_INDEX)
        dropped_u += int((~keep).sum())
        if not keep.any():
            dropped_d += 1
            continue
        idx = np.flatnonzero(keep)
        out.append(Dialogue(d.id, {m: x[idx] for m, x in d.features.items()}, d.speakers[idx],
                            lab[idx], [d.text[i] for i in idx] if d.text is not None else None,
                            {k: v[idx] for k, v in d.extra_labels.items()}))
    return out, dropped_u, dropped_d


# --------------------------------------------------------------------------- manifest + write

def finish(out: Path, src: Path, *, fmt: str, options: dict, name: Optional[str], family: str,
           label_names: list[str], splits: dict[str, list[Dialogue]], speakers: SpeakerMap,
           validation: str, iemocap4_definition: Optional[str] = None,
           extra_labels: Optional[dict[str, list[str]]] = None, speaker_scope: str = "global",
           notes: Optional[dict] = None) -> Manifest:
    """Check dims across all dialogues (naming the source), build the manifest and write."""
    if family not in FAMILIES:
        raise DatasetError(f"--opt family: expected one of {', '.join(FAMILIES)}, found {family!r}")
    if iemocap4_definition is not None and iemocap4_definition not in IEMOCAP4_DEFINITIONS:
        raise DatasetError(f"unknown IEMOCAP-4 definition {iemocap4_definition!r}")
    for s in ("train", "valid", "test"):
        if not splits.get(s):
            raise DatasetError(f"{src}: split {s!r} would be empty")
    first = next(d for ds in splits.values() for d in ds)
    dims = {m: int(first.features[m].shape[1]) for m in MODALITIES if m in first.features}
    if not dims:
        raise DatasetError(f"{src}: no modality features found")
    for split, ds in splits.items():
        for d in ds:
            for m, dim in dims.items():
                got = d.features.get(m)
                if got is None or got.shape[1] != dim:
                    raise DatasetError(
                        f"{src.name}: dialogue {d.id!r} ({split}) modality {m!r}: expected dim "
                        f"{dim} (as in dialogue {first.id!r}), found "
                        f"{None if got is None else got.shape[1]}")
    has_text = all(d.text is not None for ds in splits.values() for d in ds)
    if not has_text:
        for ds in splits.values():
            for d in ds:
                d.text = None
    prov = {"format": fmt, "source": str(src.resolve()),
            "options": {k: (v if isinstance(v, (int, float, str, bool, type(None))) else str(v))
                        for k, v in options.items()}}
    if notes:
        prov.update(notes)
    manifest = Manifest(
        name=name or src.stem, family=family, num_classes=len(label_names),
        label_names=list(label_names), modalities=dims, num_speakers=speakers.count(),
        speaker_names=speakers.speaker_names(), speaker_scope=speaker_scope, splits={},
        extra_labels=extra_labels or {}, iemocap4_definition=iemocap4_definition,
        validation=validation, has_text=has_text, provenance=prov)
    return write_dataset(out, manifest, {s: splits[s] for s in ("train", "valid", "test")})


# --------------------------------------------------------------------------- field-dict datasets

def dialogues_from_fields(path: Path, ids: Iterable, *, speakers_by: dict, labels_by: dict,
                          features_by: dict[str, dict], sentences_by: Optional[dict],
                          spk: SpeakerMap, names: dict[str, str],
                          extra_by: Optional[dict[str, dict]] = None) -> list[Dialogue]:
    """Build dialogues from per-field dicts keyed by dialogue id (the tuple / Ada2I layouts).

    ``names`` maps 'speakers'/'labels'/modality/'sentences'/extra to the name in the file, used
    in error messages ("videoAudio[vid]").
    """
    out = []
    for vid in ids:
        for key, table in (("labels", labels_by), ("speakers", speakers_by)):
            if vid not in table:
                raise DatasetError(f"{path.name}: {names[key]}: no entry for dialogue {vid!r} "
                                   f"listed in the split")
        labels = label_vector(labels_by[vid], path, f"{names['labels']}[{vid!r}]")
        n = len(labels)
        feats = {}
        for m, table in features_by.items():
            if vid not in table:
                raise DatasetError(f"{path.name}: {names[m]}: no entry for dialogue {vid!r}")
            feats[m] = feature_matrix(table[vid], n, path, f"{names[m]}[{vid!r}]")
        sp = spk.ids(speakers_by[vid], n, path, f"{names['speakers']}[{vid!r}]")
        text = None
        if sentences_by is not None and vid in sentences_by:
            text = sentences(sentences_by[vid], n, path, f"{names['sentences']}[{vid!r}]")
        extra = {}
        for k, table in (extra_by or {}).items():
            if vid not in table:
                raise DatasetError(f"{path.name}: {names[k]}: no entry for dialogue {vid!r}")
            extra[k] = label_vector(table[vid], path, f"{names[k]}[{vid!r}]")
            if len(extra[k]) != n:
                raise DatasetError(f"{path.name}: {names[k]}[{vid!r}]: {len(extra[k])} labels "
                                   f"for {n} utterances")
        out.append(Dialogue(str(vid), feats, sp, labels, text, extra))
    return out


def check_labels(splits: dict[str, list[Dialogue]], num_classes: int, path: Path, what: str
                 ) -> None:
    for split, ds in splits.items():
        for d in ds:
            bad = d.labels[(d.labels != IGNORE_INDEX) &
                           ((d.labels < 0) | (d.labels >= num_classes))]
            if len(bad):
                raise DatasetError(f"{path.name}: dialogue {d.id!r}: label {int(bad[0])} outside "
                                   f"[0, {num_classes}) for {what}")


def _tuple(obj: Any, layout: Sequence[str], path: Path) -> dict:
    if isinstance(obj, dict):
        hint = ("; a dict with trainVid/testVid looks like Ada2I's pickle (--format ada2i-pkl)"
                if "trainVid" in obj else
                "; a dict with train/dev/test looks like CORECT's data_<ds>.pkl "
                "(--format corect-pkl)" if "train" in obj else "")
        raise DatasetError(f"{path.name}: expected a {len(layout)}-tuple ({', '.join(layout)}), "
                           f"found a dict{hint}")
    if not isinstance(obj, (tuple, list)):
        raise DatasetError(f"{path.name}: expected a {len(layout)}-tuple ({', '.join(layout)}), "
                           f"found {type(obj).__name__}")
    if len(obj) != len(layout):
        hint = {6: "; a 6-tuple is a GCNet IEMOCAP label pickle (--format gcnet)",
                7: "; a 7-tuple is a GCNet MOSI/MOSEI label pickle (--format gcnet)",
                9: "; a 9-tuple is IEMOCAP_features.pkl or DialogueRNN MELD_features_raw.pkl "
                   "(--format iemocap-9tuple / meld-9tuple)",
                10: "; a 10-tuple is MMGCN MELD_features_raw1.pkl (--format meld-10tuple)"
                }.get(len(obj), "")
        raise DatasetError(f"{path.name}: expected a {len(layout)}-tuple ({', '.join(layout)}), "
                           f"found a {len(obj)}-tuple{hint}")
    out = dict(zip(layout, obj))
    for k in layout:
        if k.startswith("video") and k != "videoIDs" and not isinstance(out[k], dict):
            raise DatasetError(f"{path.name}: element {layout.index(k)} ({k}): expected a dict "
                               f"keyed by dialogue id, found {type(out[k]).__name__}")
    return out


# --------------------------------------------------------------------------- IEMOCAP 9-tuple

def _iemocap_9tuple(src: Path, out: Path, fmt: str, forced4: bool, options: dict) -> Manifest:
    mode = opt_choice("four_way", options.get("four_way", "none"), ("none", "kept", "merged"))
    vopts = valid_options(options, 12, None)
    t = _tuple(load_pickle(src), IEMOCAP_9TUPLE, src)
    train_ids, tr_set = id_list(t["trainVid"], src, "element 7 (trainVid)")
    test_ids, _ = id_list(t["testVid"], src, "element 8 (testVid)")
    spk = iemocap_speakers()
    names = {"labels": "videoLabels", "speakers": "videoSpeakers", "text": "videoText",
             "audio": "videoAudio", "visual": "videoVisual", "sentences": "videoSentence"}
    feats = {"audio": t["videoAudio"], "text": t["videoText"], "visual": t["videoVisual"]}
    build = lambda ids: dialogues_from_fields(  # noqa: E731
        src, ids, speakers_by=t["videoSpeakers"], labels_by=t["videoLabels"], features_by=feats,
        sentences_by=t["videoSentence"], spk=spk, names=names)
    train, valid, how = carve_valid(train_ids, tr_set, src.name, **vopts)
    splits = {"train": build(train), "valid": build(valid), "test": build(test_ids)}
    max_label = max(int(d.labels.max()) for ds in splits.values() for d in ds)
    family = str(options.get("family", "auto")).lower()
    if family == "auto":
        family = "iemocap4" if forced4 or max_label <= 3 else "iemocap6"
    notes: dict = {}
    definition = None
    if family == "iemocap4" and mode == "none":
        check_labels(splits, 4, src, "a 4-class IEMOCAP file (hap, sad, neu, ang)")
        labels, definition = IEMOCAP4_LABELS, "iemocap4-kept"
        notes["four_way"] = "file already holds the 4 classes hap/sad/neu/ang (COGMEN/CORECT)"
    elif family == "iemocap4" or mode != "none":
        if forced4 or max_label <= 3:
            raise DatasetError(f"{src.name}: four_way={mode} needs the 6-class file; this one "
                               f"already has 4 classes")
        check_labels(splits, 6, src, "the 6-class IEMOCAP map hap0 sad1 neu2 ang3 exc4 fru5")
        if mode == "none":
            raise DatasetError(f"{src.name}: family=iemocap4 on a 6-class file needs "
                               f"--opt four_way=kept or four_way=merged (reference_impls §0.3)")
        dropped = {}
        for s in splits:
            splits[s], du, dd = four_way(splits[s], mode)
            dropped[s] = {"utterances": du, "dialogues": dd}
        family, labels, definition = "iemocap4", IEMOCAP4_LABELS, f"iemocap4-{mode}"
        notes["four_way"] = {"definition": IEMOCAP4_DEFINITIONS[definition], "dropped": dropped}
    else:
        check_labels(splits, 6, src, "the 6-class IEMOCAP map hap0 sad1 neu2 ang3 exc4 fru5")
        labels = IEMOCAP6_LABELS
    validation = how + " (CORECT/COGMEN convention: first 12 of the 120 train dialogues)"
    return finish(out, src, fmt=fmt, options={"four_way": mode, **vopts, "family": family},
                  name=options.get("name"), family=family, label_names=labels, splits=splits,
                  speakers=spk, validation=validation, iemocap4_definition=definition,
                  notes=notes)


@register_importer("iemocap-9tuple", "IEMOCAP_features.pkl 9-tuple (DialogueRNN/COGMEN/CORECT or "
                   "MMGCN dims); options four_way=none|kept|merged, valid_dialogues=12")
def import_iemocap_9tuple(src: Path, out: Path, **options: Any) -> Manifest:
    """IEMOCAP_features.pkl: (videoIDs, videoSpeakers, videoLabels, videoText, videoAudio,
    videoVisual, videoSentence, trainVid, testVid).

    Options: ``four_way`` none|kept|merged (§0.3); ``family`` auto|iemocap6|iemocap4 (auto: 4 if
    no label exceeds 3); ``valid_dialogues`` (12) / ``valid_fraction`` / ``valid_take``
    first|last|shuffle / ``valid_seed``; ``name``.
    """
    _known(options, {"four_way", "family", "name"})
    return _iemocap_9tuple(src, out, "iemocap-9tuple", False, options)


@register_importer("iemocap4-9tuple", "COGMEN/CORECT IEMOCAP_features_4.pkl (hap/sad/neu/ang, "
                   "the 'kept' IEMOCAP-4 definition)")
def import_iemocap4_9tuple(src: Path, out: Path, **options: Any) -> Manifest:
    """IEMOCAP_features_4.pkl: the 9-tuple with classes hap0 sad1 neu2 ang3 (iemocap4-kept)."""
    _known(options, {"name"})
    return _iemocap_9tuple(src, out, "iemocap4-9tuple", True, options)


VALID_KEYS = {"valid_dialogues", "valid_fraction", "valid_take", "valid_seed"}


def _known(options: dict, keys: set) -> None:
    unknown = sorted(set(options) - keys - VALID_KEYS)
    if unknown:
        raise DatasetError(f"--opt: unknown option {unknown[0]!r}; options: "
                           f"{', '.join(sorted(keys | VALID_KEYS))}")


# --------------------------------------------------------------------------- MELD tuples

def _meld(src: Path, out: Path, fmt: str, layout: Sequence[str], options: dict) -> Manifest:
    vopts = valid_options(options, None, 0.1)
    t = _tuple(load_pickle(src), layout, src)
    i_tr, i_te = layout.index("trainVid"), layout.index("testVid")
    train_ids, tr_set = id_list(t["trainVid"], src, f"element {i_tr} (trainVid)")
    test_ids, _ = id_list(t["testVid"], src, f"element {i_te} (testVid)")
    spk = SpeakerMap()
    names = {"labels": "videoLabels", "speakers": "videoSpeakers", "text": "videoText",
             "audio": "videoAudio", "visual": "videoVisual", "sentences": "videoSentence",
             "sentiment": "videoSentimentLabels"}
    feats = {m: t[names[m]] for m in MODALITIES if names[m] in t}
    extra = {"sentiment": t["videoSentimentLabels"]} if "videoSentimentLabels" in t else None
    build = lambda ids: dialogues_from_fields(  # noqa: E731
        src, ids, speakers_by=t["videoSpeakers"], labels_by=t["videoLabels"], features_by=feats,
        sentences_by=t["videoSentence"], spk=spk, names=names, extra_by=extra)
    train, valid, how = carve_valid(train_ids, tr_set, src.name, **vopts)
    splits = {"train": build(train), "valid": build(valid), "test": build(test_ids)}
    check_labels(splits, 7, src, "the MELD map neutral0 surprise1 fear2 sadness3 joy4 disgust5 "
                                 "anger6")
    notes = {}
    extra_labels = None
    if extra:
        extra_labels = {"sentiment": MELD_SENTIMENT_LABELS}
        notes["sentiment_label_order"] = ("neutral0 positive1 negative2 assumed (MELD baseline "
                                          "convention; not stated by the DialogueRNN loader)")
    if "_" in t:
        notes["ignored"] = "element 9 of the 10-tuple (unused by MMGCN's loader)"
    validation = (how + ". trainVid holds MELD train+dev together; the official dev dialogues "
                  "are not marked in the file")
    return finish(out, src, fmt=fmt, options=vopts, name=options.get("name"), family="meld",
                  label_names=MELD_LABELS, splits=splits, speakers=spk, validation=validation,
                  extra_labels=extra_labels, speaker_scope="dialogue", notes=notes)


@register_importer("meld-10tuple", "MMGCN/MM-DFN MELD_features_raw1.pkl (t600/a300/v342, 9 "
                   "one-hot speakers); valid = first 10% of trainVid by default")
def import_meld_10tuple(src: Path, out: Path, **options: Any) -> Manifest:
    """MELD_features_raw1.pkl: (videoIDs, videoSpeakers, videoLabels, videoText, videoAudio,
    videoVisual, videoSentence, trainVid, testVid, _). Options: valid_fraction (0.1) /
    valid_dialogues / valid_take first|last|shuffle / valid_seed; name."""
    _known(options, {"name"})
    return _meld(src, out, "meld-10tuple", MELD_10TUPLE, options)


@register_importer("meld-9tuple", "DialogueRNN MELD_features_raw.pkl (t600/a300, no visual; "
                   "sentiment kept as extra label set)")
def import_meld_9tuple(src: Path, out: Path, **options: Any) -> Manifest:
    """MELD_features_raw.pkl: (videoIDs, videoSpeakers, videoLabels, videoText, videoAudio,
    videoSentence, trainVid, testVid, videoSentimentLabels). Options as meld-10tuple."""
    _known(options, {"name"})
    return _meld(src, out, "meld-9tuple", MELD_9TUPLE, options)


# --------------------------------------------------------------------------- CORECT / COGMEN

def _family_from_name(stem: str) -> Optional[str]:
    s = stem.lower()
    if "iemocap_4" in s or "iemocap4" in s or "4way" in s:
        return "iemocap4"
    if "iemocap" in s:
        return "iemocap6"
    if "mosei" in s:
        return "mosei"
    if "mosi" in s:
        return "mosi"
    if "meld" in s:
        return "meld"
    return None


LABELS_BY_FAMILY = {"iemocap6": IEMOCAP6_LABELS, "iemocap4": IEMOCAP4_LABELS,
                    "meld": MELD_LABELS, "mosei": MOSEI_BINARY_LABELS, "mosi": MOSEI_BINARY_LABELS}


@register_importer("corect-pkl", "CORECT/COGMEN data_<ds>.pkl {train,dev,test} of dict samples or "
                   "cogmen.Sample records; option text_field=auto|text|sbert_sentence_embeddings")
def import_corect_pkl(src: Path, out: Path, **options: Any) -> Manifest:
    """CORECT/COGMEN ``data_<ds>.pkl``: {"train","dev","test"} lists of samples with fields vid,
    speakers ('M'/'F'), labels, audio, visual, text, sentence (COGMEN's ``Sample`` objects use
    speaker/label and may carry ``sbert_sentence_embeddings``).

    Options: ``family`` auto|iemocap6|iemocap4|mosei (auto: from the file name, else from the
    labels); ``text_field`` auto|text|sbert_sentence_embeddings (auto: the SBERT field where the
    samples have it, as COGMEN trains on it; else ``text``); ``name``. Validation is the file's dev
    list (CORECT: the first 12 train dialogues, no shuffle).
    """
    _known(options, {"family", "text_field", "name"})
    text_field = opt_choice("text_field", options.get("text_field", "auto"),
                            ("auto", "text", "sbert_sentence_embeddings"))
    data = load_pickle(src)
    if not isinstance(data, dict) or not {"train", "dev", "test"} <= set(data):
        found = (f"a dict with keys {sorted(map(str, data))}" if isinstance(data, dict)
                 else f"a {len(data)}-tuple" if isinstance(data, tuple) else type(data).__name__)
        raise DatasetError(f"{src.name}: expected a dict with keys train, dev, test (CORECT's "
                           f"data_<ds>.pkl), found {found}")
    spk = SpeakerMap()
    used_text = set()
    splits: dict[str, list[Dialogue]] = {}
    for key, split in (("train", "train"), ("dev", "valid"), ("test", "test")):
        samples = data[key]
        if not isinstance(samples, (list, tuple)):
            raise DatasetError(f"{src.name}: [{key!r}]: expected a list of samples, found "
                               f"{type(samples).__name__}")
        ds = []
        for i, s in enumerate(samples):
            where = f"[{key!r}][{i}]"
            vid = field(s, ["vid"], src, where)
            where = f"[{key!r}][{i}] (vid {vid!r})"
            labels = label_vector(field(s, ["labels", "label"], src, where), src, where + ".labels")
            n = len(labels)
            feats = {}
            for m in MODALITIES:
                keys = [m]
                if m == "text":
                    keys = {"auto": ["sbert_sentence_embeddings", "text"], "text": ["text"],
                            "sbert_sentence_embeddings": ["sbert_sentence_embeddings"]}[text_field]
                raw, got = None, None
                for k in keys:
                    raw = field(s, [k], src, where, required=False)
                    if raw is not None:
                        got = k
                        break
                if raw is None:
                    if m == "text" and text_field != "auto":
                        raise DatasetError(f"{src.name}: {where}: missing key {keys[0]!r}")
                    continue
                if m == "text":
                    used_text.add(got)
                feats[m] = feature_matrix(raw, n, src, f"{where}.{got}")
            sp = spk.ids(field(s, ["speakers", "speaker"], src, where), n, src, where + ".speakers")
            sent = field(s, ["sentence", "sentences"], src, where, required=False)
            ds.append(Dialogue(str(vid), feats, sp, labels,
                               sentences(sent, n, src, where + ".sentence"), {}))
        splits[split] = ds
    if len(used_text) > 1:
        raise DatasetError(f"{src.name}: samples disagree on the text field (found "
                           f"{sorted(used_text)}); pass --opt text_field=...")
    family = str(options.get("family", "auto")).lower()
    if family == "auto":
        family = _family_from_name(src.stem) or ""
        if not family:
            mx = max(int(d.labels.max()) for ds in splits.values() for d in ds)
            if mx >= 4:
                family = "iemocap6"
            else:
                raise DatasetError(f"{src.name}: cannot tell the dataset from the file name or "
                                   f"the labels (max label {mx}); pass --opt family=iemocap4|"
                                   f"mosei|...")
    if family not in LABELS_BY_FAMILY:
        raise DatasetError(f"--opt family: expected one of {', '.join(LABELS_BY_FAMILY)}, found "
                           f"{family!r}")
    labels = LABELS_BY_FAMILY[family]
    check_labels(splits, len(labels), src, f"family {family} ({', '.join(labels)})")
    return finish(out, src, fmt="corect-pkl",
                  options={"family": family, "text_field": text_field,
                           "text_source": ",".join(sorted(used_text))},
                  name=options.get("name"), family=family, label_names=labels, splits=splits,
                  speakers=spk, validation=f"valid = the 'dev' list of {src.name} as stored "
                  f"(CORECT/COGMEN preprocess: the first 10% of trainVids, no shuffle)",
                  iemocap4_definition="iemocap4-kept" if family == "iemocap4" else None)


# --------------------------------------------------------------------------- Ada2I / SPCL

ADA2I_KEYS = ("trainVid", "testVid", "label", "text", "audio", "visual")


@register_importer("ada2i-pkl", "Ada2I/SPCL iemocap.pkl / meld.pkl dicts (trainVid, testVid, "
                   "speaker(s), label, text, audio, visual, sentence)")
def import_ada2i_pkl(src: Path, out: Path, **options: Any) -> Manifest:
    """Ada2I/SPCL dict pickle: keys trainVid, testVid, speaker ('M'/'F', IEMOCAP) or speakers
    (ints, MELD), label, text, audio, visual, sentence, each keyed by dialogue id.

    Options: ``family`` auto|iemocap6|iemocap4|meld (auto: ``speakers`` key -> meld, else IEMOCAP
    by labels); validation: first ``valid_dialogues`` (IEMOCAP default 12) or ``valid_fraction``
    (MELD default 0.1, Ada2I's MELD rule) of trainVid (sorted if a set); ``valid_take``
    first|last|shuffle, ``valid_seed``; ``name``.
    """
    _known(options, {"family", "name"})
    data = load_pickle(src)
    if not isinstance(data, dict):
        raise DatasetError(f"{src.name}: expected a dict with keys {', '.join(ADA2I_KEYS)}, "
                           f"found {type(data).__name__}")
    missing = [k for k in ADA2I_KEYS if k not in data]
    spk_key = "speakers" if "speakers" in data else "speaker" if "speaker" in data else None
    if missing or spk_key is None:
        missing += [] if spk_key else ["speaker"]
        raise DatasetError(f"{src.name}: expected keys {', '.join(ADA2I_KEYS)} and speaker or "
                           f"speakers, missing {', '.join(missing)} "
                           f"(found {sorted(map(str, data))})")
    family = str(options.get("family", "auto")).lower()
    if family == "auto":
        family = "meld" if spk_key == "speakers" else ""
    is_meld = family == "meld"
    vopts = valid_options(options, None if is_meld else 12, 0.1 if is_meld else None)
    train_ids, tr_set = id_list(data["trainVid"], src, "['trainVid']")
    test_ids, _ = id_list(data["testVid"], src, "['testVid']")
    spk = SpeakerMap() if is_meld or spk_key == "speakers" else iemocap_speakers()
    names = {"labels": "['label']", "speakers": f"[{spk_key!r}]", "text": "['text']",
             "audio": "['audio']", "visual": "['visual']", "sentences": "['sentence']"}
    feats = {m: data[m] for m in MODALITIES}
    build = lambda ids: dialogues_from_fields(  # noqa: E731
        src, ids, speakers_by=data[spk_key], labels_by=data["label"], features_by=feats,
        sentences_by=data.get("sentence"), spk=spk, names=names)
    train, valid, how = carve_valid(train_ids, tr_set, src.name, **vopts)
    splits = {"train": build(train), "valid": build(valid), "test": build(test_ids)}
    if not family:
        mx = max(int(d.labels.max()) for ds in splits.values() for d in ds)
        family = "iemocap6" if mx >= 4 else "iemocap4"
    if family not in ("iemocap6", "iemocap4", "meld"):
        raise DatasetError(f"--opt family: expected auto, iemocap6, iemocap4 or meld, found "
                           f"{family!r}")
    labels = LABELS_BY_FAMILY[family]
    check_labels(splits, len(labels), src, f"family {family} ({', '.join(labels)})")
    rule = ("Ada2I's MELD rule is the first 10% of list(trainVid), no shuffle" if is_meld else
            "Ada2I shuffles list(trainVid) with its seed before taking 10%; the default here is "
            "the unshuffled CORECT rule (first 12) so that the split does not depend on hash "
            "order; valid_take=shuffle gives a seeded shuffle")
    return finish(out, src, fmt="ada2i-pkl", options={"family": family, **vopts},
                  name=options.get("name"), family=family, label_names=labels, splits=splits,
                  speakers=spk, validation=f"{how}. {rule}",
                  iemocap4_definition="iemocap4-kept" if family == "iemocap4" else None,
                  speaker_scope="dialogue" if is_meld else "global")


__all__ = ["carve_valid", "feature_matrix", "finish", "SpeakerMap", "IEMOCAP6_LABELS",
           "IEMOCAP4_LABELS", "MELD_LABELS"]
