"""Cluster configs validate against Ray's own schema; a sweep spreads over a real two-node Ray
cluster on 127.0.0.1 whose worker node does not see the driver's files.

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
# the `ray` command next to this interpreter (the venv's), not whatever PATH holds
RAY = str(Path(sys.executable).with_name("ray")) if Path(sys.executable).with_name("ray").exists() \
    else "ray"


def test_gpu_yaml_passes_ray_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config
    cfg = yaml.safe_load((REPO / "cluster" / "gpu.yaml").read_text())
    validate_config(prepare_config(copy.deepcopy(cfg)))
    assert cfg["provider"]["type"] == "aws"
    assert cfg["available_node_types"]["gpu_worker"]["resources"]["GPU"] == 1
    assert any("pip install" in c and "merc-sweeps" in c for c in cfg["setup_commands"])
    assert "/home/ray/merc-sweeps" in cfg["file_mounts"]
    # no CUDA torch download per node: the pinned image (cluster/Dockerfile) carries it
    assert not any("torch" in c and "pip install" in c for c in cfg["setup_commands"])
    image = cfg["docker"]["image"]
    assert ":latest" not in image and "ray2.60.0" in image
    dockerfile = (REPO / "cluster" / "Dockerfile").read_text()
    assert "FROM rayproject/ray:2.60.0-py311-gpu" in dockerfile and '"torch==2.13.0"' in dockerfile
    # workers reach S3 (checkpoints under --storage s3://...)
    assert "Arn" in cfg["available_node_types"]["gpu_worker"]["node_config"]["IamInstanceProfile"]
    # what Ray's rsync gets: the venv and tracking stores stay home, .git travels (commit tags)
    from ray.autoscaler._private.command_runner import SSHCommandRunner
    args = " ".join(SSHCommandRunner._create_rsync_filter_args(None, options=cfg))
    for excluded in ("**/.venv", "**/mlflow.db", "**/mlruns", "**/ray_results"):
        assert f"--exclude {excluded}" in args
    assert "dir-merge,- .gitignore" in args and ".git " not in args + " " and ".git/" not in args
    bad = copy.deepcopy(cfg)
    bad["available_node_types"]["gpu_worker"]["resorces"] = {"GPU": 1}
    with pytest.raises(Exception, match="resorces"):
        validate_config(prepare_config(bad))


def test_rayjob_manifest():
    job = yaml.safe_load((REPO / "cluster" / "rayjob.yaml").read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    assert "sweeps/corect.py" in job["spec"]["entrypoint"]
    assert job["spec"]["rayClusterSpec"]["rayVersion"].startswith("2.60")
    gpu = yaml.safe_load((REPO / "cluster" / "gpu.yaml").read_text())
    spec = job["spec"]["rayClusterSpec"]
    images = {c["image"] for g in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
              for c in g["template"]["spec"]["containers"]}
    assert images == {gpu["docker"]["image"]}             # the same pinned image (Dockerfile)
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
def test_data_shipping_node_copy(ray_local, tiny_dir, tmp_path, monkeypatch):
    """A node that cannot see the driver's directory gets a checked copy in its cache, once."""
    from dataclasses import replace
    from merc.data.dataset import MercData
    from merc.sweep.datashipping import DataShippingError, local_path, node_root, ship
    monkeypatch.setenv("MERC_CACHE", str(tmp_path / "cache"))
    handle = ship("synthetic:tiny", tiny_dir)
    assert node_root(handle) == Path(tiny_dir)              # visible here: used as is
    away = replace(handle, driver_root=str(tmp_path / "elsewhere"))
    root = node_root(away)
    assert root == tmp_path / "cache" / "shipped" / handle.fingerprint
    for name in handle.names:
        assert (root / name).read_bytes() == (Path(tiny_dir) / name).read_bytes(), name
    assert MercData(root).meta.fingerprint == handle.fingerprint
    stamp = (root / "manifest.json").stat().st_mtime_ns
    assert node_root(away) == root and (root / "manifest.json").stat().st_mtime_ns == stamp
    with pytest.raises(DataShippingError, match="fingerprint"):
        node_root(replace(away, fingerprint="0" * 16))
    with pytest.raises(DataShippingError, match="not readable on this node"):
        node_root(replace(away, fingerprint="1" * 16, files=None))
    assert local_path("file:///a/b%20c") == Path("/a/b c") and local_path("s3://b/k") is None
    with pytest.raises(DataShippingError, match="host"):
        local_path("file://otherhost/x")


def _private_mount(hidden: Path) -> list[str] | None:
    """A command prefix running its command in a private mount namespace (root, else a user
    namespace), or None where neither works here."""
    for pre in (["unshare", "--mount", "--propagation", "private"],
                ["unshare", "--user", "--map-root-user", "--mount", "--propagation", "private"]):
        try:
            r = subprocess.run(pre + ["sh", "-c", f"mount -t tmpfs none '{hidden}'"],
                               capture_output=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if r.returncode == 0:
            return pre
    return None


DRIVER = """
import shutil, sys
from merc.sweep.cli import model_script_main
spec, address, data, shipped = sys.argv[1:5]
common = ["--spec", spec, "--study", "speaker", "--quick", "--epochs", "1", "--address", address,
          "--cpus-per-trial", "1", "--max-concurrent", "2"]
rc1 = model_script_main("corect", common + ["--seeds", "0", "--data-dir", data,
                                            "--experiment", "two-node-path"])
shutil.rmtree(shipped, ignore_errors=True)   # the worker node must fetch the data again
rc2 = model_script_main("corect", common + ["--seeds", "0", "--data-dir", "file://" + data,
                                            "--experiment", "two-node-uri"])
sys.exit(rc1 or rc2)
"""


@pytest.mark.integration
def test_two_node_cluster(tmp_path):
    """The topology of cluster/gpu.yaml on 127.0.0.1: the driver on a head node with no CPU for
    trials, every trial on a worker node that cannot see the driver's files (it runs in a private
    mount namespace with an empty tmpfs over the driver's directory: dataset + the driver's
    cache, and has its own cache directory). The trials must open the dataset shipped through
    Ray's object store, given as a path, then as a ``file://`` URI (the worker's copy deleted in
    between, so it is fetched again). Ray's results directory stays visible to both nodes: it
    stands for the shared storage (s3://) of a real cluster."""
    from merc.data.synthetic import synth
    hidden = tmp_path / "driver"
    data = hidden / "data"
    synth(data, "tiny", seed=0)
    (hidden / "marker").write_text("driver only")
    prefix = _private_mount(hidden)
    if prefix is None:
        pytest.skip("no private mount namespace here (unshare -m / -Urm both failed)")
    worker_cache = tmp_path / "worker_cache"
    temp_dir = tempfile.mkdtemp(prefix="mrc", dir="/tmp")  # short: raylet socket paths are limited
    port = _free_port()
    env = dict(os.environ, RAY_AUTH_MODE="disabled", MERC_CACHE=str(hidden / "cache"),
               TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S="0")
    env.pop("RAY_ADDRESS", None)
    wenv = dict(env, MERC_CACHE=str(worker_cache), HOME=str(tmp_path / "worker_home"))
    common = ["--dashboard-agent-listen-port=0", "--metrics-export-port=0",
              "--disable-usage-stats"]
    try:
        subprocess.run([RAY, "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1",
                        f"--temp-dir={temp_dir}", "--include-dashboard=false", "--num-cpus=0",
                        *common],
                       check=True, env=env, capture_output=True, timeout=180)
        worker = " ".join([RAY, "start", f"--address=127.0.0.1:{port}",
                           "--node-ip-address=127.0.0.1", "--resources",
                           "'" + json.dumps({"node2": 1}) + "'", "--num-cpus=2", *common])
        subprocess.run(prefix + ["sh", "-c", f"mount -t tmpfs none '{hidden}' && exec {worker}"],
                       check=True, env=wenv, capture_output=True, timeout=180)
        # the worker node's processes really do not see the driver's files
        import psutil
        mine = os.readlink("/proc/self/ns/mnt")
        walled = [p.pid for p in psutil.process_iter(["cmdline"])
                  if temp_dir in " ".join(p.info["cmdline"] or []) and "raylet" in
                  " ".join(p.info["cmdline"] or []) and os.readlink(f"/proc/{p.pid}/ns/mnt") != mine]
        assert walled, "the worker node's raylet is not in its own mount namespace"
        assert not Path(f"/proc/{walled[0]}/root{hidden}/marker").exists()
        assert not Path(f"/proc/{walled[0]}/root{data}/manifest.json").exists()
        r = subprocess.run(
            [sys.executable, "-c", DRIVER, str(REPO / "search_spaces" / "corect.yaml"),
             f"127.0.0.1:{port}", str(data), str(worker_cache / "shipped")],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        assert "materialised once per node" in r.stdout
        from mlflow.tracking import MlflowClient
        from merc.data.format import read_manifest
        fp = read_manifest(data).fingerprint
        assert (worker_cache / "shipped" / fp / "manifest.json").is_file()   # fetched again
        c = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
        for exp_name, n, ds in (("two-node-path", 2, str(data)),
                                ("two-node-uri", 2, f"file://{data}")):
            exp = c.get_experiment_by_name(exp_name)
            runs = c.search_runs([exp.experiment_id], "tags.`merc.stage` = 'speaker'")
            assert len(runs) == n, exp_name
            assert all(x.data.tags["merc.status"] == "completed" for x in runs), [
                (x.data.tags.get("merc.status"), x.data.tags.get("merc.reason")) for x in runs]
            nodes = {x.data.tags.get("ray.node_id") for x in runs}
            assert len(nodes) == 1 and None not in nodes, nodes   # the worker (the head: 0 CPU)
            parents = c.search_runs([exp.experiment_id], "tags.`merc.role` = 'parent'")
            assert len(parents) == 1 and parents[0].data.tags["merc.dataset"] == ds
    finally:
        left = _kill_tagged(temp_dir)
    assert not left, f"Ray processes of {temp_dir} still alive: {left}"
