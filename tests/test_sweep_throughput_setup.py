"""What the sweep driver does for throughput (issue 13, item 3), without Ray processes: the lazy
model registry, Tune staging one trial per slot at once, trial actors that can take the local
Ray's prestarted workers. The speed itself is measured in benchmarks/ (sweep_throughput)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


def _last_json(code: str, *args: str):
    """Run ``code`` in a fresh interpreter (what it imports is what the test looks at) and return
    the JSON of its last stdout line; its stderr on failure."""
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_registry_imports_only_the_model_asked_for():
    code = ("import json, sys\n"
            "from merc.models import get_entry, model_names\n"
            "get_entry('multidag')\n"
            "mods = sorted(m for m in sys.modules if m.startswith('merc.models.') and\n"
            "              m not in ('merc.models.base',))\n"
            "pyg = 'torch_geometric' in sys.modules\n"
            "print(json.dumps([mods, pyg, model_names()]))\n")
    mods, pyg, names = _last_json(code)
    assert mods == ["merc.models.multidag"]
    assert pyg is False                     # multidag does not use PyG
    assert names == sorted(["corect", "dialoguegcn", "biddin", "mmgcn", "mmdfn", "multidag",
                            "ada2i", "micga"])


def test_unknown_model_names_every_registered_one():
    from merc.models import get_entry
    with pytest.raises(KeyError) as err:
        get_entry("nope")
    for name in ("corect", "mmgcn", "micga", "multidag"):
        assert name in str(err.value)


def test_every_built_in_model_module_registers_its_name():
    import importlib

    from merc.models import MODULES
    from merc.models.base import REGISTRY
    for name, mod in MODULES.items():
        importlib.import_module(mod)
        assert name in REGISTRY, (name, mod)


def test_pending_trials_is_scoped_and_leaves_a_user_setting(monkeypatch):
    from merc.sweep.runner import pending_trials
    key = "TUNE_MAX_PENDING_TRIALS_PG"
    monkeypatch.delenv(key, raising=False)
    with pending_trials(2):
        assert os.environ[key] == "2"
    assert key not in os.environ
    monkeypatch.setenv(key, "7")
    with pending_trials(2):
        assert os.environ[key] == "7"
    assert os.environ[key] == "7"


def test_tune_reads_the_pending_limit_for_our_searchers(monkeypatch):
    """Without it Tune stages one trial at a time for any custom searcher (Ray 2.60)."""
    from ray.tune.execution.tune_controller import _get_max_pending_trials
    from ray.tune.search.search_generator import SearchGenerator

    from merc.sweep.optuna_glue import GridSearcher
    from merc.sweep.runner import pending_trials
    monkeypatch.delenv("TUNE_MAX_PENDING_TRIALS_PG", raising=False)
    alg = SearchGenerator(GridSearcher([{"a": 1}, {"a": 2}], "val_wf1", "max"))
    assert _get_max_pending_trials(alg) == 1
    with pending_trials(3):
        assert _get_max_pending_trials(alg) == 3


def test_slots(monkeypatch):
    import ray

    from merc.sweep.runner import _Sweep, options_from
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 8.0, "GPU": 1.0})

    def slots(**kw):
        return _Sweep(options_from(spec="x.yaml", **kw)).slots()
    assert slots() == 8
    assert slots(cpus_per_trial=3) == 2
    assert slots(cpus_per_trial=0.5, gpus_per_trial=0.25) == 4
    assert slots(max_concurrent=3) == 3
    assert slots(cpus_per_trial=16) == 1


def test_plain_trial_actors(monkeypatch):
    """Tune's trial actors get no runtime_env while the sweep's own local Ray runs them (the
    variable it would set is exported to the workers instead); the default is restored after,
    and kept when Tune has something else to pass or the Ray is not the sweep's."""
    from ray.tune.execution import class_cache

    from merc.sweep.runner import plain_trial_actors
    for v in class_cache.ENV_VARS_TO_PROPAGATE:
        monkeypatch.delenv(v, raising=False)
    before = dict(class_cache.DEFAULT_ENV_VARS)
    assert before == {"PL_DISABLE_FORK": "1"}   # what start_ray exports (Ray 2.60)
    with plain_trial_actors(True):
        assert class_cache.DEFAULT_ENV_VARS == {}
    assert class_cache.DEFAULT_ENV_VARS == before
    with plain_trial_actors(False):
        assert class_cache.DEFAULT_ENV_VARS == before
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    with plain_trial_actors(True):
        assert class_cache.DEFAULT_ENV_VARS == before


def test_release_ray_stops_only_the_sweeps_own_ray_in_a_thread(monkeypatch):
    """After the last trials the sweep's own Ray stops in a (non-daemon) thread while the driver
    writes its tables; a Ray the sweep found running, or none, is left alone; the next sweep's
    start waits for that thread."""
    import threading

    import ray

    from merc.sweep import runner
    calls = []
    gate = threading.Event()

    def shutdown():
        calls.append(threading.current_thread().name)
        gate.wait(5)
    monkeypatch.setattr(ray, "shutdown", shutdown)
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    sweep = runner._Sweep(runner.options_from(spec="x.yaml"))
    sweep.release_ray()                          # not started by this sweep
    sweep._own_ray, sweep._ray_was_up = True, True
    sweep.release_ray()                          # found running
    assert calls == [] and not runner._STOPPING
    sweep._ray_was_up = False
    sweep.release_ray()
    (t,) = runner._STOPPING
    assert not t.daemon
    sweep.release_ray()                          # once
    assert len(runner._STOPPING) == 1
    nxt = runner._Sweep(runner.options_from(spec="x.yaml"))
    starter = threading.Thread(target=nxt.start_ray)
    starter.start()
    starter.join(0.3)
    assert starter.is_alive()                    # waits for the previous Ray to stop
    gate.set()
    starter.join(5)
    assert not starter.is_alive() and not runner._STOPPING
    assert calls == ["merc-ray-stop"]


def test_config_registries_pair_each_model_and_strategy_with_its_torch_free_config():
    """merc.configs names the same models and strategies as the registries, with the very
    classes the models and strategies register."""
    from merc.configs import (MODEL_CONFIGS, STRATEGY_CONFIGS, model_config_cls,
                              strategy_config_cls)
    from merc.models import MODULES, get_entry
    from merc.strategies import STRATEGIES, _load_all
    assert set(MODEL_CONFIGS) == set(MODULES)
    for name in MODULES:
        assert get_entry(name).config_cls is model_config_cls(name), name
    _load_all()
    assert set(STRATEGY_CONFIGS) == set(STRATEGIES)
    for name, (_, cls) in STRATEGIES.items():
        assert cls is strategy_config_cls(name), name
    with pytest.raises(KeyError, match="unknown model 'nope'; registered: ada2i, biddin"):
        model_config_cls("nope")
    with pytest.raises(KeyError, match="unknown strategy 'nope'; known: ada2i, bucket_cl"):
        strategy_config_cls("nope")


def test_validating_every_shipped_spec_imports_no_torch():
    """A sweep's driver validates before Ray starts (issue 10); without torch that takes ~0.4 s
    instead of ~2 s (issue 13): every spec in search_spaces/, every model's resolved config."""
    folder = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "search_spaces")
    specs = sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".yaml"))
    assert len(specs) >= 5
    code = ("import json, sys\n"
            "from merc.configs import MODEL_CONFIGS\n"
            "from merc.configs.train import resolve_config\n"
            "from merc.sweep.spec import load_spec\n"
            "for p in sys.argv[1:]:\n"
            "    load_spec(p); load_spec(p, quick=True)\n"
            "for m in MODEL_CONFIGS:\n"
            "    for fam in ('iemocap6', 'iemocap4', 'meld'):\n"
            "        resolve_config(m, {}, fam)\n"
            "print(json.dumps(sorted(m for m in ('torch', 'torch_geometric', 'sklearn', 'ray',\n"
            "                                    'mlflow') if m in sys.modules)))\n")
    assert _last_json(code, *specs) == []


def test_report_prefetch_runs_while_ray_starts_then_waits_for_the_first_result():
    """The end-of-sweep imports use the idle time of Ray's start; once Ray is up they wait for the
    first trial result instead of competing with the workers' imports and Tune's start."""
    code = (
        "import json, sys, threading, time\n"
        "from merc.sweep import runner, tracking\n"
        "ray_up = threading.Event(); ray_up.set()\n"
        "runner._prefetch_reporting(search=False, ray_up=ray_up)\n"
        "time.sleep(1.0)\n"
        "before = 'scipy.stats' in sys.modules or 'matplotlib.pyplot' in sys.modules\n"
        "tracking.TRIALS_RUNNING.set()\n"
        "t = [x for x in threading.enumerate() if x.name == 'merc-prefetch'][0]\n"
        "t.join(60)\n"
        "after = 'scipy.stats' in sys.modules and 'matplotlib.pyplot' in sys.modules\n"
        "runner._prefetch_reporting(search=True)            # Ray not up: no waiting\n"
        "[x for x in threading.enumerate() if x.name == 'merc-prefetch'][0].join(60)\n"
        "print(json.dumps([before, after, 'optuna.importance' in sys.modules,\n"
        "                  sys.modules['matplotlib'].get_backend()]))\n")
    before, after, search_mods, backend = _last_json(code)
    assert before is False and after is True
    assert search_mods is True
    assert backend.lower() == "agg"
