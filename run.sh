#!/usr/bin/env bash
# Set up (first time) and run the main job on the embedded defaults: a CORECT window study
# (P x F grid x seeds) on a local Ray, the synthetic data, MLflow in ./mlflow.db.
# Extra arguments go to the sweep (e.g. `bash run.sh --search --num-samples 8` replaces --study).
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup.sh
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled}
if [ "$#" -eq 0 ]; then set -- --study window --quick; fi
exec .venv/bin/python sweeps/corect.py "$@"
