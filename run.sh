#!/usr/bin/env bash
# Set up (first time) and run the main job on the embedded defaults: a CORECT window study
# (P x F = {0,4,11} x {0,4,9} x 2 seeds, 10 epochs of a small CORECT) on a local Ray, the
# synthetic `demo` preset (IEMOCAP-shaped; past context informs, future does not), MLflow in
# ./mlflow.db. Prints one line per trial event with an ETA, then the table (majority-class floor
# included) and a link to the runs table in the MLflow UI.
# Extra arguments go to the sweep (e.g. `bash run.sh --search --num-samples 8` replaces --study).
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup.sh
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled}
if [ "$#" -eq 0 ]; then set -- --study window --quick; fi
exec .venv/bin/python sweeps/corect.py "$@"
