"""Command-line glue: ``merc sweep validate|run``, ``merc best``, and ``sweeps/<model>.py``.

``merc.cli`` calls :func:`add_sweep_commands(subparsers)`; every handler is set as the parser's
``func`` default and returns an exit code. ``python -m merc.sweep.cli ...`` runs the same
commands without ``merc.cli``. ``sweeps/<model>.py`` is two lines: :func:`model_script_main`.

Exit codes: 0 done, 1 no trial completed, 2 malformed spec / arguments, 3 tracking store
unreachable, 130 interrupted (resume with ``--resume``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

from merc.sweep.spec import EXIT_SPEC_ERROR, SpecError

REPO = Path(__file__).resolve().parents[2]


def _err(msg: str) -> None:
    print(f"error: {' '.join(str(msg).split())}", file=sys.stderr)   # always one line


def _seeds(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, found {text!r}")


def _kv(text: str) -> tuple[str, object]:
    from merc.config import parse_value
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, found {text!r}")
    k, v = text.split("=", 1)
    return k.strip(), parse_value(v)


def add_run_arguments(p: argparse.ArgumentParser, with_spec: bool = True) -> None:
    if with_spec:
        p.add_argument("spec", help="search-space file, e.g. search_spaces/corect.yaml")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--study", help="a named study of the spec (grid x seeds)")
    g.add_argument("--search", action="store_true", help="the spec's Optuna search")
    p.add_argument("--dataset", help="dataset family / synthetic preset (iemocap6, meld, tiny) or "
                                     "a dataset spec (synthetic:iemocap6, a directory)")
    p.add_argument("--data-dir", help="canonical dataset directory on the driver's machine, "
                                      "file:// or s3://, gs:// URI; shipped to every Ray node "
                                      "through the object store; default: synthetic data")
    p.add_argument("--num-samples", type=int, help="search trials (default: the spec's)")
    p.add_argument("--epochs", type=int, help="override the epochs of every trial")
    p.add_argument("--seeds", type=_seeds, help="override a study's seeds, e.g. 0,1,2")
    p.add_argument("--set", dest="overrides", type=_kv, action="append", default=[],
                   metavar="KEY=VALUE", help="override a config key for every trial "
                                                   "(model=NAME: train another of the spec's "
                                                   "models)")
    p.add_argument("--cpus-per-trial", type=float, default=1.0)
    p.add_argument("--gpus-per-trial", type=float, default=0.0, help="fractions allowed (0.5)")
    p.add_argument("--max-concurrent", type=int, default=0, help="0 = as resources allow")
    p.add_argument("--retries", type=int, default=1, help="retries of a failed trial (from its "
                                                          "last checkpoint)")
    p.add_argument("--checkpoint-interval", type=float, default=30.0,
                   help="seconds between a trial's resume checkpoints (0 = every epoch; the last "
                        "epoch is always saved); a retried trial replays at most this much")
    p.add_argument("--address", help="an existing Ray cluster (auto, ray://host:10001, host:6379)")
    p.add_argument("--num-cpus", type=int, help="CPUs of the local Ray instance")
    p.add_argument("--mlflow-uri", help="tracking server URI (default: sqlite ./mlflow.db)")
    p.add_argument("--experiment", help="MLflow experiment (default <spec name>-<study|search>; "
                                        "the spec's `name:`, else its model)")
    p.add_argument("--storage", help="Ray results storage: a path (made absolute) or s3://, gs://")
    p.add_argument("--name", help="sweep name (default <spec name>-<kind>-<data>-<timestamp>)")
    p.add_argument("--resume", action="store_true", help="resume an interrupted sweep (the "
                                                         "latest of this kind unless --name)")
    p.add_argument("--quick", action="store_true", help="small budget on the tiny synthetic data")
    p.add_argument("--confirm-top", type=int, default=0, help="re-run the top K search configs")
    p.add_argument("--confirm-seeds", type=int, default=0, help="... with N fresh seeds")
    p.add_argument("--import", dest="imports", action="append", default=[],
                   help="extra module to import in the driver and every trial (registers models)")
    p.add_argument("-v", "--verbose", type=int, default=1, help="0 quiet, 1 a line per finished trial (default), 2-3 also Ray Tune's "
                        "status tables (its verbosity 1-2)")


def cmd_run(args: argparse.Namespace) -> int:
    from merc.sweep.runner import options_from
    kw = dict(vars(args))
    kw["overrides"] = dict(kw.get("overrides") or [])
    opts = options_from(**kw)
    return _run(opts)


def _exit_code_of(call) -> tuple[int, object]:
    """Run ``call()``; a spec error or an error carrying ``exit_code`` becomes one message on
    stderr and that exit code; anything else propagates."""
    try:
        return 0, call()
    except SpecError as err:
        _err(str(err))
        return EXIT_SPEC_ERROR, None
    except Exception as err:
        code = getattr(err, "exit_code", None)
        if code is None:
            raise
        _err(str(err))
        return code, None


def _run(opts) -> int:
    from merc.sweep.runner import EXIT_INTERRUPTED, run_sweep
    try:
        code, outcome = _exit_code_of(lambda: run_sweep(opts))
    except KeyboardInterrupt:   # outside Tune's own SIGINT handling (start-up, reporting)
        _err("interrupted (the parent run is marked FAILED; resume with --resume)")
        return EXIT_INTERRUPTED
    return outcome.exit_code if outcome is not None else code


def cmd_validate(args: argparse.Namespace) -> int:
    from merc.sweep.spec import format_summary, load_spec
    try:
        spec = load_spec(args.file, quick=args.quick)
    except SpecError as err:
        _err(str(err))
        return EXIT_SPEC_ERROR
    print(format_summary(spec))
    return 0


def cmd_best(args: argparse.Namespace) -> int:
    from merc.sweep.best import export_best
    code, res = _exit_code_of(lambda: export_best(
        args.experiment, metric=args.metric, alias=args.alias, out=args.out,
        tracking_uri=args.mlflow_uri, sweep=args.sweep, model_name=args.registered_name))
    if res is None:
        return code
    print(res.summary)
    return 0


def add_sweep_commands(subparsers) -> None:
    """Add ``sweep`` (validate | run) and ``best`` to ``merc``'s subparsers (handlers are set as both
    ``func`` and ``fn`` defaults)."""
    sw = subparsers.add_parser("sweep", help="validate and run sweeps (Ray Tune + Optuna + "
                                             "MLflow)")
    sub = sw.add_subparsers(dest="sweep_command", required=True)
    v = sub.add_parser("validate", help="check a search-space file (exit 2 if malformed)")
    v.add_argument("file")
    v.add_argument("--quick", action="store_true", help="also resolve the quick variant")
    v.set_defaults(func=cmd_validate, fn=cmd_validate)
    r = sub.add_parser("run", help="run or resume a study or a search")
    add_run_arguments(r)
    r.set_defaults(func=cmd_run, fn=cmd_run)
    b = subparsers.add_parser("best", help="export the best configuration (best.yaml) and "
                                           "register the champion model")
    b.add_argument("--experiment", required=True, help="MLflow experiment of the sweep")
    b.add_argument("--sweep", help="sweep name (default: the latest finished one)")
    b.add_argument("--metric", default="val_wf1")
    b.add_argument("--alias", default="champion")
    b.add_argument("--registered-name", help="registered model name (default merc-<model>)")
    b.add_argument("--out", default="best.yaml")
    b.add_argument("--mlflow-uri", help="tracking URI (default: sqlite ./mlflow.db)")
    b.set_defaults(func=cmd_best, fn=cmd_best)


def model_script_main(name: str, argv: Optional[Sequence[str]] = None) -> int:
    """The whole of ``sweeps/<name>.py``: the run arguments and the spec
    ``search_spaces/<name>.yaml`` (next to the installed project, or ``--spec``). ``name`` is the
    spec's name, not necessarily a model: ``sweeps/spcl.py`` runs ``search_spaces/spcl.yaml``,
    whose default model is mmgcn (a training plug-in over several backbones)."""
    p = argparse.ArgumentParser(prog=f"sweeps/{name}.py",
                                description=f"Run a {name} study or search (Ray Tune + Optuna "
                                            f"+ MLflow).")
    p.add_argument("--spec", default=str(_spec_path(name)), help="search-space file")
    add_run_arguments(p, with_spec=False)
    args = p.parse_args(argv)
    return cmd_run(args)


def spec_candidates(name: str, script: Optional[str] = None) -> list[Path]:
    """Where ``sweeps/<name>.py`` looks for ``<name>.yaml``, in order: next to the script (its
    folder and ``../search_spaces``: the repository layout), the working directory's
    ``search_spaces/``, then inside the installed package (``merc/search_spaces``, package data)."""
    script = script if script is not None else (sys.argv[0] if sys.argv and sys.argv[0] else "")
    bases = []
    if script.endswith(".py"):
        d = Path(script).resolve().parent
        bases += [d, d / "search_spaces", d.parent / "search_spaces"]
    bases += [Path.cwd() / "search_spaces", Path(__file__).resolve().parents[1] / "search_spaces",
              REPO / "search_spaces"]
    return [b / f"{name}.yaml" for b in dict.fromkeys(bases)]


def _spec_path(name: str) -> Path:
    cands = spec_candidates(name)
    packaged = Path(__file__).resolve().parents[1] / "search_spaces" / f"{name}.yaml"
    return next((p for p in cands if p.is_file()), packaged)


def exit_process(code: Optional[int]) -> None:
    """End a sweep command's process with ``code``, as ``sys.exit`` would but without the
    interpreter's final teardown: non-daemon threads are joined and every exit handler runs
    (``ray.shutdown``, logging, MLflow's), streams are flushed, then ``os._exit``. What is skipped
    is freeing every module and object one by one (torch, Ray, MLflow, pandas: ~6 s on the 2-core
    machine after a sweep, measured in benchmarks/results/sweep_throughput.md). Only for the
    ``__main__`` of sweep scripts: in-process callers (tests) get the code returned."""
    import atexit
    import threading
    code = int(code or 0)
    try:
        for t in threading.enumerate():
            if t is not threading.main_thread() and not t.daemon and t.is_alive():
                t.join()
        atexit._run_exitfuncs()
    except BaseException:   # noqa: BLE001 - the normal exit path then reports it
        sys.exit(code)
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:   # noqa: BLE001 - a closed pipe
                pass
    os._exit(code)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m merc.sweep.cli")
    sub = p.add_subparsers(dest="command", required=True)
    add_sweep_commands(sub)
    args = p.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    exit_process(main())
