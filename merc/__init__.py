"""merc-sweeps: faithful MERC models, one training loop, and paper-style sweeps on Ray Tune."""

__version__ = "0.1.0"
