"""Cluster configs validate against Ray's own schema; a sweep spreads over a real two-node Ray
cluster on 127.0.0.1.

The two-node test stops its nodes by process id (the processes whose command line names its own
``--temp-dir``), not with ``ray stop``: ``ray stop`` kills every Ray process on the host, which
would take down the session's shared Ray instance and anyone else's on a shared machine.
"""
from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def test_gpu_yaml_passes_ray_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config
    cfg = yaml.safe_load((REPO / "cluster" / "gpu.yaml").read_text())
    validate_config(prepare_config(copy.deepcopy(cfg)))
    assert cfg["provider"]["type"] == "aws"
    assert cfg["available_node_types"]["gpu_worker"]["resources"]["GPU"] == 1
    assert any("pip install" in c and "merc-sweeps" in c for c in cfg["setup_commands"])
    assert "/home/ray/merc-sweeps" in cfg["file_mounts"]
    bad = copy.deepcopy(cfg)
    bad["available_node_types"]["gpu_worker"]["resorces"] = {"GPU": 1}
    with pytest.raises(Exception, match="resorces"):
        validate_config(prepare_config(bad))


def test_rayjob_manifest():
    job = yaml.safe_load((REPO / "cluster" / "rayjob.yaml").read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    assert "sweeps/corect.py" in job["spec"]["entrypoint"]
    assert job["spec"]["rayClusterSpec"]["rayVersion"].startswith("2.60")
    assert "MLFLOW_TRACKING_URI" in job["spec"]["runtimeEnvYAML"]


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _kill_tagged(tag: str) -> list[int]:
    """SIGTERM, then SIGKILL, every process whose command line contains ``tag`` (and their
    children), never this process or its ancestors. Returns the pids still alive (none)."""
    import psutil
    me = psutil.Process()
    spare = {me.pid} | {p.pid for p in me.parents()}

    def procs():
        out = []
        for p in psutil.process_iter(["pid", "cmdline"]):
            try:
                if p.pid not in spare and tag in " ".join(p.info["cmdline"] or []):
                    out.append(p)
                    out.extend(c for c in p.children(recursive=True) if c.pid not in spare)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        return out
    for sig in (signal.SIGTERM, signal.SIGKILL):
        ps = procs()
        for p in ps:
            try:
                p.send_signal(sig)
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(ps, timeout=5)
    return [p.pid for p in procs()]


@pytest.mark.integration
def test_two_node_cluster(tmp_path):
    temp_dir = tempfile.mkdtemp(prefix="mrc", dir="/tmp")  # short: raylet socket paths are limited
    port = _free_port()
    env = dict(os.environ, RAY_AUTH_MODE="disabled")
    env.pop("RAY_ADDRESS", None)
    common = ["--num-cpus=1", "--dashboard-agent-listen-port=0", "--metrics-export-port=0",
              "--disable-usage-stats"]
    try:
        subprocess.run(["ray", "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1",
                        f"--temp-dir={temp_dir}", "--include-dashboard=false", *common],
                       check=True, env=env, capture_output=True, timeout=180)
        subprocess.run(["ray", "start", f"--address=127.0.0.1:{port}",
                        "--node-ip-address=127.0.0.1", "--resources", json.dumps({"node2": 1}),
                        *common], check=True, env=env, capture_output=True, timeout=180)
        r = subprocess.run(
            [sys.executable, str(REPO / "sweeps" / "corect.py"), "--spec",
             str(REPO / "search_spaces" / "corect.yaml"), "--study", "speaker", "--quick",
             "--seeds", "0,1", "--epochs", "1", "--address", f"127.0.0.1:{port}",
             "--cpus-per-trial", "1", "--max-concurrent", "2"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        from mlflow.tracking import MlflowClient
        c = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
        exp = c.get_experiment_by_name("corect-speaker")
        runs = c.search_runs([exp.experiment_id], "tags.`merc.stage` = 'speaker'")
        assert len(runs) == 4
        assert all(x.data.tags["merc.status"] == "completed" for x in runs)
        nodes = {x.data.tags.get("ray.node_id") for x in runs}
        assert len(nodes) == 2, nodes                       # trials landed on both nodes
        parents = c.search_runs([exp.experiment_id], "tags.`merc.role` = 'parent'")
        assert len(parents) == 1
    finally:
        left = _kill_tagged(temp_dir)
    assert not left, f"Ray processes of {temp_dir} still alive: {left}"
