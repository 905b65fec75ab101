"""MultiDAG+CL sweeps (search_spaces/multidag.yaml, sweeps/multidag.py): the spec validates with
the paper's numbers, bad curriculum keys are one clear error, and the quick `buckets` study runs
end to end with its table and plots on the MLflow parent run.

Budget: one quick study (2 bucket counts x 2 seeds on ``synthetic:tiny``) in the session Ray, plus
spec checks that start nothing.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from merc.sweep.spec import SpecError, load_spec

REPO = Path(__file__).resolve().parents[1]
SPEC = str(REPO / "search_spaces" / "multidag.yaml")


def test_repo_multidag_spec_valid():
    spec = load_spec(SPEC)
    assert spec.model == "multidag" and spec.name == "multidag"
    assert spec.defaults["iemocap6"]["strategy"] == "bucket_cl"
    assert (spec.defaults["iemocap6"]["cl_buckets"], spec.defaults["meld"]["cl_buckets"]) == (5, 12)
    b = spec.studies["buckets"]
    assert [p.label for p in b.points] == ["4", "5", "7", "10", "15"] and b.reference == "5"
    assert b.paper["iemocap6"] == {"4": 68.05, "5": 69.08, "7": 68.84, "10": 68.38, "15": 68.36}
    bm = spec.studies["buckets_meld"]
    assert [p.label for p in bm.points] == ["5", "8", "10", "12", "14"] and bm.reference == "12"
    assert bm.paper["meld"]["12"] == 64.00
    mods = spec.studies["modalities"]
    assert len(mods.points) == 14 and len(mods.reference_labels) == 7
    assert mods.reference_of("modalities=AV,strategy=bucket_cl") == "modalities=AV,strategy=none"
    assert mods.paper["iemocap6"]["modalities=ATV,strategy=bucket_cl"] == 69.08
    assert mods.paper["meld"]["modalities=ATV,strategy=none"] == 63.87
    assert all(len(v) == 14 for v in mods.paper.values())
    q = load_spec(SPEC, quick=True)
    assert [p.label for p in q.studies["buckets"].points] == ["5", "15"]
    assert q.studies["buckets"].paper["iemocap6"] == {"5": 69.08, "15": 68.36}



def test_merc_sweep_validate_accepts_the_spec(capsys):
    from merc.sweep.cli import main
    assert main(["sweep", "validate", SPEC]) == 0
    out = capsys.readouterr().out
    assert "study buckets: 5 x 3 seeds = 15 trials" in out, out
    assert "study modalities: 7 x 2 x 3 seeds = 42 trials" in out, out


@pytest.mark.parametrize("old,new,path,msg", [
    ("      cl_buckets: [4, 5, 7, 10, 15]", "      cl_bucket: [4, 5, 7, 10, 15]",
     "studies.buckets.axes.cl_bucket", "unknown key 'cl_bucket'"),
    ("      cl_buckets: [4, 5, 7, 10, 15]", "      cl_buckets: [0, 5, 7, 10, 15]",
     "studies.buckets.axes.cl_buckets[0]", "invalid value 0"),
    ("cl_split: {type: categorical, values: [ceil, even]}",
     "cl_split: {type: categorical, values: [ceil, random]}",
     "search.space.cl_split.values[1]", "invalid value 'random'"),
])
def test_multidag_spec_errors(tmp_path, old, new, path, msg):
    text = Path(SPEC).read_text()
    assert old in text
    p = tmp_path / "multidag_bad.yaml"
    p.write_text(text.replace(old, new, 1))
    with pytest.raises(SpecError) as ei:
        load_spec(p)
    assert str(ei.value).startswith(f"{p}: {path}:") and msg in str(ei.value), str(ei.value)
    from merc.sweep.cli import model_script_main
    assert model_script_main("multidag", ["--spec", str(p), "--study", "buckets", "--quick"]) == 2


@pytest.mark.integration
def test_buckets_quick(quick_study, tmp_path):
    """`python sweeps/multidag.py --study buckets --quick`: k in {5, 15} x 2 seeds; every trial
    ran the curriculum (its baby steps logged per epoch); table + plots on the parent run."""
    c, parent, children, arts = quick_study("multidag", SPEC, "buckets")
    assert len(children) == 4
    for r in children:
        assert r.data.tags["merc.status"] == "completed"
        assert r.data.params["strategy"] == "bucket_cl"
        k = int(r.data.params["cl_buckets"])
        used = [m.value for m in sorted(c.get_metric_history(r.info.run_id, "cl_buckets_used"),
                                        key=lambda m: m.step)]
        # tiny: 16 training dialogues; ceil split -> k=5: 4 buckets of 4, k=15: 8 buckets of 2
        assert used == ([1, 2, 3, 4, 4, 4, 4, 4] if k == 5 else [1, 2, 3, 4, 5, 6, 7, 8]), used
    assert {r.data.params["cl_buckets"] for r in children} == {"5", "15"}
    pid = parent.info.run_id
    assert {"buckets_table.md", "buckets_table.csv", "buckets_curves.csv",
            "plots/buckets_errorbars.png", "plots/buckets_curve_cl_fraction.png"} <= arts, arts
    md = Path(c.download_artifacts(pid, "buckets_table.md", str(tmp_path))).read_text()
    assert "| **5** |" in md and "69.08" in md and "68.36" in md, md
