"""benchmarks/real_data.py on a dataset that is not MELD (the tiny synthetic, ATV, family
iemocap6): the model list comes from the registry, the family's defaults and all of the
dataset's modalities are used, and the table is titled by the dataset."""
from __future__ import annotations

import json

import pytest


def test_models_from_registry_and_any_featurized_dataset(tiny_dir, tmp_path):
    pytest.importorskip("sklearn")
    from benchmarks import real_data as rd
    from merc.models import model_names
    assert rd.dataset_modalities(tiny_dir) == "ATV" and rd.has_text_features(tiny_dir)
    skipped = []
    ok = rd.accepting_models(tiny_dir, "ATV", log=skipped.append)
    assert set(ok) | {s.split()[1] for s in skipped} == set(model_names())
    assert {"corect", "mmgcn", "dialoguegcn"} <= set(ok)
    # a text-only view: models needing several modalities drop out, with the reason logged
    t_only = rd.accepting_models(tiny_dir, "T", log=skipped.append)
    assert set(t_only) <= set(model_names()) and "mmgcn" in t_only
    out = tmp_path / "out"
    sec = rd.run_real_data(tiny_dir, ["mmgcn"], [0], {"mmgcn": 1}, workers=1, out_dir=out,
                           log=lambda s: None)
    assert sec["setup"]["modalities"] == "ATV" and sec["setup"]["family (paper defaults)"] == \
        "iemocap6"
    assert sec["tables"][0]["title"].startswith("synthetic-tiny (iemocap6, modalities ATV)")
    f = sec["fits"][0]
    assert "error" not in f and f["best_epoch"] == 1
    doc = json.loads((out / "real_data.json").read_text())
    assert doc["benchmarks"]["real_data"]["baselines"]["majority"]["test_wf1"] >= 0
