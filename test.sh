#!/usr/bin/env bash
# Set up (first time) and run the test suite: unit tests plus the integration tests that start a
# real local Ray, a real MLflow store and a real `mlflow server` on 127.0.0.1. Slow tests are
# excluded by default (`bash test.sh -m slow` runs them). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup.sh
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled}
exec .venv/bin/python -m pytest "$@"
