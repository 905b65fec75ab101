"""Synthetic MERC conversations with the phenomena the papers study (``merc data synth``).

The data exist to exercise the machinery and to give a study a *shape*; they claim nothing about
real emotions. Generative process, per dialogue (all draws from one ``numpy`` generator seeded by
``seed``, so a preset and seed fix the dataset bit for bit):

1. **Length** n from a clipped log-normal fitted to the preset's mean and range, then nudged so each
   split has exactly the preset's utterance total (IEMOCAP-shaped: 5146/664/1623).
2. **Speakers.** k speakers per dialogue (2 for IEMOCAP; 2-9, mostly few, for MELD); turns switch
   speaker with probability ``turn_switch``. Speaker ids are global (IEMOCAP M/F = 0/1) or per
   dialogue (MELD, order of appearance).
3. **Emotions.** Each dialogue draws two dominant emotions from the class prior (class imbalance,
   ``class_prior``). Each speaker follows a Markov chain: keep the last emotion with probability
   ``persistence``; otherwise (an *emotional shift*, what MultiDAG+CL's difficulty counts) adopt the
   interlocutor's last emotion with probability ``contagion``, else draw from the dialogue's dominant
   pair (``dominance``) or the prior, tilted by a per-speaker bias (``speaker_label_bias``).
4. **Features.** Each class has a prototype in a latent space (``latent_dim``); each modality maps
   the latent into its feature space with a fixed random projection. The latent of utterance i is
   ``snr_m * (proto[y_i] + past_cue * sum_k decay^k proto[y_{i+k}] + future_cue * sum_k decay^k
   proto[y_{i-k}]) + within_class_noise * N(0, I)``: an utterance carries a cue of the emotions it
   *provokes* in the next turns, so to classify utterance i the **past** context is informative
   beyond label persistence, and a window study favours larger P than F (``past_cue > future_cue``).
   Per-modality signal-to-noise ``snr`` sets the modality imbalance (text strongest, visual
   weakest); a per-speaker offset (``speaker_effect``) is added to every modality; isotropic noise
   of unit variance is added in feature space.

Presets: ``iemocap6`` (6 classes, 2 speakers, 108/12/31 dialogues, a100/t768/v512), ``iemocap4``
(the four kept classes), ``meld`` (7 classes, 2-9 speakers, 1038/114/280 short dialogues,
a300/t768/v342), ``small`` (40/10/12 IEMOCAP-like dialogues, small dims), ``demo`` (60/15/30
IEMOCAP-like dialogues, small dims, a strong past cue: the ``--quick`` studies' data, where a
study shows its shape in minutes on a laptop) and ``tiny`` (a few short dialogues, small dims,
for tests).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np
from pydantic import Field

from merc.config import StrictConfig
from merc.data.format import Dialogue, Manifest, write_dataset

IEMOCAP6_LABELS = ["hap", "sad", "neu", "ang", "exc", "fru"]
MELD_LABELS = ["neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger"]


class SynthConfig(StrictConfig):
    """Every knob of the generator; presets are instances of this."""

    name: str = "synthetic"
    family: str = "iemocap6"
    label_names: list[str] = Field(default_factory=lambda: list(IEMOCAP6_LABELS))
    class_prior: list[float] = Field(default_factory=lambda: [648, 1084, 1708, 1103, 1041, 1849])
    dialogues: dict[str, int] = Field(default_factory=lambda: {"train": 108, "valid": 12,
                                                               "test": 31})
    utterances: Optional[dict[str, int]] = Field(
        default_factory=lambda: {"train": 5146, "valid": 664, "test": 1623})
    length_mean: float = 49.0
    length_min: int = 8
    length_max: int = 110
    num_speakers: int = 2
    speakers_per_dialogue: tuple[int, int] = (2, 2)
    speaker_scope: str = "global"
    turn_switch: float = 0.8
    dims: dict[str, int] = Field(default_factory=lambda: {"audio": 100, "text": 768, "visual": 512})
    latent_dim: int = 32
    snr: dict[str, float] = Field(default_factory=lambda: {"audio": 0.4, "text": 0.6,
                                                           "visual": 0.22})
    within_class_noise: float = 1.0
    persistence: float = 0.75
    contagion: float = 0.3
    dominance: float = 0.6
    past_cue: float = 0.8
    future_cue: float = 0.1
    cue_decay: float = 0.7
    cue_steps: int = 6
    speaker_effect: float = 0.5
    speaker_label_bias: float = 0.5
    feature_scale: float = 1.0


PRESETS: dict[str, SynthConfig] = {
    "iemocap6": SynthConfig(name="synthetic-iemocap6"),
    "iemocap4": SynthConfig(name="synthetic-iemocap4", family="iemocap4",
                            label_names=["hap", "sad", "neu", "ang"],
                            class_prior=[648, 1084, 1708, 1103],
                            utterances={"train": 3200, "valid": 400, "test": 943},
                            length_mean=36.0, length_min=6, length_max=90),
    "meld": SynthConfig(name="synthetic-meld", family="meld", label_names=list(MELD_LABELS),
                        class_prior=[4710, 1205, 268, 683, 1743, 271, 1109],
                        dialogues={"train": 1038, "valid": 114, "test": 280},
                        utterances={"train": 9989, "valid": 1109, "test": 2610},
                        length_mean=9.6, length_min=1, length_max=24, num_speakers=9,
                        speakers_per_dialogue=(2, 9), speaker_scope="dialogue", turn_switch=0.7,
                        dims={"audio": 300, "text": 768, "visual": 342}),
    "small": SynthConfig(name="synthetic-small", dialogues={"train": 40, "valid": 10, "test": 12},
                         utterances=None, length_mean=20.0, length_min=4, length_max=40,
                         dims={"audio": 16, "text": 32, "visual": 24}, latent_dim=12),
    # The --quick studies' data: a study's *shape* in minutes on 2 CPUs. Each utterance carries a
    # strong cue of the next turns' emotions (past_cue 4, decaying over 6 turns) and none of the
    # previous ones, emotions shift often (persistence 0.3), and an utterance alone is ambiguous
    # (within-class noise 2): past context beats future (a small CORECT, 10 epochs at lr 3e-3-5e-3,
    # test w-F1 over seeds 0-1: P=0 ~40-47, P=4 ~55-58, P=11 ~50, F adds nothing; majority 14).
    "demo": SynthConfig(name="synthetic-demo", dialogues={"train": 60, "valid": 15, "test": 30},
                        utterances=None, length_mean=20.0, length_min=4, length_max=40,
                        dims={"audio": 16, "text": 32, "visual": 24}, latent_dim=12,
                        snr={"audio": 1.0, "text": 1.5, "visual": 0.6}, within_class_noise=2.0,
                        persistence=0.3, contagion=0.1, past_cue=4.0, future_cue=0.0,
                        cue_decay=0.7, cue_steps=6),
    "tiny": SynthConfig(name="synthetic-tiny", dialogues={"train": 16, "valid": 4, "test": 4},
                        utterances=None, length_mean=10.0, length_min=3, length_max=16,
                        dims={"audio": 8, "text": 16, "visual": 12}, latent_dim=8,
                        snr={"audio": 1.0, "text": 1.6, "visual": 0.6}),
}


def _lengths(cfg: SynthConfig, n: int, total: Optional[int], rng: np.random.Generator) -> np.ndarray:
    sigma = 0.45
    mu = np.log(cfg.length_mean) - sigma ** 2 / 2
    lens = np.clip(np.round(rng.lognormal(mu, sigma, n)), cfg.length_min, cfg.length_max).astype(int)
    if total is not None:  # nudge to the exact split total, staying inside [min, max]
        if not cfg.length_min * n <= total <= cfg.length_max * n:
            raise ValueError(f"utterances={total} impossible for {n} dialogues in "
                             f"[{cfg.length_min}, {cfg.length_max}]")
        while lens.sum() != total:
            step = 1 if lens.sum() < total else -1
            ok = np.flatnonzero((lens + step >= cfg.length_min) & (lens + step <= cfg.length_max))
            k = min(abs(total - int(lens.sum())), len(ok))
            lens[rng.choice(ok, size=k, replace=False)] += step
    return lens


def _dialogue_labels(cfg: SynthConfig, n: int, prior: np.ndarray, spk_bias: np.ndarray,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    lo, hi = cfg.speakers_per_dialogue
    k = lo if lo == hi else int(min(hi, lo + rng.geometric(0.55) - 1))
    if cfg.speaker_scope == "global":
        ids = rng.permutation(cfg.num_speakers)[:k]
    else:
        ids = np.arange(k)
    C = len(prior)
    dominant = rng.choice(C, size=2, replace=False, p=prior)
    speakers, labels = np.zeros(n, np.int64), np.zeros(n, np.int64)
    last: dict[int, int] = {}
    cur, prev_label = 0, None
    for i in range(n):
        if i > 0 and k > 1 and rng.random() < cfg.turn_switch:
            cur = (cur + 1 + int(rng.integers(k - 1))) % k
        s = int(ids[cur])
        p = prior * np.exp(spk_bias[s])
        p /= p.sum()
        if s in last and rng.random() < cfg.persistence:
            y = last[s]
        elif prev_label is not None and rng.random() < cfg.contagion:
            y = prev_label
        elif rng.random() < cfg.dominance:
            y = int(rng.choice(dominant, p=p[dominant] / p[dominant].sum()))
        else:
            y = int(rng.choice(C, p=p))
        speakers[i], labels[i] = s, y
        last[s], prev_label = y, y
    return speakers, labels


def generate(cfg: SynthConfig | str = "iemocap6", seed: int = 0) -> dict[str, list[Dialogue]]:
    """Draw all splits; returns {split: [Dialogue]} (deterministic in ``cfg`` and ``seed``)."""
    cfg = PRESETS[cfg] if isinstance(cfg, str) else cfg
    rng = np.random.default_rng(seed)
    C, L = len(cfg.label_names), cfg.latent_dim
    prior = np.asarray(cfg.class_prior, np.float64)
    prior /= prior.sum()
    protos = rng.normal(size=(C, L)) / np.sqrt(L) * 2.0
    proj = {m: rng.normal(size=(L, d)) / np.sqrt(L) for m, d in cfg.dims.items()}
    spk_offset = {m: rng.normal(size=(cfg.num_speakers, d)) * cfg.speaker_effect
                  for m, d in cfg.dims.items()}
    spk_bias = rng.normal(size=(cfg.num_speakers, C)) * cfg.speaker_label_bias
    decay = cfg.cue_decay ** np.arange(1, cfg.cue_steps + 1)
    out: dict[str, list[Dialogue]] = {}
    for split, n_dial in cfg.dialogues.items():
        total = cfg.utterances.get(split) if cfg.utterances else None
        lens = _lengths(cfg, n_dial, total, rng)
        dialogues = []
        for d, n in enumerate(lens):
            speakers, labels = _dialogue_labels(cfg, int(n), prior, spk_bias, rng)
            P = protos[labels]                                            # [n, L]
            cue_p, cue_f = np.zeros_like(P), np.zeros_like(P)
            for k, w in enumerate(decay, start=1):                      # cue of later emotions
                cue_p[:-k] += w * P[k:] if k < n else 0.0
                cue_f[k:] += w * P[:-k] if k < n else 0.0
            feats = {}
            for m, dim in cfg.dims.items():
                z = (cfg.snr[m] * (P + cfg.past_cue * cue_p + cfg.future_cue * cue_f)
                     + cfg.within_class_noise * rng.normal(size=P.shape))
                x = cfg.feature_scale * z @ proj[m] + spk_offset[m][speakers]
                feats[m] = (x + rng.normal(size=(int(n), dim))).astype(np.float32)
            dialogues.append(Dialogue(f"{split}_{d:04d}", feats, speakers, labels))
        out[split] = dialogues
    return out


def synth(out: str | os.PathLike, preset: str | SynthConfig = "iemocap6", seed: int = 0) -> Manifest:
    """Generate and write a synthetic dataset in the canonical format."""
    cfg = PRESETS[preset] if isinstance(preset, str) else preset
    splits = generate(cfg, seed)
    manifest = Manifest(
        name=cfg.name, family=cfg.family, num_classes=len(cfg.label_names),
        label_names=list(cfg.label_names), modalities=dict(cfg.dims),
        num_speakers=cfg.num_speakers, speaker_scope=cfg.speaker_scope, splits={},
        iemocap4_definition="iemocap4-kept" if cfg.family == "iemocap4" else None,
        validation="generated as its own split",
        provenance={"generator": "merc.data.synthetic", "preset": preset if isinstance(preset, str)
                    else "custom", "seed": seed, "config": cfg.model_dump()})
    return write_dataset(out, manifest, splits)


def cache_root() -> Path:
    return Path(os.environ.get("MERC_CACHE", Path.home() / ".cache" / "merc"))


def resolve_data(spec: str | os.PathLike, cache_dir: Optional[str | os.PathLike] = None) -> Path:
    """``synthetic:<preset>[:<seed>]`` -> a generated, cached dataset dir; a path -> itself.

    Generation goes to a temporary directory renamed into place, so concurrent trials that
    resolve the same spec never see a half-written dataset.
    """
    s = str(spec)
    if not s.startswith("synthetic:"):
        return Path(s).expanduser().resolve()
    parts = s.split(":")
    preset = parts[1]
    seed = int(parts[2]) if len(parts) > 2 else 0
    if preset not in PRESETS:
        raise ValueError(f"--data {s!r}: unknown synthetic preset {preset!r}; presets: "
                         f"{', '.join(PRESETS)}")
    key = hashlib.sha256(json.dumps([PRESETS[preset].model_dump(), seed, 1],
                                    sort_keys=True).encode()).hexdigest()[:10]
    root = Path(cache_dir) if cache_dir else cache_root() / "synthetic"
    target = root / f"{preset}-s{seed}-{key}"
    if (target / "manifest.json").is_file():
        return target.resolve()
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{preset}-"))
    try:
        synth(tmp, preset, seed)
        try:
            os.rename(tmp, target)
        except OSError:  # another process won the race
            pass
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target.resolve()
