"""The sweep engine: YAML specs, Ray Tune + Optuna + MLflow glue, study tables, best-config export.

This package is the only place that imports ray, optuna and mlflow (DESIGN.md). The submodules
split along that line so a spec can be validated, and ``best.yaml`` loaded, without any of them:

* :mod:`merc.sweep.spec`     - the search-space grammar, validation (exit code 2), ``load_fixed_config``
                               (no ray / optuna / mlflow)
* :mod:`merc.sweep.trainable` - the function a Ray trial runs (``fit`` + ``tune.report``)
* :mod:`merc.sweep.optuna_glue` - a Ray ``Searcher`` that drives Optuna ask/tell itself, and the
                               ``OptunaPruningScheduler`` that makes Optuna's pruners act
* :mod:`merc.sweep.tracking` - the driver-side MLflow callback (parent/child runs, resume-safe)
* :mod:`merc.sweep.report`   - study tables (mean ± std, paired tests), heatmaps, curves
* :mod:`merc.sweep.runner`   - spec -> Ray Tune run -> MLflow; ``run_sweep``
* :mod:`merc.sweep.best`     - ``merc best``: best.yaml + registered champion model
* :mod:`merc.sweep.cli`      - argparse glue (``merc sweep ...``, ``merc best``, ``sweeps/<model>.py``)
"""
