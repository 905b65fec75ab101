"""Ray starts in a thread while the driver sets up MLflow (merc.sweep.runner): after the spec,
data and options are valid, before the trials; an unreachable tracking server still fails
before Ray; a failure in between stops the Ray the sweep started. Fakes stand in for Ray."""
from __future__ import annotations

import textwrap
import threading

import pytest

SPEC = """
model: mmgcn
dataset: synthetic:tiny
metric: val_wf1
fixed: {epochs: 1}
studies:
  s:
    axes: {dropout: [0.1, 0.2]}
    seeds: [0]
"""


@pytest.fixture
def fake_ray(monkeypatch):
    """ray.is_initialized / ray.shutdown as a flag; _Sweep.start_ray sets it (no processes)."""
    import ray

    from merc.sweep.runner import _Sweep
    state = {"up": False, "start_thread": None, "shutdowns": 0, "events": []}
    monkeypatch.setattr(ray, "is_initialized", lambda: state["up"])

    def shutdown():
        state["up"] = False
        state["shutdowns"] += 1
    monkeypatch.setattr(ray, "shutdown", shutdown)

    def start_ray(self):
        state["start_thread"] = threading.current_thread().name
        state["events"].append("start_ray")
        state["up"] = True
    monkeypatch.setattr(_Sweep, "start_ray", start_ray)
    return state


def _opts(tmp_path, **kw):
    from merc.sweep.runner import options_from
    spec = tmp_path / "spec.yaml"
    spec.write_text(textwrap.dedent(SPEC))
    base = dict(spec=str(spec), study="s", mlflow_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
                storage=str(tmp_path / "ray"), print_fn=lambda *a, **k: None)
    return options_from(**{**base, **kw})


def test_ray_starts_in_a_thread_between_prepare_and_the_trials(tmp_path, monkeypatch, fake_ray):
    from merc.sweep.runner import _Sweep, run_sweep
    seen = {}

    def stage(self, *a, **kw):
        seen["up_at_trials"] = fake_ray["up"]
        raise RuntimeError("stop here")
    real_setup = _Sweep.setup_tracking

    def setup(self):
        fake_ray["events"].append("setup_tracking")
        return real_setup(self)
    monkeypatch.setattr(_Sweep, "setup_tracking", setup)
    monkeypatch.setattr(_Sweep, "run_stage", stage)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RuntimeError, match="stop here"):
        run_sweep(_opts(tmp_path))
    assert fake_ray["start_thread"] == "merc-ray-start"
    assert sorted(fake_ray["events"]) == ["setup_tracking", "start_ray"]
    assert seen["up_at_trials"] is True
    assert fake_ray["shutdowns"] == 0          # a failure during the trials: as before
    fake_ray["up"] = False                     # (lets the thread that "started" it end)


def test_failure_before_the_trials_stops_the_ray_it_started(tmp_path, monkeypatch, fake_ray):
    from merc.sweep.runner import _Sweep, run_sweep

    def boom(self):
        raise RuntimeError("store broken")
    monkeypatch.setattr(_Sweep, "setup_tracking", boom)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RuntimeError, match="store broken"):
        run_sweep(_opts(tmp_path))
    assert fake_ray["events"] == ["start_ray"]
    assert fake_ray["shutdowns"] == 1 and not fake_ray["up"]


def test_a_ray_already_up_is_left_alone(tmp_path, monkeypatch, fake_ray):
    from merc.sweep.runner import _Sweep, run_sweep

    def boom(self):
        raise RuntimeError("store broken")
    monkeypatch.setattr(_Sweep, "setup_tracking", boom)
    monkeypatch.chdir(tmp_path)
    fake_ray["up"] = True
    with pytest.raises(RuntimeError):
        run_sweep(_opts(tmp_path))
    assert fake_ray["shutdowns"] == 0 and fake_ray["up"]


def test_spec_and_server_errors_come_before_ray(tmp_path, monkeypatch, fake_ray):
    import socket

    from merc.sweep.runner import run_sweep
    from merc.sweep.spec import SpecError
    from merc.sweep.tracking import TrackingError
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SpecError):
        run_sweep(_opts(tmp_path, study="nope"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(TrackingError):
        run_sweep(_opts(tmp_path, mlflow_uri=f"http://127.0.0.1:{port}"))
    assert fake_ray["events"] == []
