#!/usr/bin/env bash
# Set up (first time) and run the main job on the embedded defaults: a local Ray, the synthetic
# IEMOCAP-shaped data, MLflow in ./mlflow.db. Extra arguments go to the job.
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup.sh
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled}
exec .venv/bin/merc train corect --data synthetic:iemocap6 --epochs 5 "$@"
