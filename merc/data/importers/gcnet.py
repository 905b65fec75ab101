"""Importer of GCNet's label pickles plus per-utterance feature folders (reference_impls.md §3b).

Layout (GCNet ``config.py``)::

    <dir>/IEMOCAP_features_raw_{4,6}way.pkl     6-tuple (videoIDs, videoLabels, videoSpeakers,
                                                 videoSentences, trainVid set, testVid set)
    <dir>/CMUMOSI_features_raw_2way.pkl          7-tuple (..., trainVids, valVids, testVids),
    <dir>/CMUMOSEI_features_raw_2way.pkl         float sentiment labels in [-3, 3]
    <dir>/features/<feature_name>/<utt>.npy      [D] or [T, D] (mean-pooled over T)
    <dir>/features/<feature_name>/<utt>/compress_{F,M}.npy   visual: one face per speaker

``src`` is the label pickle, or the directory holding exactly one ``*.pkl`` (or pass
``label_file``). Feature folders default to GCNet's README names; ``<modality>_feature=none``
leaves a modality out.

Choices written down:

* Speakers: ``M`` -> 0, ``F`` -> 1, as in every other IEMOCAP importer here (GCNet itself uses
  F=0, M=1 internally; the ids are labels only, models see them symmetrically). A visual folder's
  face is the current speaker's (``compress_<speaker>.npy``), as GCNet's ``qmask`` selection.
* IEMOCAP 4-way: the ``4way`` file merges hap+exc (``iemocap4-merged``, §0.3); detected from the
  labels (none above 3) or the file name.
* MOSI/MOSEI: classification labels are binary sentiment, negative (< 0) -> 0, positive (> 0) -> 1;
  a score of exactly 0 becomes -100 (unlabelled: kept in the dialogue for context, left out of the
  loss and the metrics), matching GCNet's binary scores on non-zero labels. ``zero_label=
  negative|positive`` assigns it to a class instead. The float score is kept as extra label set
  ``sentiment_score``.
* Splits: IEMOCAP train/test as the pickle's sets (sorted), validation = the first
  ``valid_dialogues`` (12) of the sorted train set; ``test_session=k`` instead holds out session
  k (GCNet's leave-one-session-out fold k). MOSI/MOSEI use the file's train/val/test lists.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np

from merc.data.format import IGNORE_INDEX, DatasetError, Dialogue, Manifest, safe_join
from merc.data.importers import register_importer
from merc.data.importers.pickles import (IEMOCAP4_LABELS, IEMOCAP6_LABELS, MOSEI_BINARY_LABELS,
                                         SpeakerMap, carve_valid, check_labels, finish, id_list,
                                         iemocap_speakers, label_vector, opt_choice, opt_int,
                                         sentences, valid_options, _known)

IEMOCAP_6TUPLE = ("videoIDs", "videoLabels", "videoSpeakers", "videoSentences", "trainVid",
                  "testVid")
MOSI_7TUPLE = ("videoIDs", "videoLabels", "videoSpeakers", "videoSentences", "trainVids",
               "valVids", "testVids")
DEFAULT_FEATURES = {"audio": "wav2vec-large-c-UTT", "text": "deberta-large-4-UTT",
                    "visual": "manet_UTT"}


def _label_file(src: Path, label_file: Optional[str]) -> Path:
    if src.is_file():
        return src
    if label_file:
        p = Path(label_file)
        p = p if p.is_absolute() else src / p
        if not p.is_file():
            raise DatasetError(f"--opt label_file: {p} does not exist")
        return p
    cands = sorted(src.glob("*.pkl"))
    if len(cands) != 1:
        raise DatasetError(f"{src}: expected exactly one GCNet label pickle (*.pkl) in the "
                           f"directory, found {[c.name for c in cands] or 'none'}; pass "
                           f"--opt label_file=...")
    return cands[0]


def _npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except Exception as err:  # noqa: BLE001 - not .npy, truncated, an object array
        raise DatasetError(f"{path}: not a readable .npy feature array ({type(err).__name__}: "
                           f"{' '.join(str(err).split())[:200]})") from None


def _pool(arr: np.ndarray, path: Path) -> np.ndarray:
    arr = np.asarray(arr, dtype=np.float32)
    if arr.ndim == 2:
        if arr.shape[0] == 0:
            raise DatasetError(f"{path}: empty [0, D] feature array")
        arr = arr.mean(0)
    if arr.ndim != 1:
        raise DatasetError(f"{path}: expected a [D] or [T, D] feature array, found shape "
                           f"{arr.shape}")
    if not np.isfinite(arr).all():
        raise DatasetError(f"{path}: features contain NaN or inf")
    return arr


class _FeatureDir:
    """One modality's folder: ``<utt>.npy`` files or ``<utt>/compress_<spk>.npy`` face files."""

    def __init__(self, root: Path, modality: str, name: str, missing: str):
        self.root, self.modality, self.name, self.missing = root / name, modality, name, missing
        if not self.root.is_dir():
            have = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
            raise DatasetError(f"--opt {modality}_feature={name}: no folder {self.root} (feature "
                               f"folders there: {have or 'none'}; use {modality}_feature=none to "
                               f"leave the modality out)")
        self.n_missing = 0

    def load(self, utt: str, speaker: str) -> Optional[np.ndarray]:
        # ids come from the label pickle: a `../` or absolute id must not leave the folder
        f = safe_join(self.root, f"{utt}.npy", what="utterance id (videoIDs)")
        if f.is_file():
            return _pool(_npy(f), f)
        d = safe_join(self.root, utt, what="utterance id (videoIDs)")
        if d.is_dir():
            face = safe_join(d, f"compress_{speaker}.npy", what="speaker (videoSpeakers)")
            if face.is_file():
                return _pool(_npy(face), face)
            npys = sorted(d.glob("*.npy"))
            if not speaker and len(npys) == 1:
                return _pool(_npy(npys[0]), npys[0])
            where = f"{face} (the face of speaker {speaker!r})"
        else:
            where = f"{f}"
        if self.missing == "zeros":
            self.n_missing += 1
            return None
        raise DatasetError(f"{where}: missing {self.modality} feature for utterance {utt!r} "
                           f"(--opt missing_features=zeros fills zeros)")


@register_importer("gcnet", "GCNet label pickle (IEMOCAP 6-tuple / MOSI-MOSEI 7-tuple) + "
                   "features/<name>/<utt>.npy folders; options audio_feature, text_feature, "
                   "visual_feature, test_session, zero_label")
def import_gcnet(src: Path, out: Path, **options: Any) -> Manifest:
    """GCNet data: see the module docstring for layout and choices.

    Options: ``label_file``; ``features_dir`` (default ``<label dir>/features``);
    ``audio_feature`` / ``text_feature`` / ``visual_feature`` (folder names, ``none`` to skip);
    ``family`` auto|iemocap6|iemocap4|mosi|mosei; ``valid_dialogues`` (12, IEMOCAP);
    ``test_session`` 1..5 (IEMOCAP); ``zero_label`` ignore|negative|positive (MOSI/MOSEI);
    ``missing_features`` error|zeros; ``name``.
    """
    _known(options, {"label_file", "features_dir", "audio_feature", "text_feature",
                     "visual_feature", "family", "test_session", "zero_label",
                     "missing_features", "name"})
    label_path = _label_file(src, options.get("label_file"))
    feat_root = Path(options.get("features_dir") or label_path.parent / "features")
    if not feat_root.is_absolute() and options.get("features_dir") and src.is_dir():
        feat_root = src / feat_root
    missing = opt_choice("missing_features", options.get("missing_features", "error"),
                         ("error", "zeros"))
    folders = {}
    for m in ("audio", "text", "visual"):
        nm = str(options.get(f"{m}_feature", DEFAULT_FEATURES[m]))
        if nm.lower() != "none":
            folders[m] = _FeatureDir(feat_root, m, nm, missing)
    if not folders:
        raise DatasetError("gcnet: every modality was set to none; keep at least one feature "
                           "folder")

    from merc.data.unpickle import load_pickle
    obj = load_pickle(label_path)
    if not isinstance(obj, (tuple, list)) or len(obj) not in (6, 7):
        found = f"a {len(obj)}-tuple" if isinstance(obj, (tuple, list)) else type(obj).__name__
        raise DatasetError(f"{label_path.name}: expected a GCNet label pickle: a 6-tuple "
                           f"({', '.join(IEMOCAP_6TUPLE)}) or a 7-tuple "
                           f"({', '.join(MOSI_7TUPLE)}), found {found}")
    layout = IEMOCAP_6TUPLE if len(obj) == 6 else MOSI_7TUPLE
    stem = label_path.stem.lower()
    if len(obj) == 6 and "mosi" in stem:
        raise DatasetError(f"{label_path.name}: expected a 7-tuple ({', '.join(MOSI_7TUPLE)}) "
                           f"for MOSI/MOSEI, found a 6-tuple")
    if len(obj) == 7 and "iemocap" in stem:
        raise DatasetError(f"{label_path.name}: expected a 6-tuple ({', '.join(IEMOCAP_6TUPLE)}) "
                           f"for IEMOCAP, found a 7-tuple")
    t = dict(zip(layout, obj))
    for i, k in enumerate(layout[:4]):
        if not isinstance(t[k], dict):
            raise DatasetError(f"{label_path.name}: element {i} ({k}): expected a dict keyed by "
                               f"dialogue id, found {type(t[k]).__name__}")
    is_mosi = len(obj) == 7
    family = str(options.get("family", "auto")).lower()
    if family == "auto":
        if is_mosi:
            family = "mosei" if "mosei" in stem else "mosi" if "mosi" in stem else ""
            if not family:
                raise DatasetError(f"{label_path.name}: a 7-tuple label pickle, but the name does "
                                   f"not say MOSI or MOSEI; pass --opt family=mosi|mosei")
    spk = SpeakerMap() if is_mosi else iemocap_speakers()
    zero = opt_choice("zero_label", options.get("zero_label", "ignore"),
                      ("ignore", "negative", "positive"))

    def build(ids: list) -> list[Dialogue]:
        ds = []
        for vid in ids:
            for k in ("videoIDs", "videoLabels", "videoSpeakers"):
                if vid not in t[k]:
                    raise DatasetError(f"{label_path.name}: {k}: no entry for dialogue {vid!r}")
            utts = [str(u) for u in t["videoIDs"][vid]]
            n = len(utts)
            raw_spk = [str(s) for s in t["videoSpeakers"][vid]]
            sp = spk.ids(raw_spk, n, label_path, f"videoSpeakers[{vid!r}]")
            extra = {}
            if is_mosi:
                score = np.asarray(t["videoLabels"][vid], dtype=np.float32).reshape(-1)
                if len(score) != n:
                    raise DatasetError(f"{label_path.name}: videoLabels[{vid!r}]: {len(score)} "
                                       f"labels for {n} utterances")
                lab = np.where(score > 0, 1, 0).astype(np.int64)
                lab[score == 0] = {"ignore": IGNORE_INDEX, "negative": 0, "positive": 1}[zero]
                extra["sentiment_score"] = score
            else:
                lab = label_vector(t["videoLabels"][vid], label_path, f"videoLabels[{vid!r}]")
                if len(lab) != n:
                    raise DatasetError(f"{label_path.name}: videoLabels[{vid!r}]: {len(lab)} "
                                       f"labels for {n} utterances in videoIDs")
            feats = {}
            for m, fd in folders.items():
                rows = [fd.load(u, s) for u, s in zip(utts, raw_spk)]
                dims = {r.shape[0] for r in rows if r is not None}
                if len(dims) > 1:
                    raise DatasetError(f"{fd.root}: dialogue {vid!r}: utterance features of "
                                       f"different dims {sorted(dims)}")
                if not dims:
                    raise DatasetError(f"{fd.root}: dialogue {vid!r}: no {m} features at all")
                dim = dims.pop()
                feats[m] = np.stack([r if r is not None else np.zeros(dim, np.float32)
                                     for r in rows])
            text = None
            if vid in t["videoSentences"]:
                text = sentences(t["videoSentences"][vid], n, label_path,
                                 f"videoSentences[{vid!r}]")
            ds.append(Dialogue(str(vid), feats, sp, lab, text, extra))
        return ds

    if is_mosi:
        ids = {k: id_list(t[k], label_path, f"element {layout.index(k)} ({k})")[0]
               for k in ("trainVids", "valVids", "testVids")}
        splits = {"train": build(ids["trainVids"]), "valid": build(ids["valVids"]),
                  "test": build(ids["testVids"])}
        labels = MOSEI_BINARY_LABELS
        validation = f"valid = the valVids list of {label_path.name} as stored"
        definition = None
        extra_labels = {"sentiment_score": []}
        vopts: dict = {}
    else:
        vopts = valid_options(options, 12, None)
        train_ids, tr_set = id_list(t["trainVid"], label_path, "element 4 (trainVid)")
        test_ids, _ = id_list(t["testVid"], label_path, "element 5 (testVid)")
        session = opt_int("test_session", options.get("test_session"), 1, allow_none=True)
        held = ""
        if session is not None:
            if session > 5:
                raise DatasetError(f"--opt test_session: expected 1..5, found {session}")
            everything = sorted(train_ids + test_ids, key=str)
            prefix = f"Ses0{session}"
            test_ids = [v for v in everything if str(v).startswith(prefix)]
            train_ids = [v for v in everything if not str(v).startswith(prefix)]
            if not test_ids:
                raise DatasetError(f"{label_path.name}: test_session={session}: no dialogue id "
                                   f"starts with {prefix!r}")
            tr_set = True
            held = f"; test = session {session} (GCNet leave-one-session-out fold)"
        train, valid, how = carve_valid(train_ids, tr_set, label_path.name, **vopts)
        splits = {"train": build(train), "valid": build(valid), "test": build(test_ids)}
        validation = how + held
        mx = max(int(d.labels.max()) for ds in splits.values() for d in ds)
        if family == "auto":
            family = "iemocap4" if mx <= 3 or "4way" in stem else "iemocap6"
        if family not in ("iemocap6", "iemocap4"):
            raise DatasetError(f"--opt family: a 6-tuple is IEMOCAP (iemocap6|iemocap4), found "
                               f"{family!r}")
        labels = IEMOCAP4_LABELS if family == "iemocap4" else IEMOCAP6_LABELS
        check_labels(splits, len(labels), label_path, f"family {family}")
        definition = "iemocap4-merged" if family == "iemocap4" else None
        extra_labels = None
        vopts["test_session"] = session
    notes = {"features_dir": str(feat_root.resolve()),
             "feature_folders": {m: fd.name for m, fd in folders.items()},
             "missing_features_filled": {m: fd.n_missing for m, fd in folders.items()}}
    if is_mosi:
        zero_id = {"ignore": IGNORE_INDEX, "negative": 0, "positive": 1}[zero]
        notes["binary_labels"] = f"negative (<0) -> 0, positive (>0) -> 1, score 0 -> {zero_id}"
    return finish(out, label_path, fmt="gcnet",
                  options={"family": family, "zero_label": zero, "missing_features": missing,
                           **vopts, **{f"{m}_feature": fd.name for m, fd in folders.items()}},
                  name=options.get("name"), family=family, label_names=labels, splits=splits,
                  speakers=spk, validation=validation, iemocap4_definition=definition,
                  extra_labels=extra_labels, notes=notes)
