"""SPCL sweeps (search_spaces/spcl.yaml, sweeps/spcl.py) and the generic engine features they use:
strategy keys in specs, the trial's model chosen per point (`models:`, `model_defaults:`), one
reference per group, and per-epoch `curves` plotted on the parent run.

Budget: two quick studies on ``synthetic:demo`` (8 epochs, hidden 16) in the session Ray, plus
spec checks that start nothing.
"""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from merc.sweep.spec import SpecError, load_spec

REPO = Path(__file__).resolve().parents[1]
SPEC = str(REPO / "search_spaces" / "spcl.yaml")


# ---- spec validation (no Ray) ----------------------------------------------------------------

def _spec_text(**repl) -> str:
    text = Path(SPEC).read_text()
    for old, new in repl.items():
        assert old in text, old
        text = text.replace(old, new)
    return text


def _write(tmp_path, text: str) -> Path:
    p = tmp_path / "spcl_bad.yaml"
    p.write_text(text)
    return p


def test_repo_spcl_spec_valid():
    spec = load_spec(SPEC)
    assert spec.name == "spcl" and spec.model == "mmgcn"
    assert set(spec.models) == {"mmgcn", "mmdfn", "dialoguegcn", "biddin"}
    pp = spec.studies["pacing_params"]
    labels = {p.label for p in pp.points}
    for lab in ("spcl_epsilon=0.8,spcl_alpha=1.1", "spcl_epsilon=0.4,spcl_alpha=1.1",
                "spcl_epsilon=0.8,spcl_alpha=1.2"):
        assert lab in labels and lab in pp.paper["iemocap6"]
    assert pp.reference == "spcl_epsilon=0.8,spcl_alpha=1.1"
    assert spec.studies["pacing_params_mmdfn"].paper["iemocap6"][
        "spcl_epsilon=0.4,spcl_alpha=1.2"] == 67.92
    # one reference per backbone x modality subset: the plain backbone (Delta_Base)
    bb = spec.studies["backbones"]
    assert len(bb.points) == 96 and len(bb.reference_labels) == 16        # 4 x 4 x 6
    assert bb.reference_of("model=mmgcn,modalities=AT,strategy=spcl") == \
        "model=mmgcn,modalities=AT,strategy=none"
    assert bb.reference_of("model=biddin,modalities=AV,strategy=fagm") == \
        "model=biddin,modalities=AV,strategy=none"
    assert bb.paper["iemocap6"]["model=dialoguegcn,modalities=ATV,strategy=spcl"] == 66.99
    assert bb.paper["iemocap6"]["model=mmgcn,modalities=AV,strategy=fagm"] == 54.14   # Table 3
    assert bb.paper["meld"]["model=biddin,modalities=TV,strategy=opm"] == 56.25      # Table 4
    assert len(bb.paper["iemocap6"]) == len(bb.paper["meld"]) == 96
    for name in ("pacing_params", "pacing", "regularizer", "difficulty", "backbones"):
        assert "spcl_expanding_rate" in spec.studies[name].curves
        assert "spcl_ratio_" in spec.studies[name].curves
    q = load_spec(SPEC, quick=True)
    assert {len(st.points) for n, st in q.studies.items() if n != "backbones"} == {4}
    # the quick Tables 3-4: every plug-in on every backbone (all three modalities)
    assert {p.label for p in q.studies["backbones"].points} == {
        f"model={m},modalities=ATV,strategy={s}" for m in ("dialoguegcn", "biddin", "mmgcn",
                                                           "mmdfn")
        for s in ("none", "rna", "ogm_ge", "opm", "fagm", "spcl")}
    assert q.studies["pacing"].reference_of("model=mmdfn,spcl_pacing=cosine") == \
        "model=mmdfn,spcl_pacing=exponential"


@pytest.mark.parametrize("case", ["typo", "bad_value", "inactive", "model_not_listed",
                                  "model_top_level"])
def test_spcl_spec_errors(tmp_path, case):
    """An unknown / ill-typed SPCL key, an SPCL key on a baseline point, an unlisted model: one
    message naming the file and key path; `merc sweep validate` exits 2."""
    repl, path, msg = {
        "typo": ({"      spcl_epsilon: [0.4, 0.6, 0.8, 1.0, 1.2]\n      spcl_alpha: [1.05, 1.1, "
                  "1.2, 1.3, 1.4]\n    seeds: [0, 1, 2]\n    reference: {spcl_epsilon: 0.8": "      "
                  "spcl_epsilonn: [0.4, 0.6, 0.8, 1.0, 1.2]\n      spcl_alpha: [1.05, 1.1, 1.2, "
                  "1.3, 1.4]\n    seeds: [0, 1, 2]\n    reference: {spcl_epsilon: 0.8"},
                 "studies.pacing_params.axes.spcl_epsilonn", "unknown key 'spcl_epsilonn'"),
        "bad_value": ({"spcl_pacing: [exponential, cosine, moving_average, competence]":
                       "spcl_pacing: [exponential, linear_ramp]"},
                      "studies.pacing.axes.spcl_pacing[1]", "invalid value 'linear_ramp'"),
        "inactive": ({"    axes: {model: [dialoguegcn, biddin, mmgcn, mmdfn], modalities: [ATV],\n"
                      "             strategy: [none, rna, ogm_ge, opm, fagm, spcl]}":
                      "    points: {base: {strategy: none, spcl_alpha: 1.2}}"},
                     "studies.backbones.quick.points.base",
                     "'spcl_alpha' is not used by model 'mmgcn' with strategy 'none'"),
        "model_not_listed": ({"      model: [mmgcn, mmdfn]\n": "      model: [mmgcn, corect]\n"},
                             "studies.pacing.axes.model[1]", "not one of this spec's models"),
        "model_top_level": ({"fixed: {}": "fixed: {model: mmdfn}"}, "fixed.model",
                            "selects a trial's model"),
    }[case]
    p = _write(tmp_path, _spec_text(**repl))
    with pytest.raises(SpecError) as ei:
        load_spec(p)
    text = str(ei.value)
    assert text.startswith(f"{p}: {path}:"), text
    assert msg in text, text
    from merc.sweep.cli import main
    assert main(["sweep", "validate", str(p)]) == 2
    from merc.sweep.cli import model_script_main   # the script stops before Ray / MLflow too
    assert model_script_main("spcl", ["--spec", str(p), "--study", "pacing", "--quick"]) == 2


def test_generic_spec_features_small(tmp_path):
    """A minimal multi-model spec: `models:`, per-model defaults, inherited strategy keys dropped
    on a `strategy: none` point, a partial reference."""
    p = tmp_path / "mini.yaml"
    p.write_text(textwrap.dedent("""
        model: mmgcn
        models: [mmgcn, dialoguegcn]
        defaults:
          iemocap6: {strategy: spcl, spcl_epsilon: 0.8, hidden_size: 16}
        model_defaults:
          dialoguegcn: {iemocap6: {spcl_epsilon: 0.7}}
        studies:
          s:
            axes: {model: [mmgcn, dialoguegcn], strategy: [none, spcl]}
            reference: {strategy: none}
    """))
    spec = load_spec(p)
    st = spec.studies["s"]
    assert st.reference_of("model=dialoguegcn,strategy=spcl") == "model=dialoguegcn,strategy=none"
    from merc.sweep.runner import full_flat, point_flat
    from merc.train import resolve_config
    got = {}
    for pt in st.points:
        base = spec.trial_base("iemocap6", False, {}, pt.values)
        model, flat = point_flat(spec, base, pt.values, "t")
        full = full_flat(model, flat, "iemocap6", "t")
        got[pt.label] = (model, full.get("strategy"), full.get("spcl_epsilon"))
        train, _ = resolve_config(model, full, "iemocap6")   # the flat config round-trips
        assert train.strategy == full["strategy"]
    assert got == {"model=mmgcn,strategy=none": ("mmgcn", "none", None),
                   "model=mmgcn,strategy=spcl": ("mmgcn", "spcl", 0.8),
                   "model=dialoguegcn,strategy=none": ("dialoguegcn", "none", None),
                   "model=dialoguegcn,strategy=spcl": ("dialoguegcn", "spcl", 0.7)}


# ---- quick studies (session Ray) ---------------------------------------------------------------

def _client(uri):
    from mlflow.tracking import MlflowClient
    return MlflowClient(uri)


def _runs(uri, experiment):
    c = _client(uri)
    exp = c.get_experiment_by_name(experiment)
    runs = c.search_runs([exp.experiment_id], "", max_results=1000)
    parents = [r for r in runs if r.data.tags.get("merc.role") == "parent"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return parents, children


def _artifacts(c, run_id) -> set[str]:
    arts = {a.path for a in c.list_artifacts(run_id)}
    return arts | {a.path for a in c.list_artifacts(run_id, "plots")}


def _main(argv):
    from merc.sweep.cli import model_script_main
    return model_script_main("spcl", ["--spec", SPEC] + argv)


@pytest.mark.integration
def test_pacing_params_quick(ray_local, tmp_path, monkeypatch):
    """`python sweeps/spcl.py --study pacing_params --quick`: 2x2 (eps, alpha) x 2 seeds on MMGCN;
    table, heatmap, expanding-rate and modality-ratio curves on the parent run."""
    monkeypatch.chdir(tmp_path)
    assert _main(["--study", "pacing_params", "--quick"]) == 0
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    parents, children = _runs(uri, "spcl-pacing_params")
    assert len(parents) == 1 and len(children) == 8
    c = _client(uri)
    for r in children:
        assert r.data.tags["merc.status"] == "completed"
        assert r.data.tags["merc.model"] == "mmgcn"
        assert r.data.params["strategy"] == "spcl"
        hist = c.get_metric_history(r.info.run_id, "spcl_expanding_rate")
        assert sorted(m.step for m in hist) == list(range(1, 9))     # quick: 8 epochs
        assert all(0.0 <= m.value <= 1.0 for m in hist)
    pts = {(r.data.params["spcl_epsilon"], r.data.params["spcl_alpha"]) for r in children}
    assert pts == {("0.4", "1.1"), ("0.4", "1.2"), ("0.8", "1.1"), ("0.8", "1.2")}
    pid = parents[0].info.run_id
    arts = _artifacts(c, pid)
    assert {"pacing_params_table.md", "pacing_params_table.csv", "pacing_params_curves.csv",
            "plots/pacing_params_heatmap.png",
            "plots/pacing_params_curve_spcl_expanding_rate.png",
            "plots/pacing_params_curve_spcl_ratio.png"} <= arts, arts
    md = Path(c.download_artifacts(pid, "pacing_params_table.md", str(tmp_path))).read_text()
    assert "**spcl_epsilon=0.8,spcl_alpha=1.1**" in md and "67.84" in md
    import pandas as pd
    curves = pd.read_csv(c.download_artifacts(pid, "pacing_params_curves.csv", str(tmp_path)))
    assert {"spcl_expanding_rate", "spcl_lambda", "spcl_ratio_audio", "spcl_ratio_text",
            "spcl_ratio_visual"} <= set(curves.metric)
    assert set(curves.n) == {2} and set(curves.epoch) == set(range(1, 9))
    # the demo data: every cell far above the majority-class floor printed under the table
    floor = float(md.split("| *majority class (")[1].split("|")[3])
    tab = pd.read_csv(c.download_artifacts(pid, "pacing_params_table.csv", str(tmp_path)))
    assert (tab.test_mean > floor + 15).all(), (tab.test_mean.tolist(), floor)


@pytest.mark.integration
def test_pacing_quick_varies_the_backbone(ray_local, tmp_path, monkeypatch):
    """`--study pacing --quick`: model x pacing; each trial builds its point's backbone with that
    backbone's pacing defaults; MLflow child tags carry the trial's model; one reference per
    backbone."""
    monkeypatch.chdir(tmp_path)
    assert _main(["--study", "pacing", "--quick"]) == 0
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    parents, children = _runs(uri, "spcl-pacing")
    assert len(parents) == 1 and len(children) == 4
    assert parents[0].data.tags["merc.models"] == "mmgcn,mmdfn"
    by_point = {r.data.tags["merc.point"]: r for r in children}
    for label, r in by_point.items():
        model = label.split(",")[0].split("=")[1]
        assert r.data.tags["merc.status"] == "completed"
        assert r.data.tags["merc.model"] == r.data.params["model"] == model
        eps = {"mmgcn": "0.8", "mmdfn": "0.4"}[model]        # model_defaults (Table 6 v0)
        assert r.data.params["spcl_epsilon"] == eps
    # each backbone's own config keys: MMGCN has gcn_layers, MM-DFN its own graph keys
    assert "gcn_layers" in by_point["model=mmgcn,spcl_pacing=cosine"].data.params
    assert len({r.data.tags["merc.config_hash"] for r in children}) == 4
    c = _client(uri)
    pid = parents[0].info.run_id
    arts = _artifacts(c, pid)
    assert {"pacing_table.md", "plots/pacing_curve_spcl_expanding_rate.png",
            "plots/pacing_curve_spcl_ratio.png", "plots/pacing_curve_spcl_lambda.png"} <= arts
    md = Path(c.download_artifacts(pid, "pacing_table.md", str(tmp_path))).read_text()
    assert "**model=mmgcn,spcl_pacing=exponential**" in md
    assert "**model=mmdfn,spcl_pacing=exponential**" in md
    import torch
    from merc.train import load_model
    mm = by_point["model=mmdfn,spcl_pacing=cosine"]
    local = c.download_artifacts(mm.info.run_id, "model/model.pt", str(tmp_path))
    assert torch.load(local, weights_only=True)["model"] == "mmdfn"
    _, cfg = load_model(local)
    assert cfg["train"]["strategy"] == "spcl" and cfg["flat"]["spcl_pacing"] == "cosine"
