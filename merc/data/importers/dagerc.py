"""Importer of the DAG-ERC / MultiDAG+CL JSON feature files (reference_impls.md §2, §5a).

Layout of a dataset folder (``../data/<DATASET>/`` in those repos)::

    {train,dev,test}_data_roberta_mm.json.feature   MultiDAG+CL: cls = [text, audio, visual]
    {train,dev,test}_data_roberta.json.feature      DAG-ERC: cls = one RoBERTa text vector
    speaker_vocab.pkl, label_vocab.pkl              {'stoi': {...}, 'itos': [...]} (optional)

Each file is a JSON list of dialogues; a dialogue is a list of utterance dicts with keys
``text, speaker, label, cls``. Labels and speakers are names looked up in the vocab pickles
(read with the restricted unpickler); integer labels are taken as ids. A missing label becomes
-100 (DAG-ERC's -1). MultiDAG+CL concatenates the three ``cls`` parts into one vector; here they
stay three modalities (text, audio, visual) so that modality subsets need no file edits.

Label order: where the label names are exactly IEMOCAP's six or MELD's seven, the ids are
remapped to the canonical order used by every other importer (hap0 sad1 neu2 ang3 exc4 fru5;
neutral0 surprise1 fear2 sadness3 joy4 disgust5 anger6) so results compare across sources;
``label_order=vocab`` keeps the vocab's order. Validation is the published ``dev`` file.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import numpy as np

from merc.data.format import IGNORE_INDEX, DatasetError, Dialogue, Manifest
from merc.data.importers import register_importer
from merc.data.importers.pickles import (IEMOCAP6_LABELS, MELD_LABELS, SpeakerMap, finish,
                                         opt_choice, _known)

SPLIT_FILES = {"train": "train", "valid": "dev", "test": "test"}
VARIANTS = {"mm": "roberta_mm", "roberta": "roberta"}
#: names DAG-ERC-style vocabs may use for the IEMOCAP classes
IEMOCAP_SYNONYMS = {"happy": "hap", "happiness": "hap", "sadness": "sad", "neutral": "neu",
                    "angry": "ang", "anger": "ang", "excited": "exc", "excitement": "exc",
                    "frustrated": "fru", "frustration": "fru"}


def _files(root: Path, variant: str) -> tuple[str, dict[str, Path]]:
    order = ["mm", "roberta"] if variant == "auto" else [variant]
    for v in order:
        paths = {s: root / f"{f}_data_{VARIANTS[v]}.json.feature" for s, f in SPLIT_FILES.items()}
        if all(p.is_file() for p in paths.values()):
            return v, paths
    want = [f"{f}_data_{VARIANTS[v]}.json.feature" for v in order for f in SPLIT_FILES.values()]
    have = sorted(p.name for p in root.glob("*.json.feature"))
    raise DatasetError(f"{root}: expected the files {', '.join(want)}; found "
                       f"{', '.join(have) or 'no *.json.feature file'}")


def _vocab(path: Path) -> Optional[list[str]]:
    if not path.is_file():
        return None
    from merc.data.unpickle import load_pickle
    v = load_pickle(path)
    if not isinstance(v, dict) or ("itos" not in v and "stoi" not in v):
        raise DatasetError(f"{path.name}: expected a dict with keys 'stoi' and 'itos', found "
                           f"{sorted(map(str, v)) if isinstance(v, dict) else type(v).__name__}")
    if "itos" in v:
        itos = [str(x) for x in v["itos"]]
    else:
        stoi = dict(v["stoi"])
        itos = [None] * len(stoi)
        for k, i in stoi.items():
            if not 0 <= int(i) < len(stoi) or itos[int(i)] is not None:
                raise DatasetError(f"{path.name}: 'stoi' ids are not 0..{len(stoi) - 1}")
            itos[int(i)] = str(k)
    if "stoi" in v:
        for k, i in dict(v["stoi"]).items():
            if int(i) >= len(itos) or itos[int(i)] != str(k):
                raise DatasetError(f"{path.name}: 'stoi'[{k!r}] = {i} disagrees with 'itos'")
    return itos


def _canonical(names: list[str]) -> tuple[str, Optional[list[str]]]:
    """(family, canonical label names) where ``names`` are a known label set."""
    iem = [IEMOCAP_SYNONYMS.get(n.lower(), n.lower()) for n in names]
    if sorted(iem) == sorted(IEMOCAP6_LABELS):
        return "iemocap6", iem
    low = [n.lower() for n in names]
    if sorted(low) == sorted(MELD_LABELS):
        return "meld", low
    return "other", None


@register_importer("dagerc-json", "DAG-ERC / MultiDAG+CL {train,dev,test}_data_roberta[_mm]"
                   ".json.feature + speaker/label vocab pickles; option variant=auto|mm|roberta")
def import_dagerc_json(src: Path, out: Path, **options: Any) -> Manifest:
    """DAG-ERC/MultiDAG+CL JSON features (module docstring).

    Options: ``variant`` auto|mm|roberta (auto prefers the _mm files); ``family``
    auto|iemocap6|meld|other (auto: from the label names); ``label_order`` auto|vocab;
    ``name``. ``src`` is the folder (or one of its files).
    """
    _known(options, {"variant", "family", "label_order", "name"})
    root = src if src.is_dir() else src.parent
    variant, paths = _files(root, opt_choice("variant", options.get("variant", "auto"),
                                             ("auto", "mm", "roberta")))
    label_order = opt_choice("label_order", options.get("label_order", "auto"), ("auto", "vocab"))
    label_itos = _vocab(root / "label_vocab.pkl")
    speaker_itos = _vocab(root / "speaker_vocab.pkl")

    raw: dict[str, list] = {}
    for split, p in paths.items():
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise DatasetError(f"{p.name}: not valid JSON ({err})") from None
        if not isinstance(data, list):
            raise DatasetError(f"{p.name}: expected a list of dialogues, found "
                               f"{type(data).__name__}")
        raw[split] = data

    # label names: vocab itos, else the sorted string labels of all files
    str_labels = sorted({u["label"] for ds in raw.values() for d in ds for u in d
                         if isinstance(u, dict) and isinstance(u.get("label"), str)})
    if label_itos is None:
        if not str_labels:
            raise DatasetError(f"{root}: integer labels and no label_vocab.pkl: cannot name the "
                               f"classes")
        label_itos = str_labels
    else:
        unknown = [x for x in str_labels if x not in label_itos]
        if unknown:
            raise DatasetError(f"{paths['train'].name}: label {unknown[0]!r} is not in "
                               f"label_vocab.pkl itos {label_itos}")
    fam, canon = _canonical(label_itos)
    family = str(options.get("family", "auto")).lower()
    if family == "auto":
        family = fam
    remap = np.arange(len(label_itos))
    label_names = list(label_itos)
    if canon is not None and label_order == "auto":
        target = IEMOCAP6_LABELS if fam == "iemocap6" else MELD_LABELS
        remap = np.array([target.index(c) for c in canon])
        label_names = list(target)
    spk = SpeakerMap(speaker_itos, fixed=speaker_itos is not None)

    modality_names = None
    splits: dict[str, list[Dialogue]] = {}
    for split, data in raw.items():
        p = paths[split]
        ds = []
        for di, d in enumerate(data):
            if not isinstance(d, list) or not d:
                raise DatasetError(f"{p.name}: dialogue {di}: expected a non-empty list of "
                                   f"utterance dicts, found {type(d).__name__}")
            labels, speakers, texts = [], [], []
            rows: list[list] = []
            for ui, u in enumerate(d):
                where = f"{p.name}: dialogue {di} utterance {ui}"
                if not isinstance(u, dict) or "cls" not in u or "speaker" not in u:
                    raise DatasetError(f"{where}: expected a dict with keys text, speaker, "
                                       f"label, cls; found "
                                       f"{sorted(u) if isinstance(u, dict) else type(u).__name__}")
                lab = u.get("label")
                if lab is None or lab == -1:
                    labels.append(IGNORE_INDEX)
                elif isinstance(lab, str):
                    labels.append(int(remap[label_itos.index(lab)]))
                elif isinstance(lab, int) and 0 <= lab < len(label_itos):
                    labels.append(int(remap[lab]))
                else:
                    raise DatasetError(f"{where}: label {lab!r}: expected a name in "
                                       f"{label_itos} or an id in [0, {len(label_itos)})")
                speakers.append(u["speaker"])
                texts.append(str(u.get("text", "")))
                cls = u["cls"]
                parts = cls if (isinstance(cls, list) and cls and isinstance(cls[0], list)) \
                    else [cls]
                names = ("text", "audio", "visual")[:len(parts)] if len(parts) in (1, 3) else None
                if names is None:
                    raise DatasetError(f"{where}: 'cls': expected one text vector or a list "
                                       f"[text, audio, visual], found a list of {len(parts)}")
                if modality_names is None:
                    modality_names = names
                elif names != modality_names:
                    raise DatasetError(f"{where}: 'cls' has {len(parts)} parts; earlier "
                                       f"utterances had {len(modality_names)}")
                rows.append(parts)
            feats = {}
            for k, m in enumerate(modality_names):
                try:
                    feats[m] = np.asarray([r[k] for r in rows], dtype=np.float32)
                except ValueError:
                    raise DatasetError(f"{p.name}: dialogue {di}: 'cls'[{k}] ({m}) vectors have "
                                       f"different lengths") from None
            n = len(d)
            sp = spk.ids([str(s) for s in speakers], n, p, f"dialogue {di} speakers")
            ds.append(Dialogue(f"{split}_{di}", feats, sp, np.asarray(labels, np.int64), texts))
        splits[split] = ds
    return finish(out, paths["train"], fmt="dagerc-json",
                  options={"variant": variant, "family": family, "label_order": label_order},
                  name=options.get("name") or root.name, family=family, label_names=label_names,
                  splits=splits, speakers=spk,
                  validation=f"valid = the published {paths['valid'].name} as stored",
                  notes={"source_dir": str(root.resolve()),
                         "label_vocab_order": label_itos,
                         "label_remap": remap.tolist(),
                         "vocabs": {"label": (root / "label_vocab.pkl").is_file(),
                                    "speaker": (root / "speaker_vocab.pkl").is_file()}})
