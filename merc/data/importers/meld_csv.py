"""MELD from its public CSVs (``merc data import --format meld-csv DIR OUT``).

Reads ``{train,dev,test}_sent_emo.csv`` of declare-lab/MELD (columns ``Sr No., Utterance, Speaker,
Emotion, Sentiment, Dialogue_ID, Utterance_ID, Season, Episode, StartTime, EndTime``) into the
canonical format with **text, speakers and labels only**: the manifest has ``modalities == {}``
until ``merc data featurize`` adds a ``text`` modality (the audio and video are not in the CSVs).

Decisions (each is recorded in the manifest):

* **Splits**: ``train`` -> train, ``dev`` (the official development split) -> ``valid``, ``test``.
* **Dialogues** in ascending ``Dialogue_ID`` order, named ``dia<ID>`` as MELD's clip files are;
  the utterances of a dialogue in ascending ``Utterance_ID`` (a stable sort, so rows that share an
  id keep file order). Gaps in the utterance ids are normal in MELD (clips the authors removed:
  e.g. train dialogue 1 has ids 0-5, 8) and are kept as gaps; train has no dialogue 60. A row
  repeated verbatim (same dialogue, utterance id, text, speaker, labels) is kept once; rows that
  share an id but differ are all kept; both counts go to ``provenance``. An empty ``Utterance_ID``
  keeps that dialogue in file order.
* **Classes**: MELD's canonical order ``neutral 0, surprise 1, fear 2, sadness 3, joy 4,
  disgust 5, anger 6`` (MMGCN / COGMEN / CORECT). Sentiment is the extra label set
  ``sentiment``: ``neutral 0, positive 1, negative 2``.
* **Speakers**: ``speaker_scope="dialogue"`` (default) numbers the speakers of each dialogue in
  order of first appearance, as MMGCN-style MELD features do; ``num_speakers`` is the largest
  number of speakers in any dialogue of any split (9 on MELD, the "9 speakers" of MMGCN/CORECT).
  ``speaker_scope="global"`` instead keeps the ``top_speakers`` most frequent train speakers (the
  six Friends by default) with names, plus one ``other`` id.
* **Text repair**: the files are read as UTF-8 (a BOM is accepted; a file that is not valid UTF-8
  is read as cp1252). Mojibake - UTF-8 bytes that were once decoded as cp1252/latin-1, e.g.
  ``'â\\x80\\x99'`` or ``'â€™'`` for ``’`` - is repaired run by run, only where the run decodes
  as valid UTF-8; stray C1 controls such as ``'\\x92'`` are mapped through cp1252 (-> ``’``).
  Correct text (``’``, ``é``, ``…``) is never touched, and typographic punctuation is kept, not
  folded to ASCII (:func:`fix_mojibake`). ``repair_text=False`` keeps the raw strings. The
  number of rows changed per split goes to ``provenance`` (``repaired_rows``). The copy in
  ``shared/data/meld`` is already clean UTF-8 (0 repairs); the repair exists for the copies
  that circulate with the mojibake.
* Line breaks inside a quoted utterance become ``\\n``; surrounding whitespace is stripped.

A malformed row (wrong number of columns, a non-integer ``Dialogue_ID``/``Utterance_ID``, an
unknown emotion or sentiment) raises :class:`DatasetError` naming the file and the line on which
the row starts.
"""
from __future__ import annotations

import csv
import io
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from merc.data.format import Dialogue, DatasetError, Manifest, write_dataset
from merc.data.importers import register_importer

EMOTIONS = ["neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger"]
SENTIMENTS = ["neutral", "positive", "negative"]
COLUMNS = ["Sr No.", "Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID", "Utterance_ID",
           "Season", "Episode", "StartTime", "EndTime"]
REQUIRED = ["Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID", "Utterance_ID"]
FILES = {"train": "train_sent_emo.csv", "valid": "dev_sent_emo.csv", "test": "test_sent_emo.csv"}


# ----------------------------------------------------------------------------- text repair
def _as_byte(c: str) -> Optional[int]:
    """The byte a character stands for when UTF-8 was mis-decoded as cp1252 (or latin-1)."""
    o = ord(c)
    if o < 0x80:
        return o
    try:
        return c.encode("cp1252")[0]
    except UnicodeEncodeError:
        return o if o < 0x100 else None  # C1 controls cp1252 leaves undefined (\x81, \x8d...)


_SUSPECT = re.compile("[\u00c2-\u00f4\u0080-\u009f]")


def fix_mojibake(s: str) -> str:
    """Undo cp1252/latin-1 mojibake of UTF-8 text, run by run; leave correct text as it is."""
    if not _SUSPECT.search(s):
        return s
    out, i, n = [], 0, len(s)
    while i < n:
        b = _as_byte(s[i])
        need = (0 if b is None else 1 if 0xC2 <= b <= 0xDF else 2 if 0xE0 <= b <= 0xEF
                else 3 if 0xF0 <= b <= 0xF4 else 0)
        if need:
            bs = [_as_byte(c) for c in s[i:i + need + 1]]
            if len(bs) == need + 1 and all(x is not None and 0x80 <= x <= 0xBF for x in bs[1:]):
                try:
                    out.append(bytes(bs).decode("utf-8"))
                    i += need + 1
                    continue
                except UnicodeDecodeError:
                    pass
        c = s[i]
        if "\u0080" <= c <= "\u009f":  # a lone C1 control: the cp1252 character it encodes
            try:
                c = bytes([ord(c)]).decode("cp1252")
            except UnicodeDecodeError:
                pass
        out.append(c)
        i += 1
    return "".join(out)


# ----------------------------------------------------------------------------- parsing
@dataclass
class _Row:
    line: int
    dialogue: int
    uid: Optional[int]
    text: str
    speaker: str
    emotion: int
    sentiment: int


def _read_text(path: Path) -> tuple[str, str]:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig"), "utf-8"
    except UnicodeDecodeError:
        return raw.decode("cp1252", errors="replace"), "cp1252"


def _int(value: str, col: str, where: str) -> int:
    try:
        return int(value.strip())
    except ValueError:
        raise DatasetError(f"{where}: column {col!r} must be an integer, found {value!r}") from None


def read_meld_csv(path: Path, repair: bool = True) -> tuple[list[_Row], dict]:
    """Parse one MELD CSV into rows (errors name the file and line); returns rows and stats."""
    text, encoding = _read_text(path)
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise DatasetError(f"{path}: empty file; expected a header {COLUMNS}") from None
    header = [h.strip() for h in header]
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise DatasetError(f"{path}:1: header lacks column(s) {missing}; expected the MELD layout "
                           f"{COLUMNS}, found {header}")
    col = {c: header.index(c) for c in REQUIRED}
    rows: list[_Row] = []
    repaired = 0
    start = reader.line_num + 1
    try:
        for rec in reader:
            where = f"{path}:{start}"
            if not rec or (len(rec) == 1 and not rec[0].strip()):  # blank line
                start = reader.line_num + 1
                continue
            if len(rec) != len(header):
                raise DatasetError(f"{where}: expected {len(header)} columns "
                                   f"({', '.join(header)}), found {len(rec)}: {rec!r:.200}")
            emo = rec[col["Emotion"]].strip().lower()
            if emo not in EMOTIONS:
                raise DatasetError(f"{where}: unknown emotion {rec[col['Emotion']]!r}; "
                                   f"expected one of {EMOTIONS}")
            sen = rec[col["Sentiment"]].strip().lower()
            if sen not in SENTIMENTS:
                raise DatasetError(f"{where}: unknown sentiment {rec[col['Sentiment']]!r}; "
                                   f"expected one of {SENTIMENTS}")
            did = _int(rec[col["Dialogue_ID"]], "Dialogue_ID", where)
            uraw = rec[col["Utterance_ID"]].strip()
            uid = _int(uraw, "Utterance_ID", where) if uraw else None
            utt = rec[col["Utterance"]].replace("\r\n", "\n").replace("\r", "\n").strip()
            spk = rec[col["Speaker"]].strip()
            if repair:
                fixed, spk = fix_mojibake(utt), fix_mojibake(spk)
                repaired += fixed != utt
                utt = fixed
            rows.append(_Row(start, did, uid, utt, spk, EMOTIONS.index(emo), SENTIMENTS.index(sen)))
            start = reader.line_num + 1
    except csv.Error as err:
        raise DatasetError(f"{path}:{start}: malformed CSV: {err}") from None
    return rows, {"encoding": encoding, "repaired_rows": repaired}


def _group(rows: list[_Row]) -> tuple[list[tuple[int, list[_Row]]], int, int]:
    """Dialogues in id order, utterances in id order; drop verbatim repeats."""
    by: dict[int, list[_Row]] = {}
    for r in rows:
        by.setdefault(r.dialogue, []).append(r)
    dropped = shared = 0
    out = []
    for did in sorted(by):
        rs = by[did]
        if all(r.uid is not None for r in rs):
            rs = sorted(rs, key=lambda r: r.uid)  # stable
        seen: dict[tuple, _Row] = {}
        kept = []
        for r in rs:
            key = (r.uid, r.text, r.speaker, r.emotion, r.sentiment)
            if r.uid is not None and key in seen:
                dropped += 1
                continue
            seen[key] = r
            kept.append(r)
        ids = Counter(r.uid for r in kept if r.uid is not None)
        shared += sum(c - 1 for c in ids.values() if c > 1)
        out.append((did, kept))
    return out, dropped, shared


@register_importer("meld-csv", "MELD text, speakers, emotion and sentiment from the public "
                               "{train,dev,test}_sent_emo.csv (no feature modalities until "
                               "`merc data featurize`)")
def import_meld_csv(src: Path, out: Path, speaker_scope: str = "dialogue", top_speakers: int = 6,
                    repair_text: bool = True, name: str = "meld-csv") -> Manifest:
    """Import the MELD CSVs in ``src`` into ``out`` (see the module docstring for decisions).

    ``speaker_scope``: ``"dialogue"`` (ids by order of appearance within each dialogue, the
    MMGCN convention) or ``"global"`` (the ``top_speakers`` most frequent train speakers, then one
    ``other`` id). ``repair_text``: undo mojibake (see :func:`fix_mojibake`).
    """
    src, out = Path(src), Path(out)
    if speaker_scope not in ("dialogue", "global"):
        raise DatasetError(f"--opt speaker_scope: expected 'dialogue' or 'global', found "
                           f"{speaker_scope!r}")
    top_speakers = int(top_speakers)
    repair = repair_text if isinstance(repair_text, bool) else str(repair_text).lower() in (
        "1", "true", "yes", "on")
    if not src.is_dir():
        raise DatasetError(f"{src}: expected a directory holding {', '.join(FILES.values())}")
    absent = [f for f in FILES.values() if not (src / f).is_file()]
    if absent:
        raise DatasetError(f"{src}: missing MELD CSV file(s) {absent}; expected "
                           f"{', '.join(FILES.values())}")

    grouped, stats = {}, {}
    for split, fname in FILES.items():
        rows, st = read_meld_csv(src / fname, repair)
        if not rows:
            raise DatasetError(f"{src / fname}: no utterance rows")
        dialogues, dropped, shared = _group(rows)
        grouped[split] = dialogues
        stats[split] = st | {"file": fname, "rows": len(rows), "dropped_verbatim_repeats": dropped,
                             "kept_shared_utterance_ids": shared}

    speaker_names = None
    if speaker_scope == "global":
        freq = Counter(r.speaker for _, rs in grouped["train"] for r in rs)
        names = [s for s, _ in sorted(freq.items(), key=lambda kv: (-kv[1], kv[0]))][:top_speakers]
        speaker_names = names + ["other"]
        index = {s: i for i, s in enumerate(names)}
        spk_of = lambda rs: np.array([index.get(r.speaker, len(names)) for r in rs], np.int64)
        num_speakers = len(speaker_names)
    else:
        def spk_of(rs):
            order: dict[str, int] = {}
            return np.array([order.setdefault(r.speaker, len(order)) for r in rs], np.int64)
        num_speakers = max(len({r.speaker for r in rs}) for d in grouped.values() for _, rs in d)

    splits = {}
    for split, dialogues in grouped.items():
        splits[split] = [
            Dialogue(f"dia{did}", {}, spk_of(rs), np.array([r.emotion for r in rs], np.int64),
                     text=[r.text for r in rs],
                     extra_labels={"sentiment": np.array([r.sentiment for r in rs], np.int64)})
            for did, rs in dialogues]

    manifest = Manifest(
        name=name, family="meld", num_classes=len(EMOTIONS), label_names=list(EMOTIONS),
        modalities={}, num_speakers=num_speakers, speaker_names=speaker_names,
        speaker_scope=speaker_scope, splits={}, extra_labels={"sentiment": list(SENTIMENTS)},
        validation="official MELD dev split (dev_sent_emo.csv)", has_text=True,
        provenance={"source": "declare-lab/MELD data/MELD/{train,dev,test}_sent_emo.csv "
                              "(GNU GPL v3)",
                    "importer": "meld-csv", "src": str(src.resolve()), "repair_text": repair,
                    "top_speakers": top_speakers if speaker_scope == "global" else None,
                    "files": stats})
    return write_dataset(out, manifest, splits)


__all__ = ["EMOTIONS", "SENTIMENTS", "import_meld_csv", "read_meld_csv", "fix_mojibake"]
