"""Ada2I sweeps (search_spaces/ada2i.yaml, sweeps/ada2i.py): every study validates with the
paper's numbers; one quick study (`rank`) runs in the session Ray with its table, error bars and
the Fig. 5 discrepancy-ratio curves on the MLflow parent run."""
from __future__ import annotations

from pathlib import Path

import pytest

from merc.sweep.spec import SpecError, load_spec

REPO = Path(__file__).resolve().parents[1]
SPEC = str(REPO / "search_spaces" / "ada2i.yaml")


def test_repo_ada2i_spec_valid():
    spec = load_spec(SPEC)
    assert spec.model == "ada2i" and set(spec.studies) == {"rank", "balance", "modules",
                                                           "modalities"}
    rank = spec.studies["rank"]
    assert [p.label for p in rank.points] == ["2", "4", "6", "8", "10", "11", "12", "14", "16"]
    assert rank.reference == "11" and rank.paper == {"iemocap6": {"11": 68.97},
                                                     "meld": {"6": 60.38}}
    bal = spec.studies["balance"]
    assert len(bal.points) == 16 and bal.reference == "afw_beta=0.01,ada2i_alpha=0.037"
    assert bal.paper["meld"] == {"afw_beta=0.55,ada2i_alpha=0.4": 60.38}
    mods = spec.studies["modules"]
    assert mods.paper["iemocap6"] == {"Ada2I": 68.97, "w/o AFW": 66.24, "w/o AMW": 66.11,
                                      "w/o training optimisation": 67.95}
    assert mods.paper["meld"]["w/o training optimisation"] == 58.13
    assert spec.studies["modalities"].paper["iemocap6"] == {"ATV": 68.97, "AT": 66.91,
                                                            "TV": 65.48, "AV": 55.16}
    assert all(st.curves == ["ada2i_ratio_"] for st in spec.studies.values())
    q = load_spec(SPEC, quick=True)
    assert {n: len(st.points) * len(st.seeds) for n, st in q.studies.items()} == \
        {"rank": 4, "balance": 4, "modules": 4, "modalities": 2}


def test_trial_configs_of_the_modules_study():
    """Each Table 5 point resolves to the intended switches; alpha per dataset family."""
    from merc.sweep.runner import full_flat, point_flat
    spec = load_spec(SPEC)
    got = {}
    for fam in ("iemocap6", "meld"):
        for pt in spec.studies["modules"].points:
            base = spec.trial_base(fam, False, {}, pt.values)
            model, flat = point_flat(spec, base, pt.values, "t")
            full = full_flat(model, flat, fam, "t")
            got[fam, pt.label] = (full["use_afw"], full["use_amw"], full["strategy"],
                                  full["ada2i_modulate"], full["ada2i_alpha"], full["tensor_rank"])
    assert got["iemocap6", "Ada2I"] == (True, True, "ada2i", True, 0.037, 11)
    assert got["iemocap6", "w/o AFW"][:2] == (False, True)
    assert got["iemocap6", "w/o AMW"][:2] == (True, False)
    assert got["iemocap6", "w/o training optimisation"][2:4] == ("ada2i", False)
    assert got["meld", "Ada2I"] == (True, True, "ada2i", True, 0.4, 6)


@pytest.mark.parametrize("case", ["typo", "bad_value", "unknown_point"])
def test_ada2i_spec_errors(tmp_path, case):
    text = Path(SPEC).read_text()
    old, new, path, msg = {
        "typo": ("      tensor_rank: [2, 4, 6, 8, 10, 11, 12, 14, 16]",
                 "      tensor_rankk: [2, 4, 6, 8, 10, 11, 12, 14, 16]",
                 "studies.rank.axes.tensor_rankk", "unknown key 'tensor_rankk'"),
        "bad_value": ("      w/o AMW: {use_amw: false}", "      w/o AMW: {use_amw: maybe}",
                      "studies.modules.points.w/o AMW", "use_amw"),
        "unknown_point": ('meld: {"6": 60.38}', 'meld: {"7": 60.38}',
                          "studies.rank.paper.meld.7", "unknown grid point '7'"),
    }[case]
    assert old in text
    p = tmp_path / "ada2i_bad.yaml"
    p.write_text(text.replace(old, new))
    with pytest.raises(SpecError) as ei:
        load_spec(p)
    assert str(ei.value).startswith(f"{p}: {path}"), str(ei.value)
    assert msg in str(ei.value)
    from merc.sweep.cli import model_script_main
    assert model_script_main("ada2i", ["--spec", str(p), "--study", "rank", "--quick"]) == 2


@pytest.mark.integration
def test_rank_quick(quick_study, tmp_path):
    """`python sweeps/ada2i.py --study rank --quick`: r in {2, 11} x 2 seeds; table, error bars
    and the rho_t, rho_a, rho_v curves (Fig. 5) on the parent run."""
    c, parent, children, arts = quick_study("ada2i", SPEC, "rank")
    assert len(children) == 4
    for r in children:
        assert r.data.tags["merc.status"] == "completed"
        assert r.data.params["strategy"] == "ada2i" and r.data.params["ada2i_start_epoch"] == "1"
        hist = c.get_metric_history(r.info.run_id, "ada2i_ratio_text")
        assert sorted(m.step for m in hist) == [1, 2, 3, 4] and all(m.value >= 1 for m in hist)
    assert {r.data.params["tensor_rank"] for r in children} == {"2", "11"}
    pid = parent.info.run_id
    assert {"rank_table.md", "rank_table.csv", "rank_curves.csv", "plots/rank_errorbars.png",
            "plots/rank_curve_ada2i_ratio.png"} <= arts, arts
    md = Path(c.download_artifacts(pid, "rank_table.md", str(tmp_path))).read_text()
    assert "**11**" in md and "68.97" in md
    import pandas as pd
    curves = pd.read_csv(c.download_artifacts(pid, "rank_curves.csv", str(tmp_path)))
    assert {"ada2i_ratio_audio", "ada2i_ratio_text", "ada2i_ratio_visual"} == set(curves.metric)
    assert set(curves.n) == {2} and set(curves.epoch) == {1, 2, 3, 4}
