"""A sweep's driver validates a CORECT spec without importing torch (merc.configs), and the local
Ray it starts has every worker import what a trial imports (the trainable, the model module; PyG
for the models that build PyG modules, not CORECT's default fused path) as it starts
(merc.sweep.runner._Sweep.worker_preload), so that the first trials do not wait for it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

SPEC = """
model: corect
dataset: synthetic:tiny
metric: val_wf1
fixed: {epochs: 1}
studies:
  s:
    axes: {window_past: [1, 2]}
    seeds: [0]
"""

PROBE = """
import json, sys
import ray
from merc.sweep.runner import options_from, _Sweep
s = _Sweep(options_from(spec=sys.argv[1], study="s", num_cpus=1, storage=sys.argv[2],
                        mlflow_uri="sqlite:///" + sys.argv[2] + "/m.db",
                        print_fn=lambda *a, **k: None))
s.prepare()
driver = sorted(m for m in ("torch", "torch_geometric", "merc.models.corect") if m in sys.modules)
preload = s.worker_preload()
s.start_ray()
s.trainable()        # what the driver hands Tune: merc.sweep.entry.run_trial
import merc.sweep.tracking
driver += ["torch (Ray started)"] if "torch" in sys.modules else []

@ray.remote(num_cpus=1)
def loaded():
    # what the worker had imported before it took this task (no trial code ran in it)
    return sorted(m for m in ("torch_geometric.nn", "merc.models.corect",
                              "merc.sweep.trainable") if m in sys.modules)

print(json.dumps({"driver": driver, "preload": preload, "worker": ray.get(loaded.remote())}))
ray.shutdown()
"""


def test_driver_skips_torch_and_ray_workers_preload_the_trial_imports(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(textwrap.dedent(SPEC))
    env = dict(os.environ, RAY_AUTH_MODE="disabled")
    env.pop("RAY_ADDRESS", None)
    out = subprocess.run([sys.executable, "-c", PROBE, str(spec), str(tmp_path)], env=env,
                         cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    # the driver resolved and checked every trial's CORECT config without torch, PyG or the
    # model module (merc.configs holds the configs), planned the preload and started Ray without
    # torch, and hands Tune a trial function that imports it in the worker only
    assert got["driver"] == []
    # CORECT's fused path holds PyG's parameters without PyG (merc.models.pyg_layout)
    assert got["preload"] == ["merc.sweep.trainable", "merc.models.corect"]
    assert got["worker"] == ["merc.models.corect", "merc.sweep.trainable"]


def test_no_preload_when_prestarted_workers_would_idle(tmp_path):
    """Ray prestarts one worker per CPU: with 2-CPU trials on 4 CPUs half of them would hold
    torch and PyG (~400 MB each) for nothing, so nothing is preloaded."""
    from merc.sweep.runner import _Sweep, options_from
    spec = tmp_path / "spec.yaml"
    spec.write_text(textwrap.dedent(SPEC))

    def preload(**kw):
        s = _Sweep(options_from(spec=str(spec), study="s", storage=str(tmp_path),
                                mlflow_uri=f"sqlite:///{tmp_path}/m.db",
                                print_fn=lambda *a, **k: None, **kw))
        s.prepare()
        return s.worker_preload()
    assert preload(num_cpus=4, cpus_per_trial=2) == []
    assert preload(num_cpus=4, cpus_per_trial=1, max_concurrent=2) == []
    assert preload(num_cpus=4, cpus_per_trial=1, gpus_per_trial=0.5) == []
    assert "merc.models.corect" in preload(num_cpus=4, cpus_per_trial=1)


JOIN = """
import sys
import ray
from merc.sweep.runner import options_from, _Sweep
s = _Sweep(options_from(spec=sys.argv[1], study="s", storage=sys.argv[2],
                        mlflow_uri="sqlite:///" + sys.argv[2] + "/m.db",
                        print_fn=lambda *a, **k: None))
s.prepare()
assert s.worker_preload(), "this case must want a preload"
s.start_ray()
print(ray.get_runtime_context().gcs_address)
ray.shutdown()
"""


def test_a_running_cluster_found_through_ray_address_is_joined(tmp_path, ray_local):
    """Without --address, ray.init joins the cluster in RAY_ADDRESS (or a `ray start` instance on
    this machine), where Ray refuses a _system_config: the sweep joins it without the preload."""
    spec = tmp_path / "spec.yaml"
    spec.write_text(textwrap.dedent(SPEC))
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_ADDRESS=ray_local["address"])
    out = subprocess.run([sys.executable, "-c", JOIN, str(spec), str(tmp_path)], env=env,
                         cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == ray_local["address"]
