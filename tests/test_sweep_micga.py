"""Mi-CGA sweeps (search_spaces/micga.yaml, sweeps/micga.py): every study of the spec validates with
the paper's printed numbers on its grid points, the per-rate references, the modality grid with
holes; one quick study (`--study smoothing --quick`) in the session Ray.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from merc.sweep.spec import SpecError, load_spec

REPO = Path(__file__).resolve().parents[1]
SPEC = str(REPO / "search_spaces" / "micga.yaml")
STUDIES = {"smoothing", "missing_rate", "loss", "sparsity", "modules", "modalities"}


def test_repo_micga_spec_valid():
    spec = load_spec(SPEC)
    assert spec.model == "micga" and set(spec.studies) == STUDIES
    assert set(spec.defaults) == {"iemocap6", "iemocap4", "mosi", "mosei"}
    d = spec.defaults["iemocap6"]
    assert (d["lr"], d["weight_decay"], d["epochs"], d["gat_layers"], d["gat_heads"],
            d["smoothing"], d["kl_sparsity"]) == (3e-3, 1e-5, 200, 2, 4, 0.5, 0.2)
    sm = spec.studies["smoothing"]
    assert len(sm.points) == 35 and len(sm.reference_labels) == 7     # lambda = 0.5 per rate
    assert sm.reference_of("smoothing=none,missing_rate=0.3") == "smoothing=0.5,missing_rate=0.3"
    assert sm.paper["iemocap6"]["smoothing=0.5,missing_rate=0.1"] == 65.83       # Table 6
    assert sm.paper["iemocap4"]["smoothing=none,missing_rate=0.6"] == 74.51
    assert len(sm.paper["iemocap4"]) == len(sm.paper["iemocap6"]) == 35
    mr = spec.studies["missing_rate"]
    assert [p.label for p in mr.points] == ["0.0", "0.1", "0.2", "0.3", "0.4", "0.5", "0.6",
                                            "0.667"]
    assert mr.paper["iemocap6"]["0.667"] == 59.18      # the paper's 0.7 (the spec's header)
    assert mr.paper["mosei"]["0.0"] == 87.61
    mo = spec.studies["modules"]
    assert len(mo.points) == 32 and len(mo.reference_labels) == 8
    assert mo.paper["iemocap6"]["use_mulgat=false,use_cma=true,missing_rate=0.0"] == 63.59
    assert mo.paper["mosi"]["use_mulgat=true,use_cma=false,missing_rate=0.667"] == 61.41
    # Table 4: one modality at rho 0 only, pairs up to 0.5, all three up to 2/3 (29 points),
    # each compared with A+V+T at the same rate
    md = spec.studies["modalities"]
    assert len(md.points) == 29 and len(md.reference_labels) == 8
    assert md.reference_of("modalities=AV,missing_rate=0.5") == "modalities=ATV,missing_rate=0.5"
    assert md.paper["iemocap4"]["modalities=T,missing_rate=0.0"] == 80.70
    for p in md.points:
        M = len(p.values["modalities"])
        assert p.values["missing_rate"] <= (M - 1) / M + 1e-3, p.label
    assert "rec_loss=none,missing_rate=0.1" in {p.label for p in spec.studies["loss"].points}
    assert spec.studies["sparsity"].reference_of("kl_sparsity=0.05,missing_rate=0.667") == \
        "kl_sparsity=0.2,missing_rate=0.667"
    q = load_spec(SPEC, quick=True)
    assert set(q.studies) == STUDIES
    assert len(q.studies["smoothing"].points) == 4 and q.studies["smoothing"].seeds == [0]
    assert q.quick["dataset"] == "synthetic:tiny"


def test_micga_spec_error_names_the_key(tmp_path):
    text = Path(SPEC).read_text()
    old = "      smoothing: [none, 0.1, 0.2, 0.5, 0.9]\n"
    assert old in text
    p = tmp_path / "micga_bad.yaml"
    p.write_text(text.replace(old, "      smoothing: [none, 0.1, 1.5]\n"))
    with pytest.raises(SpecError) as ei:
        load_spec(p)
    msg = str(ei.value)
    assert msg.startswith(f"{p}: studies.smoothing.axes.smoothing[2]:"), msg
    assert "smoothing must be 'none' or a number in [0, 1]" in msg


@pytest.mark.integration
def test_smoothing_quick(quick_study, tmp_path):
    """`python sweeps/micga.py --study smoothing --quick`: lambda {none, 0.5} x rho {0.2, 0.5} on
    the tiny preset; study table (with Table 6's numbers) and heatmap on the MLflow parent."""
    c, parent, children, arts = quick_study("micga", SPEC, "smoothing")
    assert len(children) == 4
    assert {(r.data.params["smoothing"], r.data.params["missing_rate"]) for r in children} == \
        {("none", "0.2"), ("none", "0.5"), ("0.5", "0.2"), ("0.5", "0.5")}
    assert all(r.data.tags["merc.status"] == "completed" for r in children)
    pid = parent.info.run_id
    assert {"smoothing_table.md", "smoothing_table.csv", "plots/smoothing_heatmap.png"} <= arts
    md = Path(c.download_artifacts(pid, "smoothing_table.md", str(tmp_path))).read_text()
    assert "**smoothing=0.5,missing_rate=0.2**" in md and "64.07" in md   # Table 6, 6-way


def test_rate_two_thirds_keeps_one_modality_per_utterance(tiny_dir):
    """The paper's rho = 0.7 column runs as 0.667 (the bound (M-1)/M written to 3 decimals):
    accepted, and every utterance keeps exactly one modality as in GCNet's saturated draw."""
    from merc.data.dataset import DatasetError, MercData
    data = MercData(tiny_dir, "ATV", missing_rate=0.667)
    pres = data["train"].present
    assert (pres.sum(1) >= 1).all() and pres.sum() <= len(pres) + 1
    with pytest.raises(DatasetError, match="missing_rate"):
        MercData(tiny_dir, "ATV", missing_rate=0.7)
