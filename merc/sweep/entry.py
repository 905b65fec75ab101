"""What the driver needs of a trial without importing torch: the function it hands to Ray Tune
and the trial's bookkeeping names.

A sweep's driver never trains, so it never imports torch (~2 CPU-s on the 2 cores that are at
the same time starting Ray and the workers, issue 13): it hands Tune this :func:`run_trial`,
pickled by reference, and the worker runs :func:`merc.sweep.trainable.run_trial` (which the
local Ray's workers preload as they start, ``runner._Sweep.worker_preload``).
"""
from __future__ import annotations

from typing import Any

#: the resumable training state and the selected model, in a trial's checkpoint directory
STATE_FILE = "state.pt"
MODEL_FILE = "model.pt"


def flat_of(config: dict) -> dict[str, Any]:
    """The model/train keys of a trial config (bookkeeping keys dropped)."""
    return {k: v for k, v in config.items() if not k.startswith("_")}


def run_trial(config: dict, data: Any = None) -> None:
    """The Ray Tune function trainable (``data``: the sweep's DataHandle, through
    ``tune.with_parameters``): :func:`merc.sweep.trainable.run_trial` in the worker."""
    from merc.sweep.trainable import run_trial as run
    run(config, data)
