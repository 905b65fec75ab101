"""Whole-dialogue datasets and padded batches (the shape contract of DESIGN.md).

A :class:`Batch` holds B dialogues padded to the longest, N utterances:

* ``features[m]``  float [B, N, d_m] per kept modality (zeros at padding and at missing entries)
* ``present``      bool  [B, N, M]  which modality of which utterance is observed (missing mask)
* ``mask``         bool  [B, N]     real (unpadded) utterances
* ``speakers``     long  [B, N]     speaker ids (0 at padding)
* ``labels``       long  [B, N]     class ids, -100 at padding and unlabelled utterances
* ``lengths``      long  [B]        dialogue lengths
* ``index``        long  [B]        dialogue indices in the split (strategies key on these)
* ``unmasked``     the features *before* the missing-modality mask (only when some entry is
                   missing, else ``None``): the ground truth of reconstruction losses (Mi-CGA eq. 29,
                   GCNet). A model must never feed it into its prediction.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np
import torch

from merc.data.format import (IGNORE_INDEX, LETTER_TO_MODALITY, MODALITY_TO_LETTER, DatasetError,
                              Manifest, SplitArrays, check_usable, read_manifest, read_split,
                              verify_fingerprint)
from merc.data.transforms import fixed_missing_mask, parse_modalities, random_missing_mask


@dataclass(frozen=True)
class DatasetMeta:
    """What a model needs to know about the data to build itself."""

    name: str
    family: str
    modalities: tuple[str, ...]
    dims: dict[str, int]
    num_classes: int
    num_speakers: int
    label_names: tuple[str, ...]
    class_weights: tuple[float, ...]   # inverse train-split frequency, normalised to mean 1
    fingerprint: str


@dataclass
class Batch:
    features: dict[str, torch.Tensor]
    present: torch.Tensor
    mask: torch.Tensor
    speakers: torch.Tensor
    labels: torch.Tensor
    lengths: torch.Tensor
    index: torch.Tensor
    unmasked: Optional[dict[str, torch.Tensor]] = None

    def to(self, device: torch.device | str) -> "Batch":
        kw = {f.name: getattr(self, f.name) for f in fields(self)}
        kw["features"] = {m: x.to(device, non_blocking=True) for m, x in self.features.items()}
        if self.unmasked is not None:
            kw["unmasked"] = {m: x.to(device, non_blocking=True) for m, x in self.unmasked.items()}
        for k in ("present", "mask", "speakers", "labels", "lengths", "index"):
            kw[k] = kw[k].to(device, non_blocking=True)
        return Batch(**kw)

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.features)

    @property
    def num_utterances(self) -> int:
        return int(self.lengths.sum())


class DialogueSplit:
    """One split of a dataset restricted to a modality subset, with a fixed missing-modality mask.

    The mask is drawn once per (dataset fingerprint, split, seed, rate) so that every trial of a
    sweep is evaluated on the same observed entries; ``redraw=True`` draws a fresh mask for every
    training batch as GCNet does (evaluation stays fixed).
    """

    def __init__(self, arrays: SplitArrays, modalities: Sequence[str], missing_rate: float = 0.0,
                 seed: int = 0, fingerprint: str = "", redraw: bool = False):
        self.arrays = arrays
        self.modalities = tuple(modalities)
        self.missing_rate = float(missing_rate)
        self.redraw = redraw
        self.offsets = arrays.offsets
        self.lengths = arrays.lengths
        self.present = fixed_missing_mask(int(arrays.offsets[-1]), len(self.modalities),
                                          self.missing_rate, (fingerprint, arrays.name, seed))

    def __len__(self) -> int:
        return self.arrays.num_dialogues

    @property
    def name(self) -> str:
        return self.arrays.name

    def batch(self, indices: Sequence[int], generator: Optional[torch.Generator] = None) -> Batch:
        """Pad the dialogues ``indices`` into one :class:`Batch` (fresh mask if ``generator``)."""
        idx = np.asarray(indices, dtype=np.int64)
        starts, ends = self.offsets[idx], self.offsets[idx + 1]
        lens = ends - starts
        B, N = len(idx), int(lens.max())
        rows = np.concatenate([np.arange(s, e) for s, e in zip(starts, ends)])
        pos_b = np.repeat(np.arange(B), lens)
        pos_n = np.concatenate([np.arange(n) for n in lens])
        mask = torch.zeros(B, N, dtype=torch.bool)
        mask[pos_b, pos_n] = True
        if self.redraw and generator is not None and self.missing_rate > 0:
            present_rows = random_missing_mask(len(rows), len(self.modalities), self.missing_rate,
                                               generator)
        else:
            present_rows = torch.from_numpy(self.present[rows])
        present = torch.zeros(B, N, len(self.modalities), dtype=torch.bool)
        present[pos_b, pos_n] = present_rows
        feats, unmasked = {}, ({} if not bool(present_rows.all()) else None)
        for k, m in enumerate(self.modalities):
            src = torch.from_numpy(np.ascontiguousarray(self.arrays.features[m][rows]))
            x = torch.zeros(B, N, src.shape[1])
            x[pos_b, pos_n] = src * present_rows[:, k:k + 1]
            feats[m] = x
            if unmasked is not None:
                full = torch.zeros(B, N, src.shape[1])
                full[pos_b, pos_n] = src
                unmasked[m] = full
        speakers = torch.zeros(B, N, dtype=torch.long)
        speakers[pos_b, pos_n] = torch.from_numpy(self.arrays.speakers[rows])
        labels = torch.full((B, N), IGNORE_INDEX, dtype=torch.long)
        labels[pos_b, pos_n] = torch.from_numpy(self.arrays.labels[rows])
        return Batch(feats, present, mask, speakers, labels, torch.from_numpy(lens.astype(np.int64)),
                     torch.from_numpy(idx), unmasked)

    def batches(self, batch_size: int, shuffle: bool = False,
                generator: Optional[torch.Generator] = None,
                subset: Optional[Sequence[int]] = None) -> Iterator[Batch]:
        """Whole-dialogue batches; ``subset`` restricts to those dialogue indices (curricula)."""
        order = torch.as_tensor(list(subset) if subset is not None else range(len(self)),
                                dtype=torch.long)
        if shuffle:
            order = order[torch.randperm(len(order), generator=generator)]
        for s in range(0, len(order), batch_size):
            yield self.batch(order[s:s + batch_size].tolist(), generator if shuffle else None)


class MercData:
    """A dataset directory opened for training: manifest, meta and the three splits."""

    def __init__(self, root: str | os.PathLike, modalities: str = "ATV", missing_rate: float = 0.0,
                 seed: int = 0, missing_redraw: bool = False):
        self.root = Path(root)
        self.manifest: Manifest = read_manifest(self.root)
        mods = parse_modalities(modalities)
        absent = [m for m in mods if m not in self.manifest.modalities]
        if absent:
            have = "".join(MODALITY_TO_LETTER[m] for m in self.manifest.modalities) or "none"
            raise DatasetError(
                f"{self.root}: modalities={modalities!r} asks for "
                f"{', '.join(absent)}, absent from this dataset (it has {have}: "
                f"{dict(self.manifest.modalities)})")
        M = len(mods)
        # 1e-3: the bound may be written to three decimals (0.667 for 2/3; the draw caps the
        # count at U * (M-1) missing entries, one modality always kept)
        if not 0.0 <= missing_rate <= (M - 1) / M + 1e-3:
            raise DatasetError(f"missing_rate={missing_rate} must lie in [0, (M-1)/M = "
                               f"{(M - 1) / M:.3f}] for {M} modalities (one is always kept)")
        self.modalities = tuple(m for m in self.manifest.modalities if m in mods)
        fp = self.manifest.fingerprint
        for s in ("train", "valid", "test"):
            if s not in self.manifest.splits:
                raise DatasetError(f"{self.root / 'manifest.json'}: split {s!r} is missing (found "
                                   f"{sorted(self.manifest.splits)})")
        arrays = {s: read_split(self.root, s, self.manifest) for s in self.manifest.splits}
        check_usable(self.root, arrays)
        # after the structural checks (their messages are more precise): a file changed since
        # the dataset was written (cheap when sizes and mtimes match the last full check)
        self.verified = verify_fingerprint(self.root, self.manifest)
        self.splits = {s: DialogueSplit(a, self.modalities, missing_rate, seed, fp,
                                        missing_redraw and s == "train")
                       for s, a in arrays.items()}
        self.meta = DatasetMeta(
            name=self.manifest.name, family=self.manifest.family, modalities=self.modalities,
            dims={m: self.manifest.modalities[m] for m in self.modalities},
            num_classes=self.manifest.num_classes, num_speakers=self.manifest.num_speakers,
            label_names=tuple(self.manifest.label_names),
            class_weights=tuple(class_weights(self.splits["train"].arrays.labels,
                                              self.manifest.num_classes)),
            fingerprint=fp)

    def __getitem__(self, split: str) -> DialogueSplit:
        return self.splits[split]


def class_weights(labels: np.ndarray, num_classes: int) -> list[float]:
    """Inverse class frequency on the train split (as the reference repos hard-code), mean 1."""
    lab = labels[labels != IGNORE_INDEX]
    counts = np.bincount(lab, minlength=num_classes).astype(np.float64)
    inv = np.where(counts > 0, counts.sum() / np.maximum(counts, 1), 0.0)
    return (inv / inv[inv > 0].mean()).tolist() if inv.any() else [1.0] * num_classes


__all__ = ["Batch", "DatasetMeta", "DialogueSplit", "MercData", "class_weights",
           "LETTER_TO_MODALITY"]
