"""The generic dialogue-CSV importer on an EmoryNLP-shaped file set (scenes of episodes as
dialogues, seven other emotions, speakers as list strings, rows out of order), the import
--help listing, and `merc train`'s resolved config and per-class F1."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from merc.data.format import DatasetError, read_manifest, read_split
from merc.data.importers import run_import

HEADER = ["Utterance", "Speaker", "Emotion", "Scene_ID", "Utterance_ID", "Season", "Episode",
          "Start_Time", "End_Time"]
EMORY = ["Joyful", "Mad", "Neutral", "Peaceful", "Powerful", "Sad", "Scared"]


def _rows(split_seed: int, n_scenes: int):
    rng = np.random.default_rng(split_seed)
    rows = []
    for k in range(n_scenes):
        season, episode, scene = 1 + k // 4, 1 + (k // 2) % 2, 1 + k % 2
        for u in range(int(rng.integers(3, 7))):
            who = ["['Monica Geller']", "['Ross Geller']", "['Rachel Green']"][u % (2 + k % 2)]
            rows.append([f"line {u} of s{season}e{episode}c{scene}", who,
                         EMORY[int(rng.integers(len(EMORY)))], str(scene), str(u), str(season),
                         str(episode), "00:00:01,000", "00:00:02,000"])
    rows.reverse()                       # out of order: Utterance_ID must order them
    return rows


def _write(path, rows, header=HEADER):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


@pytest.fixture
def emory_dir(tmp_path):
    d = tmp_path / "emorynlp"
    d.mkdir()
    for split, seed, n in (("train", 0, 8), ("dev", 1, 4), ("test", 2, 4)):
        _write(d / f"emorynlp_{split}_final.csv", _rows(seed, n))
    return d


def test_emorynlp_like_csvs_import_with_a_column_mapping(emory_dir, tmp_path):
    out = tmp_path / "D"
    m = run_import("dialogue-csv", emory_dir, out, dialogue="Season+Episode+Scene_ID",
                   family="other", name="emorynlp")
    seen = set()
    for f in emory_dir.iterdir():
        seen |= {r["Emotion"] for r in csv.DictReader(open(f))}
    assert m.label_names == sorted(seen) and m.num_classes == len(seen)
    assert m.modalities == {} and m.has_text and m.family == "other"
    assert {s: i.dialogues for s, i in m.splits.items()} == {"train": 8, "valid": 4, "test": 4}
    man = read_manifest(out)
    arr = read_split(out, "train", man)
    # first train dialogue = season 1 episode 1 scene 1, utterances in Utterance_ID order
    first = json.loads((out / "train" / "dialogues.json").read_text())[0]
    assert first == "1/1/1"
    n0 = int(arr.offsets[1])
    texts = [json.loads(line) for line in (out / "train" / "text.jsonl").read_text().splitlines()]
    assert texts[:n0] == [f"line {u} of s1e1c1" for u in range(n0)]
    assert arr.speakers[:n0].tolist() == [u % 2 for u in range(n0)]   # order of appearance
    src = [r for r in csv.DictReader(open(emory_dir / "emorynlp_train_final.csv"))
           if (r["Season"], r["Episode"], r["Scene_ID"]) == ("1", "1", "1")]
    want = [m.label_names.index(r["Emotion"]) for r in sorted(src, key=lambda r:
                                                               int(r["Utterance_ID"]))]
    assert arr.labels[:n0].tolist() == want


def test_split_column_unlabelled_and_errors(emory_dir, tmp_path):
    rows = []
    for split, name in (("train", "emorynlp_train_final.csv"), ("dev", "emorynlp_dev_final.csv"),
                        ("test", "emorynlp_test_final.csv")):
        for r in csv.reader(open(emory_dir / name)):
            if r[0] != "Utterance":
                rows.append(r + [split])
    rows[0][2] = "-"                                       # one utterance without a label
    one = tmp_path / "all.csv"
    _write(one, rows, HEADER + ["Part"])
    m = run_import("dialogue-csv", one, tmp_path / "D1", dialogue="Season,Episode,Scene_ID",
                   split_column="Part", unlabelled="-")
    assert "-" not in m.label_names and (read_split(tmp_path / "D1", "train", m).labels
                                         == -100).sum() == 1
    with pytest.raises(DatasetError, match=r"emorynlp_train_final.csv:\d+: label '\w+' is not one "
                                           r"of --opt labels"):
        run_import("dialogue-csv", emory_dir, tmp_path / "D2",
                   dialogue="Season+Episode+Scene_ID", labels="Joyful+Sad")
    with pytest.raises(DatasetError, match="no column 'Scene' .*--opt dialogue"):
        run_import("dialogue-csv", emory_dir, tmp_path / "D3", dialogue="Season+Scene")
    with pytest.raises(DatasetError, match="split column 'Part' has 'train'"):
        run_import("dialogue-csv", one, tmp_path / "D4", dialogue="Scene_ID",
                   split_column="Part", split_values="train:tr,valid:dev,test:test",
                   unlabelled="-")


def test_import_help_lists_formats_and_options(capsys):
    from merc.cli import main
    with pytest.raises(SystemExit) as e:
        main(["data", "import", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for fmt in ("dialogue-csv", "meld-csv", "iemocap-9tuple", "gcnet"):
        assert f"\n  {fmt}\n" in text
    assert "split_column (None)" in text and "four_way none|kept|merged" in text


def test_train_prints_resolved_config_and_per_class_f1(tiny_dir, capsys):
    from merc.cli import main
    assert main(["train", "corect", "--data", str(tiny_dir), "--epochs", "1", "--threads", "1",
                 "--set", "hidden_size=16", "--set", "gt_heads=2", "--set", "pcm_layers=1",
                 "--set", "self_att_layers=1", "--set", "text_encoder_layers=1",
                 "--set", "text_encoder_ff=32"]) == 0
    out = capsys.readouterr().out
    assert "paper defaults of iemocap6" in out
    assert "hidden_size=16*" in out and "window_past=11†" in out and "lr=0.0003†" in out
    assert "dropout=0.5†" in out and "weight_decay=0.0 " in out      # code default: no mark
    line = next(ln for ln in out.splitlines() if ln.startswith("per-class F1"))
    assert all(f"{n} " in line for n in read_manifest(tiny_dir).label_names)
