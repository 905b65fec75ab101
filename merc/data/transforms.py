"""Data transforms that a sweep varies as plain config keys.

* ``modalities``: any subset of A, T, V (``"T"``, ``"AT"``, ``"ATV"``...).
* ``missing_rate`` ρ: the incomplete-modality protocol of GCNet / Mi-CGA (Mi-CGA sec. 3.2.2). Each
  utterance drops some of its M modalities; at least one is always kept, so ρ ≤ (M−1)/M. We draw
  exactly ``round(ρ·U·M)`` missing entries: every utterance owns M−1 "droppable slots", the missing
  count is spread uniformly over all U·(M−1) slots, then each utterance drops that many of its
  modalities chosen uniformly. This hits the rate exactly (GCNet's CPM-Nets draw hits it only in
  expectation) while keeping the per-utterance pattern uniform.
"""
from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np
import torch

from merc.data.format import LETTER_TO_MODALITY, MODALITIES


def parse_modalities(spec: str | Sequence[str]) -> tuple[str, ...]:
    """``"TAV"``/``"atv"``/``["text", "audio"]`` -> canonical names in canonical order."""
    items = list(spec.upper()) if isinstance(spec, str) else list(spec)
    names = []
    for it in items:
        name = LETTER_TO_MODALITY.get(it.upper(), it.lower() if it.lower() in MODALITIES else None)
        if name is None:
            raise ValueError(f"modalities: unknown modality {it!r} in {spec!r}; use letters A, T, V")
        names.append(name)
    if not names or len(set(names)) != len(names):
        raise ValueError(f"modalities: expected a non-empty subset of A, T, V, found {spec!r}")
    return tuple(m for m in MODALITIES if m in names)


def _draw(U: int, M: int, rate: float, rng: np.random.Generator) -> np.ndarray:
    present = np.ones((U, M), dtype=bool)
    if rate <= 0 or M == 1 or U == 0:
        return present
    n_missing = int(round(rate * U * M))
    n_missing = min(n_missing, U * (M - 1))
    slots = rng.choice(U * (M - 1), size=n_missing, replace=False)
    k = np.bincount(slots // (M - 1), minlength=U)
    order = np.argsort(rng.random((U, M)), axis=1)          # random modality order per utterance
    drop = np.arange(M)[None, :] < k[:, None]                # first k of that order are dropped
    present[np.arange(U)[:, None], order] = ~drop
    return present


def fixed_missing_mask(U: int, M: int, rate: float, key: tuple) -> np.ndarray:
    """Presence mask [U, M] fixed by ``key`` (dataset fingerprint, split, seed)."""
    seed = int.from_bytes(hashlib.sha256(repr(key).encode()).digest()[:8], "little")
    return _draw(U, M, rate, np.random.default_rng(seed))


def random_missing_mask(U: int, M: int, rate: float, generator: torch.Generator) -> torch.Generator:
    """A fresh presence mask [U, M] from a torch generator (GCNet's per-batch redraw)."""
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    return torch.from_numpy(_draw(U, M, rate, np.random.default_rng(seed)))
