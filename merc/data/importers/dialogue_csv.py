"""Any dialogue CSV with a column mapping (``merc data import --format dialogue-csv SRC OUT``).

For datasets that have no importer of their own - EmoryNLP (``Scene_ID`` scenes of a ``Season`` /
``Episode`` as dialogues, seven other emotions), DailyDialog exports, in-house annotations: one
row per utterance, text + speaker + label, the dialogue named by one or several columns. Like
``meld-csv`` it writes text, speakers and labels only (``modalities == {}``); ``merc data featurize``
adds the text features.

Options (``--opt key=value``; column names are matched exactly, then case-insensitively):

* ``dialogue``: the column(s) whose values together name a dialogue, joined by ``+`` or ``,``
  (EmoryNLP: ``Season+Episode+Scene_ID``). Default ``Dialogue_ID``.
* ``text`` / ``speaker`` / ``label``: the utterance, speaker and class columns (defaults
  ``Utterance`` / ``Speaker`` / ``Emotion``).
* ``order``: an integer column ordering the utterances of a dialogue (``Utterance_ID``); empty:
  file order. Default: ``Utterance_ID`` when the files have it.
* splits, either ``split_column`` (one file ``SRC`` or every CSV in the directory ``SRC``; values
  mapped by ``split_values=train:train,valid:dev,test:test``), or split files: ``SRC`` a directory
  whose CSVs are recognised by name (``*train*``, ``*dev*`` / ``*valid*`` / ``*val*``,
  ``*test*``), or named explicitly with ``files=train:a.csv,valid:b.csv,test:c.csv``.
* ``labels``: the class names in order, ``+`` / ``,`` separated. Default: **taken from the data**
  - every distinct value of the label column over all splits, sorted; a value outside an explicit
  list is an error naming the file and line. ``unlabelled``: values that mark an utterance
  without a label (kept in its dialogue for context, label -100), e.g. ``unlabelled=-``.
* ``family`` (default ``other``: the models' generic defaults; ``meld`` / ``iemocap6`` pick a
  paper's), ``name`` (default: the source's name), ``speaker_scope`` ``dialogue`` (ids by order of
  appearance in each dialogue, default) or ``global`` (one id per distinct train speaker name +
  ``other``), ``delimiter`` (default ``,``; ``tab`` for TSV).

A row with a missing column value, an order that is not an integer, or an unknown label raises
:class:`DatasetError` naming the file and the line on which the row starts.
"""
from __future__ import annotations

import csv
import io
import re
from pathlib import Path
from typing import Optional

import numpy as np

from merc.data.format import SPLITS, Dialogue, DatasetError, Manifest, write_dataset
from merc.data.importers import register_importer

SPLIT_NAME_PATTERNS = {"train": r"train", "valid": r"dev|valid|val(?![a-z])", "test": r"test"}


def _names(value, key: str) -> list[str]:
    """``a+b``, ``a,b`` or a YAML list -> ['a', 'b']."""
    if isinstance(value, (list, tuple)):
        items = [str(v) for v in value]
    else:
        items = re.split(r"[+,]", str(value))
    items = [s.strip() for s in items if s.strip()]
    if not items:
        raise DatasetError(f"--opt {key}: expected one or more names, found {value!r}")
    return items


def _mapping(value, key: str) -> dict[str, str]:
    """``train:a.csv,valid:b.csv`` -> {'train': 'a.csv', ...} (``=`` accepted for ``:``)."""
    if isinstance(value, dict):
        return {str(k): str(v) for k, v in value.items()}
    out = {}
    for item in _names(value, key):
        k, sep, v = item.partition(":") if ":" in item else item.partition("=")
        if not sep or not k.strip() or not v.strip():
            raise DatasetError(f"--opt {key}: expected split:value pairs like "
                               f"train:train.csv,valid:dev.csv,test:test.csv, found {item!r}")
        out[k.strip()] = v.strip()
    bad = [k for k in out if k not in SPLITS]
    if bad:
        raise DatasetError(f"--opt {key}: unknown split {bad[0]!r}; splits are {', '.join(SPLITS)}")
    return out


def _read(path: Path, delimiter: str) -> tuple[list[str], list[tuple[int, list[str]]]]:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = raw.decode("cp1252", errors="replace")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise DatasetError(f"{path}: empty file; expected a header row") from None
    except csv.Error as err:
        raise DatasetError(f"{path}:1: malformed CSV header: {err}") from None
    rows, start = [], reader.line_num + 1
    try:
        for rec in reader:
            if rec and not (len(rec) == 1 and not rec[0].strip()):
                if len(rec) != len(header):
                    raise DatasetError(f"{path}:{start}: expected {len(header)} columns "
                                       f"({', '.join(header)}), found {len(rec)}: {rec!r:.200}")
                rows.append((start, rec))
            start = reader.line_num + 1
    except csv.Error as err:
        raise DatasetError(f"{path}:{start}: malformed CSV: {err}") from None
    return header, rows


def _column(header: list[str], name: str, path: Path, key: str) -> int:
    if name in header:
        return header.index(name)
    low = [h.lower() for h in header]
    if name.lower() in low:
        return low.index(name.lower())
    raise DatasetError(f"{path}:1: no column {name!r} (--opt {key}); the header has "
                       f"{', '.join(header)}")


def _split_files(src: Path, files) -> dict[str, Path]:
    if files is not None:
        base = src if src.is_dir() else src.parent
        out = {s: (base / f) for s, f in _mapping(files, "files").items()}
    else:
        if not src.is_dir():
            raise DatasetError(f"{src}: one file needs --opt split_column=COLUMN (or pass a "
                               f"directory of split files, or --opt files=train:...,valid:...,"
                               f"test:...)")
        csvs = sorted(p for p in src.iterdir() if p.suffix.lower() in (".csv", ".tsv"))
        out = {}
        for split, pat in SPLIT_NAME_PATTERNS.items():
            hits = [p for p in csvs if re.search(pat, p.stem.lower())]
            if len(hits) != 1:
                raise DatasetError(
                    f"{src}: expected one {split} file (name matching {pat!r}), found "
                    f"{len(hits)}: {', '.join(p.name for p in hits) or 'none'} among "
                    f"{', '.join(p.name for p in csvs) or 'no CSV files'}; name them with --opt "
                    f"files=train:...,valid:...,test:...")
            out[split] = hits[0]
    missing = [s for s in SPLITS if s not in out]
    if missing:
        raise DatasetError(f"--opt files: no file for split(s) {', '.join(missing)}")
    for s, p in out.items():
        if not p.is_file():
            raise DatasetError(f"{p}: {s} split file does not exist")
    return out


@register_importer("dialogue-csv", "any dialogue CSV: columns mapped by options (dialogue key "
                                   "from one or more columns, text, speaker, label, order), "
                                   "split files or a split column, label names from the data")
def import_dialogue_csv(src: Path, out: Path, dialogue="Dialogue_ID", text: str = "Utterance",
                        speaker: str = "Speaker", label: str = "Emotion",
                        order: Optional[str] = None, split_column: Optional[str] = None,
                        split_values="train:train,valid:dev,test:test", files=None,
                        labels=None, unlabelled=None, family: str = "other",
                        name: Optional[str] = None, speaker_scope: str = "dialogue",
                        delimiter: str = ",") -> Manifest:
    """Import a dialogue CSV (or split CSVs) with the column mapping in the options (module doc)."""
    src, out = Path(src), Path(out)
    key_cols = _names(dialogue, "dialogue")
    delim = "\t" if str(delimiter).lower() in ("tab", "\\t", "\t") else str(delimiter)
    if len(delim) != 1:
        raise DatasetError(f"--opt delimiter: expected one character or 'tab', found {delimiter!r}")
    if speaker_scope not in ("dialogue", "global"):
        raise DatasetError(f"--opt speaker_scope: expected 'dialogue' or 'global', found "
                           f"{speaker_scope!r}")
    skip = set(_names(unlabelled, "unlabelled")) if unlabelled not in (None, "") else set()

    # (split, file) sources
    if split_column:
        paths = [src] if src.is_file() else sorted(
            p for p in src.iterdir() if p.suffix.lower() in (".csv", ".tsv")) if src.is_dir() else []
        if not paths:
            raise DatasetError(f"{src}: no CSV file to read")
        value_of = {v: s for s, v in _mapping(split_values, "split_values").items()}
        sources = [(None, p) for p in paths]
    else:
        sources = [(s, p) for s, p in _split_files(src, files).items()]

    # rows -> (split, dialogue key) -> [(order, line, text, speaker, label)]
    dialogues: dict[str, dict[tuple, list]] = {s: {} for s in SPLITS}
    files_used: dict[str, list[str]] = {s: [] for s in SPLITS}
    for split, path in sources:
        header, rows = _read(path, delim)
        ci = {k: _column(header, c, path, "dialogue") for k, c in enumerate(key_cols)}
        ct, cs, cl = (_column(header, text, path, "text"), _column(header, speaker, path,
                                                                    "speaker"),
                      _column(header, label, path, "label"))
        order_col = order if order is not None else (
            "Utterance_ID" if "utterance_id" in [h.lower() for h in header] else "")
        co = _column(header, order_col, path, "order") if order_col else None
        csplit = _column(header, split_column, path, "split_column") if split_column else None
        for line, rec in rows:
            where = f"{path}:{line}"
            s = split
            if csplit is not None:
                v = rec[csplit].strip()
                if v not in value_of:
                    raise DatasetError(f"{where}: split column {split_column!r} has {v!r}; "
                                       f"expected one of {sorted(value_of)} (--opt split_values)")
                s = value_of[v]
            key = tuple(rec[ci[k]].strip() for k in range(len(key_cols)))
            if any(not k for k in key):
                raise DatasetError(f"{where}: empty dialogue key column(s) "
                                   f"{'+'.join(key_cols)}: {key}")
            pos = None
            if co is not None and rec[co].strip():
                try:
                    pos = float(rec[co].strip())
                except ValueError:
                    raise DatasetError(f"{where}: order column {order_col!r} must be a number, "
                                       f"found {rec[co]!r}") from None
            lab = rec[cl].strip()
            if not lab and not skip:
                raise DatasetError(f"{where}: empty label in column {label!r} (mark unlabelled "
                                   f"utterances with --opt unlabelled=VALUE)")
            dialogues[s].setdefault(key, []).append(
                (pos, line, rec[ct].replace("\r\n", "\n").strip(), rec[cs].strip(), lab, where))
        if str(path) not in {f for v in files_used.values() for f in v}:
            for s in ([split] if split else SPLITS):
                files_used[s].append(str(path))
    empty = [s for s in SPLITS if not dialogues[s]]
    if empty:
        raise DatasetError(f"{src}: no utterances for split(s) {', '.join(empty)}")

    # label names: explicit, or every distinct value in the data (sorted)
    seen = sorted({r[4] for d in dialogues.values() for rs in d.values() for r in rs} - skip
                  - {""})
    names = _names(labels, "labels") if labels is not None else seen
    index = {n: i for i, n in enumerate(names)}
    if len(index) != len(names):
        raise DatasetError(f"--opt labels: repeated class name in {names}")

    # speakers
    if speaker_scope == "global":
        spk_names = sorted({r[3] for rs in dialogues["train"].values() for r in rs})
        spk_index = {n: i for i, n in enumerate(spk_names)}
        spk_names.append("other")
        num_speakers = len(spk_names)
    else:
        spk_names = None
        num_speakers = max(len({r[3] for r in rs}) for d in dialogues.values() for rs in d.values())

    splits = {}
    for s in SPLITS:
        ds = []
        for key in sorted(dialogues[s], key=_natural):
            rs = dialogues[s][key]
            if all(r[0] is not None for r in rs):
                rs = sorted(rs, key=lambda r: r[0])    # stable: ties keep file order
            ys = []
            for r in rs:
                if r[4] in skip or (not r[4] and skip):
                    ys.append(-100)
                elif r[4] in index:
                    ys.append(index[r[4]])
                else:
                    raise DatasetError(f"{r[5]}: label {r[4]!r} is not one of --opt labels "
                                       f"{names}")
            if speaker_scope == "global":
                spk = [spk_index.get(r[3], num_speakers - 1) for r in rs]
            else:
                first: dict[str, int] = {}
                spk = [first.setdefault(r[3], len(first)) for r in rs]
            ds.append(Dialogue("/".join(key), {}, np.array(spk, np.int64), np.array(ys, np.int64),
                               text=[r[2] for r in rs]))
        splits[s] = ds

    manifest = Manifest(
        name=name or src.stem, family=family, num_classes=len(names), label_names=list(names),
        modalities={}, num_speakers=num_speakers, speaker_names=spk_names,
        speaker_scope=speaker_scope, splits={}, has_text=True,
        validation=(f"split column {split_column!r}" if split_column else "the valid split file"),
        provenance={"importer": "dialogue-csv", "src": str(src.resolve()),
                    "files": files_used, "columns": {
                        "dialogue": key_cols, "text": text, "speaker": speaker, "label": label,
                        "order": order, "split_column": split_column},
                    "labels_from": "option labels" if labels is not None else "the data (sorted)",
                    "unlabelled": sorted(skip)})
    return write_dataset(out, manifest, splits)


def _natural(key: tuple) -> tuple:
    """Dialogue keys in natural order (``s01/e02/c3`` before ``s01/e10/c1``; 2 before 10)."""
    return tuple(tuple((0, int(t)) if t.isdigit() else (1, t) for t in re.split(r"(\d+)", k))
                 for k in key)


__all__ = ["import_dialogue_csv"]
