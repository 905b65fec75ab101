"""Search-space grammar and validation: every malformed spec is one message naming the file and
key path, exit code 2, and nothing of Ray is imported or started."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from merc.sweep.spec import SpecError, load_fixed_config, load_spec

REPO = Path(__file__).resolve().parents[1]
SPEC = REPO / "search_spaces" / "corect.yaml"


def _write(tmp_path, text: str) -> Path:
    p = tmp_path / "spec.yaml"
    p.write_text(textwrap.dedent(text))
    return p


BASE = """
model: corect
search:
  space:
    lr: {type: loguniform, low: 1.0e-5, high: 1.0e-3}
studies:
  s:
    axes: {window_past: [1, 2]}
    seeds: [0, 1]
"""

BAD = {
    "unknown_key": (BASE.replace("lr: {type", "lrr: {type"), "search.space.lrr", "unknown key"),
    "low_gt_high": (BASE.replace("low: 1.0e-5, high: 1.0e-3", "low: 1.0e-2, high: 1.0e-3"),
                    "search.space.lr", "low (0.01) > high"),
    "unknown_type": (BASE.replace("type: loguniform", "type: lognormal"), "search.space.lr.type",
                     "unknown type 'lognormal'"),
    "wrong_value_type": (BASE.replace("low: 1.0e-5", "low: abc"), "search.space.lr.low",
                         "expected a number"),
    "wrong_grid_value_type": (BASE.replace("[1, 2]", "[1, many]"),
                              "studies.s.axes.window_past[1]", "invalid value 'many'"),
    "study_missing_key": (BASE.replace("window_past: [1, 2]", "window_pastt: [1, 2]"),
                          "studies.s.axes.window_pastt", "unknown key 'window_pastt'"),
    "float_on_int_key": (BASE.replace("lr: {type: loguniform, low: 1.0e-5, high: 1.0e-3}",
                                      "gt_heads: {type: uniform, low: 1, high: 8}"),
                         "search.space.gt_heads.type", "integer key"),
    "out_of_range": (BASE.replace("[1, 2]", "[1, -5]"), "studies.s.axes.window_past[1]",
                     "greater than or equal"),
    "unknown_pruner_arg": (BASE.replace("space:", "pruner: {type: median, warmup: 3}\n  space:"),
                           "search.pruner.warmup", "unknown argument 'warmup'"),
    "unknown_top_level": (BASE + "serach: {}\n", "serach", "unknown top-level key"),
    "bad_reference": (BASE.replace("seeds: [0, 1]", "seeds: [0, 1]\n    reference: {window_past: 7}"),
                      "studies.s.reference", "not a point of the grid"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_malformed_spec_one_message(tmp_path, case):
    text, key_path, fragment = BAD[case]
    p = _write(tmp_path, text)
    with pytest.raises(SpecError) as ei:
        load_spec(p)
    msg = str(ei.value)
    assert msg.startswith(f"{p}: {key_path}"), msg
    assert fragment in msg, msg
    assert "\n" not in msg
    assert ei.value.exit_code == 2


def test_cli_exit_code_2_without_ray(tmp_path):
    """Both `sweep validate` and `sweep run` stop with exit 2 before Ray is imported."""
    p = _write(tmp_path, BAD["low_gt_high"][0])
    code = textwrap.dedent(f"""
        import sys
        from merc.sweep.cli import main
        rc1 = main(["sweep", "validate", {str(p)!r}])
        rc2 = main(["sweep", "run", {str(p)!r}, "--search", "--quick"])
        assert "ray" not in sys.modules, "ray was imported"
        sys.exit(10 * rc1 + rc2)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                       timeout=120)
    assert r.returncode == 22, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 2 and all(ln.startswith(f"error: {p}: search.space.lr") for ln in lines)


def test_repo_spec_valid_and_quick():
    spec = load_spec(SPEC)
    assert set(spec.studies) >= {"window", "modules", "modalities", "speaker"}
    w = spec.studies["window"]
    assert w.axes["window_past"] == list(range(1, 16)) and w.axes["window_future"] == \
        list(range(1, 16))
    assert w.reference == "window_past=11,window_future=9"
    assert spec.studies["modules"].paper["iemocap6"]["w/o RT-GCN"] == 66.55
    assert {"window_past", "window_future", "lr", "dropout", "gt_heads", "pcm_heads",
            "pcm_layers", "hidden_size", "speaker_ratio", "modalities",
            "missing_rate"} <= set(spec.search.space)
    q = load_spec(SPEC, quick=True)
    assert q.studies["window"].num_trials == 18 and q.search.num_samples == 8   # 3x3 x 2 seeds
    # the YAML's defaults agree with the model's typed paper defaults where both say something
    from merc.models import get_entry
    pd = get_entry("corect").config_cls.PAPER_DEFAULTS
    for fam, flat in spec.defaults.items():
        for k, v in flat.items():
            if k in pd.get(fam, {}):
                assert pd[fam][k] == v, (fam, k)


def test_load_fixed_config_roundtrip(tmp_path):
    p = tmp_path / "best.yaml"
    p.write_text(yaml.safe_dump({"model": "corect", "dataset": "synthetic:tiny",
                                 "fixed": {"lr": 1e-3, "window_past": 3, "seed": 7}}))
    model, ds, flat = load_fixed_config(p)
    assert (model, ds, flat) == ("corect", "synthetic:tiny", {"lr": 1e-3, "window_past": 3,
                                                               "seed": 7})
    p.write_text(yaml.safe_dump({"model": "corect", "fixed": {"window_past": "x"}}))
    with pytest.raises(SpecError, match="window_past"):
        load_fixed_config(p)
