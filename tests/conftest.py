"""Shared fixtures: tiny synthetic datasets written once per session."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """Tiny models run fastest on one thread (and the suite shares 2 cores with Ray trials)."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """The ``tiny`` synthetic preset in the canonical format."""
    from merc.data.synthetic import synth
    path = tmp_path_factory.mktemp("tiny")
    synth(path, "tiny", seed=0)
    return path


@pytest.fixture(scope="session")
def small_dir(tmp_path_factory):
    """The ``small`` preset: IEMOCAP-shaped, small dims; models learn on it in seconds."""
    from merc.data.synthetic import synth
    path = tmp_path_factory.mktemp("small")
    synth(path, "small", seed=0)
    return path


@pytest.fixture
def assert_twins_agree():
    """``check(a, b)``: two ``{name: tensor | None}`` dicts (gradients, logits) of the same network
    computed two ways (``kernels="modules"`` vs ``"fused"``) - same keys, ``None`` (no gradient)
    in the same places, every tensor equal to 1e-5 of the largest magnitude."""
    import torch

    def check(a: dict, b: dict) -> None:
        assert a.keys() == b.keys()
        scale = max(float(g.abs().max()) for g in a.values() if g is not None)
        for key in a:
            if a[key] is None:
                assert b[key] is None, key
                continue
            assert b[key] is not None, key
            assert torch.allclose(a[key], b[key], atol=1e-5 * max(scale, 1.0), rtol=1e-4), key
    return check


# ---- sweep-layer fixtures (session-scoped Ray etc.) live below this line ----


# ------------------------------------------------------------------------------------------------
# BEGIN sweep section (owned by the sweep engine; tests/test_sweep_*.py): ONE session-scoped local
# Ray instance shared by every sweep test. Trials are Ray workers; drivers started in
# subprocesses join it through `ray_local["address"]`.
@pytest.fixture(scope="session")
def ray_local(tmp_path_factory):
    import ray
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    started = False
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 )
        started = True
    yield {"address": ray.get_runtime_context().gcs_address}
    if started:
        ray.shutdown()


@pytest.fixture
def quick_study(ray_local, tmp_path, monkeypatch):
    """``run(name, spec, study)``: ``sweeps/<name>.py --spec SPEC --study STUDY --quick`` in
    ``tmp_path`` (exit 0 asserted); returns (MlflowClient, the one parent run, the child runs,
    the parent's artifact paths including ``plots/``)."""
    def run(name, spec, study):
        from mlflow.tracking import MlflowClient

        from merc.sweep.cli import model_script_main
        monkeypatch.chdir(tmp_path)
        assert model_script_main(name, ["--spec", str(spec), "--study", study, "--quick"]) == 0
        c = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
        exp = c.get_experiment_by_name(f"{name}-{study}")
        runs = c.search_runs([exp.experiment_id], "", max_results=100)
        parents = [r for r in runs if r.data.tags.get("merc.role") == "parent"]
        children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
        assert len(parents) == 1
        pid = parents[0].info.run_id
        arts = {a.path for a in c.list_artifacts(pid)} | \
            {a.path for a in c.list_artifacts(pid, "plots")}
        return c, parents[0], children, arts
    return run
# END sweep section
# ------------------------------------------------------------------------------------------------
