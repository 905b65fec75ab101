"""Training strategies: plug-ins the loop calls at fixed points.

A strategy never reaches into a model beyond :class:`merc.models.Output`. The hooks:

* ``on_fit_start(train)`` - sees the run's TrainConfig (e.g. the epoch budget for pacing).
* ``epoch_subset(epoch, split)`` - which train dialogues count this epoch (curricula); None = all.
* ``utterance_weights(epoch, output, batch, losses)`` - per-utterance loss weights [B, N] and the
  normaliser (self-paced learning); None = plain mean over labelled utterances.
* ``after_backward(epoch, model, output, batch)`` - scale gradients (modality modulation).
* ``epoch_end(epoch) -> dict`` - metrics to log (e.g. expanding rate).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from merc.data.dataset import Batch, DialogueSplit


class Strategy:
    name = "none"

    def on_fit_start(self, train) -> None:
        """Called once with the run's TrainConfig before the first epoch."""
        return None

    def epoch_subset(self, epoch: int, split: DialogueSplit) -> Optional[Sequence[int]]:
        return None

    def utterance_weights(self, epoch: int, output, batch: Batch, losses: torch.Tensor
                          ) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
        """Return (weights [B, N], normaliser scalar) or None for the plain mean."""
        return None

    def after_backward(self, epoch: int, model: torch.nn.Module, output, batch: Batch) -> None:
        return None

    def epoch_end(self, epoch: int) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        return None
