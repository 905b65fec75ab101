"""Bucket curriculum: MultiDAG+CL's difficulty measure and baby-step scheduler, for any model.

Nguyen et al., "Curriculum Learning Meets Directed Acyclic Graph for Multimodal Emotion
Recognition", LREC-COLING 2024 (``papers/multidag_cl.md``, sec. 2.2 and Algorithm 1); released
code vanntc711/MultiDAG-CL@59a7587 (``cl.py``, ``dataset.py``, ``run.py``). It only decides which
training dialogues an epoch sees (the ``epoch_subset`` hook), so it needs nothing from a model.

Difficulty measure function, Eq. (8), per training dialogue c
-------------------------------------------------------------
DLF(c) = (N_shift(c) + N_sp(c)) / (N_u(c) + N_sp(c)), where N_u is the number of utterances,
N_sp the number of distinct speakers (the smoothing term) and N_shift the number of emotional
shifts: consecutive turns of the same speaker (no turn of that speaker in between) whose labels
differ. Unlabelled utterances (label -100 here, -1 in the released code) count as one more label
value, as in the released ``Dialog.cc`` (so a labelled turn next to an unlabelled one is a shift).

Training scheduler (baby steps)
-------------------------------
The training dialogues are sorted by DLF (stable: ties keep the dataset order, as Python's sort in
the released code) and cut into buckets of increasing difficulty:

* ``cl_split="ceil"`` (released ``getbuckets``): consecutive buckets of ceil(D / k) dialogues,
  which can give fewer than k buckets (D = 108, k = 15 gives 14 buckets of 8 and 4);
* ``cl_split="even"``: exactly k buckets whose sizes differ by at most one.

Epoch e (0-based) trains on buckets 0 .. floor(e / ``cl_epochs_per_step``), i.e. one bucket is
added every ``cl_epochs_per_step`` epochs (released: 1, the ``run.py`` loop; its
``--max_epoch_per_baby_step`` flag is unused), and once all buckets are in, every later epoch uses
all training data. Batches are shuffled within the epoch's subset (the loop's shuffle; released
``SubsetRandomSampler``).

Per-epoch metrics (``epoch_end``): ``cl_buckets_used``, ``cl_fraction`` (share of the training
dialogues seen that epoch) and ``cl_difficulty`` (their mean DLF).
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np

from merc.data.dataset import DialogueSplit
from merc.configs.strategies import BucketCLConfig
from merc.strategies import register_strategy
from merc.strategies.base import Strategy


def dialogue_difficulty(offsets: np.ndarray, speakers: np.ndarray, labels: np.ndarray
                        ) -> np.ndarray:
    """Eq. (8) for every dialogue of a split given in flat form (``offsets`` [D+1], per-utterance
    ``speakers`` / ``labels`` [U]); vectorised: float64 [D]."""
    offsets = np.asarray(offsets, dtype=np.int64)
    lens = np.diff(offsets)
    D, U = len(lens), int(offsets[-1])
    if D == 0:
        return np.zeros(0)
    dlg = np.repeat(np.arange(D), lens)
    spk = np.asarray(speakers, dtype=np.int64)[:U]
    lab = np.asarray(labels, dtype=np.int64)[:U]
    # group the utterances by (dialogue, speaker), keeping dialogue order inside a group
    group = dlg * (int(spk.max(initial=0)) + 1) + spk
    order = np.argsort(group, kind="stable")
    g, y, d = group[order], lab[order], dlg[order]
    consecutive = g[1:] == g[:-1]                        # same speaker, no turn of it in between
    shifts = np.bincount(d[1:][consecutive & (y[1:] != y[:-1])], minlength=D)   # N_shift
    first = np.ones(U, dtype=bool)
    first[1:] = ~consecutive
    n_sp = np.bincount(d[first], minlength=D)            # N_sp: distinct speakers
    return (shifts + n_sp) / (lens + n_sp)               # Eq. (8)


def make_buckets(difficulty: np.ndarray, k: int, split: str = "ceil") -> list[np.ndarray]:
    """Dialogue indices sorted by difficulty (stable) and cut into buckets, easiest first."""
    order = np.argsort(np.asarray(difficulty), kind="stable")
    if k < 1:
        raise ValueError(f"cl_buckets must be >= 1, found {k}")
    if split == "ceil":
        size = max(math.ceil(len(order) / k), 1)
        return [order[s:s + size] for s in range(0, len(order), size)]
    if split == "even":
        return [b for b in np.array_split(order, k) if len(b)]
    raise ValueError(f"cl_split must be 'ceil' or 'even', found {split!r}")


@register_strategy("bucket_cl", BucketCLConfig)
class BucketCL(Strategy):
    """Baby-step curriculum over difficulty buckets (see the module docstring)."""

    name = "bucket_cl"

    def __init__(self, config: Optional[BucketCLConfig] = None):
        self.config = config or BucketCLConfig()
        self._key = None
        self.buckets: list[np.ndarray] = []
        self.difficulty = np.zeros(0)
        self._last: dict[str, float] = {}

    def _prepare(self, split: DialogueSplit) -> None:
        key = (id(split.arrays), len(split))
        if key == self._key:
            return
        c = self.config
        if c.cl_buckets > len(split):
            raise ValueError(f"strategy bucket_cl: cl_buckets={c.cl_buckets} exceeds the "
                             f"{len(split)} training dialogues of {split.name!r}; use at most "
                             f"{len(split)}")
        a = split.arrays
        self.difficulty = dialogue_difficulty(a.offsets, a.speakers, a.labels)
        self.buckets = make_buckets(self.difficulty, c.cl_buckets, c.cl_split)
        self._key = key

    def epoch_subset(self, epoch: int, split: DialogueSplit):
        self._prepare(split)
        used = min(epoch // self.config.cl_epochs_per_step + 1, len(self.buckets))
        idx = np.concatenate(self.buckets[:used])
        self._last = {"cl_buckets_used": float(used), "cl_fraction": len(idx) / len(split),
                      "cl_difficulty": float(self.difficulty[idx].mean())}
        return idx.tolist()

    def epoch_end(self, epoch: int) -> dict[str, float]:
        out, self._last = self._last, {}
        return out
