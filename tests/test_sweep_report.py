"""Study / search tables and run names (no Ray): Markdown stays one row per trial, names lead
with the grid point and seed, the majority-class floor and the data's nature are printed."""
from __future__ import annotations

import math
from urllib.parse import parse_qs, urlsplit

import pandas as pd

from merc.sweep.report import (data_description, majority_baseline, study_table, table_markdown,
                               to_markdown)
from merc.sweep.spec import load_spec
from merc.sweep.tracking import PRUNED_PREFIX, run_name, runs_view_url, short_point


def test_run_names_lead_with_point_and_seed():
    assert run_name("window_past=11,window_future=9", 0, study="window") == "P11 F9 · s0 · window"
    assert run_name("spcl_epsilon=0.8,spcl_alpha=1.1", 2, study="pacing_params") \
        .startswith("ε0.8 α1.1 · s2")
    assert short_point("model=mmgcn,spcl_pacing=cosine") == "mmgcn pacing=cosine"
    assert short_point("w/o RT-GCN") == "w/o RT-GCN"
    assert run_name(None, 0, number=7, params="lr=0.001 h=16") == "#007 · s0 · lr=0.001 h=16"
    assert "|" not in run_name("a=1,b=2", 3, study="x") and PRUNED_PREFIX.strip()


def test_search_markdown_keeps_columns_with_pipes_in_values():
    df = pd.DataFrame({"run_name": ["search #001 | seed 0 | lr=0.1", "#002 · s0"],
                       "seed": [0, 1], "sel_val_wf1": [51.234, 40.0]})
    md = to_markdown(df).splitlines()
    header = md[0].count(" | ")
    # every row has as many unescaped separators as the header
    assert all(r.replace("\\|", "").count(" | ") == header for r in md[2:])
    assert "\\|" in md[2] and "51.23" in md[2]


def test_runs_view_url_opens_the_classic_runs_table():
    url = runs_view_url("sqlite:////tmp/mlflow.db", "7", "corect-window-x", "val_wf1", "max")
    parts = urlsplit(url)
    assert parts.netloc == "127.0.0.1:5000" and parts.fragment.startswith("/experiments/7/runs?")
    q = parse_qs(parts.fragment.split("?", 1)[1])
    assert q["workflowType"] == ["machine_learning"] and q["compareRunsMode"] == ["TABLE"]
    assert q["searchFilter"] == ["tags.`merc.sweep_id` = 'corect-window-x'"]
    assert q["orderByKey"] == ["metrics.`sel_val_wf1`"] and q["orderByAsc"] == ["false"]
    assert runs_view_url("http://host:5001/", "3").startswith("http://host:5001/#/experiments/3/")


def test_study_table_has_majority_floor_and_says_synthetic(small_dir):
    from merc.data.format import read_manifest
    spec = load_spec("search_spaces/corect.yaml", quick=True)
    st = spec.studies["window"]
    rows = []
    for i, p in enumerate(st.points):
        for seed in st.seeds:
            rows.append({"status": "completed", "point": p.label, "seed": seed,
                         "sel_val_wf1": 50.0 + i, "sel_test_wf1": 45.0 + i + seed})
    rows.append({"status": "pruned", "point": st.points[0].label, "seed": 9,
                 "sel_val_wf1": math.nan, "sel_test_wf1": math.nan})
    tab = study_table(pd.DataFrame(rows), st, "iemocap6")
    floor = majority_baseline(small_dir)
    assert 0 < floor["test"] < 40 and floor["label"] in read_manifest(small_dir).label_names
    what = data_description(read_manifest(small_dir), "synthetic:small")
    assert what.startswith("synthetic IEMOCAP-6-shaped data")
    md = table_markdown(tab, st, "iemocap6", {"completed": len(rows) - 1, "pruned": 1},
                        baseline=floor, data=what)
    assert "synthetic IEMOCAP-6-shaped" in md.splitlines()[0]
    assert f"| *majority class ({floor['label']})* | - | {floor['val']:.2f} | " \
           f"{floor['test']:.2f} |" in md
    assert "1 pruned (excluded)" in md
