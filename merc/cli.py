"""The ``merc`` command: train a model, manage datasets, run sweeps.

    merc train corect --data synthetic:iemocap6 --epochs 3 --set window_past=4
    merc train --config best.yaml
    merc data synth --shape iemocap6 --out D
    merc data import --format iemocap-9tuple IEMOCAP_features.pkl D
    merc data inspect D
    merc sweep validate search_spaces/corect.yaml

Every user error (bad argument, unknown key, a dataset that does not fit) is one line on stderr
naming the argument, file or key, and exit code 2.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any, Optional

from merc.config import ConfigError, parse_value
from merc.data.format import DatasetError


class UsageError(Exception):
    pass


def _parse_sets(items: list[str]) -> dict[str, Any]:
    out = {}
    for it in items or []:
        key, eq, val = it.partition("=")
        if not eq or not key:
            raise UsageError(f"--set: expected key=value, found {it!r}")
        out[key.strip()] = parse_value(val)
    return out


def _load_config_file(path: str) -> tuple[Optional[str], Optional[str], dict[str, Any]]:
    """(model, data spec, flat config) from a YAML file: a ``best.yaml`` written by ``merc best``
    or a plain ``{model, data, config}`` mapping."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"--config: file {path!r} does not exist")
    try:
        from merc.sweep.spec import load_fixed_config  # the sweep layer owns best.yaml's schema
        return load_fixed_config(p)
    except ImportError:
        pass
    import yaml
    doc = yaml.safe_load(p.read_text()) or {}
    if not isinstance(doc, dict):
        raise UsageError(f"{path}: expected a mapping at top level, found {type(doc).__name__}")
    flat = doc.get("config", doc.get("fixed", {}))
    if not isinstance(flat, dict):
        raise UsageError(f"{path}: key 'config' must be a mapping of config keys")
    return doc.get("model"), doc.get("data", doc.get("dataset")), dict(flat)


def cmd_train(args) -> int:
    from merc.data.dataset import MercData
    from merc.data.synthetic import resolve_data
    from merc.train import fit, resolve_config, save_model

    model, data_spec, flat = None, None, {}
    if args.config:
        model, data_spec, flat = _load_config_file(args.config)
    if args.model:
        if model and model != args.model:
            raise UsageError(f"model {args.model!r} given, but --config {args.config} is for "
                             f"{model!r}")
        model = args.model
    if not model:
        raise UsageError("train: name a model (e.g. `merc train corect`) or pass --config FILE")
    data_spec = args.data or data_spec or "synthetic:iemocap6"
    flat.update(_parse_sets(args.set))
    for key in ("epochs", "seed", "threads", "device"):
        if getattr(args, key) is not None:
            flat[key] = getattr(args, key)
    root = resolve_data(data_spec)
    from merc.data.format import read_manifest
    manifest = read_manifest(root)
    source = f"--config {args.config} / --set" if args.config else "--set"
    train_cfg, model_cfg = resolve_config(model, flat, manifest.family, source)
    data = MercData(root, train_cfg.modalities, train_cfg.missing_rate, train_cfg.seed,
                    train_cfg.missing_redraw)
    log = None if args.quiet else (lambda s: print(s, flush=True))
    if not args.quiet:
        print(f"merc train {model} on {manifest.name} ({root}) modalities="
              f"{train_cfg.modalities} epochs={train_cfg.epochs} seed={train_cfg.seed}", flush=True)
        print(config_text(model, manifest.family, flat, train_cfg, model_cfg), flush=True)
    res = fit(model, data, train_cfg, model_cfg, log=log)
    per_class = {n: res.best.get(f"test_f1_{n}") for n in data.meta.label_names}
    summary = {"model": model, "data": str(root), "status": res.status, "reason": res.reason,
               "params": res.num_params, "selected_epoch": res.best_epoch,
               "val_wf1": res.best.get("val_wf1"), "val_acc": res.best.get("val_acc"),
               "test_wf1": res.best.get("test_wf1"), "test_acc": res.best.get("test_acc"),
               "test_per_class_f1": per_class,
               "median_epoch_s": statistics.median(res.epoch_times) if res.epoch_times else None}
    if args.save and res.best_state is not None:
        save_model(args.save, model, train_cfg, model_cfg, data.meta, res.best_state,
                   {"summary": summary})
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"status: {res.status}{' (' + res.reason + ')' if res.reason else ''}")
        if res.best:
            print(f"selected epoch {res.best_epoch} (by val w-F1) | val w-F1 "
                  f"{res.best['val_wf1']:.2f} acc {res.best['val_acc']:.2f} | test w-F1 "
                  f"{res.best['test_wf1']:.2f} acc {res.best['test_acc']:.2f} | params "
                  f"{res.num_params:,} | median epoch {summary['median_epoch_s']:.2f}s")
            print("per-class F1 (test | val, selected epoch): " + ", ".join(
                f"{n} {res.best.get(f'test_f1_{n}', float('nan')):.1f} | "
                f"{res.best.get(f'val_f1_{n}', float('nan')):.1f}"
                for n in data.meta.label_names))
    return 0 if res.status != "diverged" else 1


def config_text(model: str, family: str, flat: dict[str, Any], train_cfg, model_cfg) -> str:
    """The resolved config, every key, marked by where its value comes from: ``*`` the command
    line / --config, ``†`` the paper's defaults for the dataset family, else the code default."""
    from merc.models import get_entry
    cls = get_entry(model).config_cls
    paper = cls.paper_defaults(family)
    fam = family if family in cls.PAPER_DEFAULTS else (
        f"{next(iter(cls.PAPER_DEFAULTS))} (no {family!r} entry: the first family's)"
        if cls.PAPER_DEFAULTS else "none")
    given = {k.rpartition(".")[2] for k in flat}

    def fmt(d: dict) -> str:
        return " ".join(f"{k}={v}{'*' if k in given else '†' if k in paper else ''}"
                        for k, v in d.items())
    out = [f"config ({model}; dataset family {family}; paper defaults of {fam}; * = given, "
           f"† = paper default):",
           "  train    " + fmt(train_cfg.model_dump(exclude={"strategy_config"})),
           "  model    " + fmt(model_cfg.model_dump())]
    if train_cfg.strategy_config is not None and train_cfg.strategy_config.model_dump():
        out.append(f"  strategy " + fmt(train_cfg.strategy_config.model_dump()))
    return "\n".join(out)


def cmd_synth(args) -> int:
    from merc.data.synthetic import PRESETS, synth
    if args.shape not in PRESETS:
        raise UsageError(f"--shape: unknown preset {args.shape!r}; presets: {', '.join(PRESETS)}")
    m = synth(args.out, args.shape, args.seed)
    print(f"wrote {args.out}: {m.name}, " + ", ".join(
        f"{s} {i.dialogues} dialogues / {i.utterances} utterances" for s, i in m.splits.items()))
    return 0


def cmd_import(args) -> int:
    from merc.data.importers import run_import
    m = run_import(args.format, args.src, args.out, **_parse_sets(args.opt))
    print(f"imported {args.src} -> {args.out}: {m.name} ({m.family}), " + ", ".join(
        f"{s} {i.dialogues}/{i.utterances}" for s, i in m.splits.items()))
    return 0


def cmd_inspect(args) -> int:
    import numpy as np
    from merc.data.format import read_manifest, read_split, verify_dataset
    m = read_manifest(args.dir)
    if getattr(args, "verify", False):
        print(f"verified  {verify_dataset(args.dir)}")
    print(f"dataset   {m.name}  (family {m.family}, fingerprint {m.fingerprint})")
    print(f"classes   {m.num_classes}: {', '.join(m.label_names)}")
    if m.iemocap4_definition:
        print(f"IEMOCAP-4 definition: {m.iemocap4_definition}")
    mods = ", ".join(f"{k} {v}" for k, v in m.modalities.items()) or "none (featurize first)"
    print(f"modalities {mods}")
    print(f"speakers  {m.num_speakers} ({m.speaker_scope} ids)")
    if m.validation:
        print(f"validation {m.validation}")
    if m.text_encoder:
        print(f"text encoder {m.text_encoder}")
    print(f"{'split':<6} {'dialogues':>9} {'utterances':>10}  class counts")
    for s, info in m.splits.items():
        lab = read_split(args.dir, s, m).labels
        counts = np.bincount(lab[lab >= 0], minlength=m.num_classes)
        print(f"{s:<6} {info.dialogues:>9} {info.utterances:>10}  " +
              " ".join(f"{n}:{c}" for n, c in zip(m.label_names, counts)))
    print(f"provenance {json.dumps({k: v for k, v in m.provenance.items() if k != 'config'})}")
    return 0


def cmd_featurize(args) -> int:
    from merc.data.featurize import featurize
    featurize(args.dir, text_encoder=args.text_encoder, batch_size=args.batch_size,
              progress=not args.quiet, force=args.force)
    return 0


def cmd_models(args) -> int:
    from merc.models import get_entry, model_names
    for n in model_names():
        print(f"{n:<14} {get_entry(n).paper}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="merc", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train one model, select on validation, report test")
    t.add_argument("model", nargs="?", help="registered model name (see `merc models`)")
    t.add_argument("--data", help="dataset dir or synthetic:<preset> (default synthetic:iemocap6)")
    t.add_argument("--config", help="YAML with model/data/config (e.g. best.yaml)")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (repeatable)")
    t.add_argument("--epochs", type=int)
    t.add_argument("--seed", type=int)
    t.add_argument("--threads", type=int)
    t.add_argument("--device")
    t.add_argument("--save", help="write the selected model (state dict + config) here")
    t.add_argument("--json", action="store_true", help="print the summary as JSON")
    t.add_argument("--quiet", action="store_true")
    t.set_defaults(fn=cmd_train)

    d = sub.add_parser("data", help="synthesize, import, inspect or featurize datasets")
    dsub = d.add_subparsers(dest="data_command", required=True)
    s = dsub.add_parser("synth", help="write a synthetic dataset")
    s.add_argument("--shape", default="iemocap6",
                   help="preset: iemocap6, iemocap4, meld, small, demo, tiny")
    s.add_argument("--out", required=True)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(fn=cmd_synth)
    from merc.data.importers import formats_help
    i = dsub.add_parser("import", help="import public feature files into the canonical format",
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        epilog=formats_help() + "\n\nexample: merc data import --format "
                        "dialogue-csv emorynlp/ D --opt dialogue=Season+Episode+Scene_ID")
    i.add_argument("--format", required=True, help="one of the formats below")
    i.add_argument("src")
    i.add_argument("out")
    i.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                   help="importer option (repeatable), e.g. valid_dialogues=12")
    i.set_defaults(fn=cmd_import)
    n = dsub.add_parser("inspect", help="print a dataset's manifest, class counts and dims")
    n.add_argument("dir")
    n.add_argument("--verify", action="store_true", help="hash every file against the manifest "
                   "fingerprint and check every array (exit 2 naming the first problem)")
    n.set_defaults(fn=cmd_inspect)
    f = dsub.add_parser("featurize", help="compute text features with a sentence encoder")
    f.add_argument("dir")
    f.add_argument("--text-encoder", default=None,
                   help="sentence-transformers name or path (default: offline all-MiniLM-L6-v2)")
    f.add_argument("--batch-size", type=int, default=64)
    f.add_argument("--force", action="store_true", help="recompute even if cached / overwrite")
    f.add_argument("--quiet", action="store_true", help="no progress output")
    f.set_defaults(fn=cmd_featurize)

    m = sub.add_parser("models", help="list registered models")
    m.set_defaults(fn=cmd_models)
    try:
        from merc.sweep.cli import add_sweep_commands
    except ImportError:
        pass
    else:
        add_sweep_commands(sub)
    return p


def main(argv: Optional[list[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.fn(args) or 0)
    except (UsageError, ConfigError, DatasetError, KeyError, ValueError) as err:
        msg = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"merc: error: {' '.join(str(msg).split())}", file=sys.stderr)  # one line
        return 2


if __name__ == "__main__":
    sys.exit(main())
