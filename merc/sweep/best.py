"""``merc best``: the release configuration of a finished sweep.

Picks among full-budget child runs of the sweep's parent (the latest finished sweep of the
experiment unless ``--sweep``): if the sweep re-ran its top-K configurations with fresh seeds
(``--confirm-top K --confirm-seeds N``) only those confirmation runs compete; configurations are
grouped by ``merc.config_hash`` (config without the seed) and ranked by the seed mean of the
selected validation metric. Within the winning group the run with the best validation value is
the *champion*: its checkpoint (``model/model.pt``: :func:`merc.train.save_model` - a state dict +
JSON config, never a pickled module) is saved as an MLflow ``pyfunc`` model from code
(:mod:`merc.sweep.pyfunc_model`; artifact ``pyfunc/`` of the champion run) and registered as a
model version under the alias, so ``mlflow.pyfunc.load_model("models:/merc-<model>@champion")``
predicts on a batch of dialogues; and
``best.yaml`` gets its exact flat config (seed and thread count included) in the ``fixed`` schema
of the search-space files, so ``merc train --config best.yaml`` reproduces its validation w-F1.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import yaml

from merc.sweep.spec import SpecError


@dataclass
class BestResult:
    path: str
    summary: str
    run_id: str
    registered_name: str
    version: str
    best: dict


def _stats(x) -> dict:
    x = [float(v) for v in x if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not x:
        return {"mean": None, "std": None, "n": 0}
    m = sum(x) / len(x)
    sd = (sum((v - m) ** 2 for v in x) / (len(x) - 1)) ** 0.5 if len(x) > 1 else 0.0
    return {"mean": round(m, 4), "std": round(sd, 4), "n": len(x)}


PYFUNC_PATH = "pyfunc"


def save_pyfunc(checkpoint: str | os.PathLike, path: str | os.PathLike) -> Path:
    """An MLflow pyfunc model directory for a :func:`merc.train.save_model` checkpoint: the model
    is the code file :mod:`merc.sweep.pyfunc_model` (models from code, nothing pickled), the
    checkpoint its one artifact."""
    import mlflow.pyfunc
    import merc.sweep.pyfunc_model as code
    from importlib.metadata import version
    reqs = [f"torch=={version('torch').split('+')[0]}",
            f"torch_geometric=={version('torch_geometric')}", f"mlflow=={version('mlflow')}",
            f"merc-sweeps=={version('merc-sweeps')}"]
    mlflow.pyfunc.save_model(str(path), python_model=code.__file__,
                             artifacts={"checkpoint": str(checkpoint)}, pip_requirements=reqs)
    return Path(path)


def export_best(experiment: str, *, metric: str = "val_wf1", alias: str = "champion",
                out: str = "best.yaml", tracking_uri: Optional[str] = None,
                sweep: Optional[str] = None, model_name: Optional[str] = None) -> BestResult:
    if not metric.startswith("val_"):   # choosing on test would leak the test split
        raise SpecError(f"--metric {metric!r}: expected a validation metric (val_*); the "
                        f"champion is selected on validation and test is only reported")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import torch
    from mlflow.tracking import MlflowClient

    from merc.sweep.report import runs_frame
    from merc.sweep.tracking import check_tracking, default_tracking_uri, find_runs
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()
    check_tracking(uri)
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        names = [e.name for e in client.search_experiments()]
        raise SpecError(f"--experiment {experiment!r}: no such experiment in {uri}; found "
                        f"{', '.join(names) or 'none'}")
    filt = "tags.`merc.role` = 'parent'"
    if sweep:
        filt += f" and tags.`merc.sweep_id` = '{sweep}'"
    parents = find_runs(client, exp.experiment_id, filt)
    parents = sorted(parents, key=lambda r: (r.data.tags.get("merc.status") == "finished",
                                             r.info.start_time), reverse=True)
    if not parents:
        raise SpecError(f"--experiment {experiment!r}: no sweep parent run"
                        f"{' named ' + sweep if sweep else ''}")
    parent = parents[0]
    ptags, pparams = parent.data.tags, parent.data.params
    children = find_runs(client, exp.experiment_id,
                         f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    df = runs_frame(children)
    sel, sel_test = f"sel_{metric}", f"sel_{metric.replace('val_', 'test_')}"
    if not len(df) or sel not in df:
        raise SpecError(f"sweep {ptags.get('merc.sweep_id')}: no child run has {sel}")
    df = df[(df.status == "completed") & df[sel].notna()]
    if not len(df):
        raise SpecError(f"sweep {ptags.get('merc.sweep_id')}: no completed (full-budget) trial")
    pool = df[df.stage == "confirm"] if (df.stage == "confirm").any() else df
    maximize = "loss" not in metric
    g = pool.groupby("config_hash")[sel].agg(["mean", "count"])
    g = g.sort_values(["mean", "count"], ascending=[not maximize, False])
    best_hash = g.index[0]
    group = pool[pool.config_hash == best_hash].sort_values(sel, ascending=not maximize)
    champ = group.iloc[0]
    rid = champ.run_id
    with tempfile.TemporaryDirectory() as d:
        try:
            local = client.download_artifacts(rid, "model/model.pt", d)
        except Exception as err:
            raise SpecError(f"champion run {rid}: no model/model.pt artifact ({err})") from None
        ck = torch.load(local, map_location="cpu", weights_only=True)
        pyfunc_dir = save_pyfunc(local, Path(d) / "pyfunc")
        client.log_artifacts(rid, str(pyfunc_dir), PYFUNC_PATH)
    cfg = json.loads(ck["config"])
    flat = dict(cfg["flat"])
    model = ck["model"]
    name = model_name or f"merc-{model}"
    # register: a plain artifact-based model version (state dict + JSON config)
    from mlflow.exceptions import MlflowException
    try:
        client.create_registered_model(name, description=f"{model} champions (merc best)")
    except MlflowException:
        pass
    mv = client.create_model_version(
        name, source=f"{client.get_run(rid).info.artifact_uri}/{PYFUNC_PATH}", run_id=rid,
        tags={"merc.sweep_id": ptags.get("merc.sweep_id", ""), "merc.metric": metric,
              "merc.seed_mean": f"{g.iloc[0]['mean']:.4f}",
              "merc.format": "mlflow pyfunc (models from code: merc.sweep.pyfunc_model) over "
                             "artifacts/model.pt (merc.train.save_model: state dict + JSON "
                             "config)"},
        description=f"best of sweep {ptags.get('merc.sweep_id')} by seed-mean {sel}")
    client.set_registered_model_alias(name, alias, mv.version)
    best = {
        "model": model,
        "dataset": ptags.get("merc.dataset"),
        "family": ptags.get("merc.family"),
        "data_root": pparams.get("data_root"),
        "fixed": flat,
        "seeds": sorted(int(s) for s in group.seed.dropna()),
        "metric": metric,
        "val": {metric: _stats(group[sel])},
        "test": {metric.replace("val_", "test_"): _stats(group.get(sel_test, []))},
        "champion": {"run_id": rid, "seed": int(champ.seed), sel: float(champ[sel]),
                     sel_test: float(champ.get(sel_test, math.nan)),
                     "best_epoch": int(cfg.get("best_epoch", -1))},
        "source_runs": list(group.run_id),
        "selected_from": "confirmation runs (fresh seeds)" if pool is not df else "sweep runs",
        "sweep": ptags.get("merc.sweep_id"),
        "experiment": experiment,
        "parent_run": parent.info.run_id,
        "git_commit": ptags.get("merc.git_commit"),
        "data_fingerprint": ptags.get("merc.data_fingerprint"),
        "registered_model": {"name": name, "version": str(mv.version), "alias": alias,
                             "uri": f"models:/{name}@{alias}"},
        "created": _dt.datetime.now().isoformat(timespec="seconds"),
    }
    Path(out).write_text("# merc best: the release configuration (load with `merc train "
                         "--config` / merc.sweep.spec.load_fixed_config)\n" +
                         yaml.safe_dump(best, sort_keys=False))
    v = best["val"][metric]
    summary = (f"best.yaml -> {out}\n  sweep {best['sweep']} ({best['selected_from']}); "
               f"{metric} {v['mean']} ± {v['std']} over seeds {best['seeds']}\n"
               f"  champion run {rid} (seed {best['champion']['seed']}, {sel} "
               f"{best['champion'][sel]:.4f}) registered as {name} v{mv.version} @{alias}")
    return BestResult(str(out), summary, rid, name, str(mv.version), best)


def reproduce(best_yaml: str) -> dict:
    """Retrain the champion from ``best.yaml`` exactly as the trial did (what ``merc train
    --config`` must do): the same flat config, ``MercData(root, modalities, missing_rate, seed,
    missing_redraw)``, ``fit``. Returns the selected metrics."""
    from merc.data.dataset import MercData
    from merc.sweep.spec import load_fixed_config
    from merc.train import fit, resolve_config
    model, ds, flat = load_fixed_config(best_yaml)
    raw = yaml.safe_load(Path(best_yaml).read_text())
    root = raw.get("data_root")
    if not root or not Path(root).is_dir():
        from merc.data.synthetic import resolve_data
        root = str(resolve_data(ds))
    data = MercData(root)
    train, mcfg = resolve_config(model, flat, data.meta.family, source=best_yaml)
    data = MercData(root, train.modalities, train.missing_rate, train.seed, train.missing_redraw)
    res = fit(model, data, train, mcfg)
    return res.best | {"sel_epoch": res.best_epoch}   # 1-based
