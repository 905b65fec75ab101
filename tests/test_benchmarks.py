"""The benchmark harness: the quick graph benchmark in-process, and the results-file schema."""
from __future__ import annotations

import json


def test_quick_graph_benchmark_writes_results(tmp_path):
    from benchmarks.__main__ import run
    from benchmarks.common import SCHEMA
    doc = run(quick=True, only=["graph"], out=tmp_path, log=lambda s: None,
              command="pytest tests/test_benchmarks.py", work_dir=tmp_path / "work")
    data = json.loads((tmp_path / "latest.json").read_text())
    assert data == json.loads(json.dumps(doc, default=str))
    assert data["schema"] == SCHEMA and data["quick"] is True
    assert data["command"] == "pytest tests/test_benchmarks.py"
    assert data["started"] and data["finished"] and data["duration_s"] > 0
    env = data["environment"]
    assert {"cpu_model", "logical_cores", "ram_gib"} <= set(env["machine"])
    assert {"python", "torch", "torch_geometric", "ray", "optuna", "mlflow"} <= set(env["versions"])
    assert env["git"]["commit"]
    for when in ("start", "end"):
        assert len(data["load_average"][when]) == 3
    sec = data["benchmarks"]["graph"]
    assert "error" not in sec, sec.get("traceback")
    assert len(sec["load_average"]["start"]) == 3 and len(sec["load_average"]["end"]) == 3
    assert sec["measurements"]
    for name, m in sec["measurements"].items():
        assert {"median", "min", "max", "n", "unit"} <= set(m), name
        assert m["n"] >= 1 and m["min"] <= m["median"] <= m["max"], name
    assert any(k.startswith("loop [11,9]") for k in sec["measurements"])
    assert any(k.startswith("vectorised cold [11,9]") for k in sec["measurements"])
    assert any(k.startswith("vectorised warm [11,9]") for k in sec["measurements"])
    for t in sec["targets"]:
        assert {"name", "target", "value", "met"} <= set(t)
    md = (tmp_path / "latest.md").read_text()
    assert "## graph" in md and "load average" in md.lower()


def test_reference_loop_matches_vectorised_builder():
    import torch
    from benchmarks.bench_graph import _triples, reference_graph
    from merc.graphs import corect_graph
    lens = [5, 1, 12, 3]
    for p, f in [(0, 0), (1, 1), (4, 2), (11, 9), (-1, -1)]:
        g = corect_graph(torch.tensor(lens), 3, p, f)
        assert _triples(g.edge_index, g.edge_type) == _triples(*reference_graph(lens, 3, p, f))
