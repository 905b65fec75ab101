#!/usr/bin/env bash
# Create .venv (once) and install merc-sweeps with its test tools. Idempotent: a second run only
# checks that the install is there. The CPU build of torch is installed explicitly so that pip
# never pulls a multi-GB CUDA build on a CPU machine; GPU users see README "GPU install".
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
stamp=.venv/.merc-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    .venv/bin/python -m pip install -q --upgrade pip >/dev/null
    if ! .venv/bin/python -c "import torch" 2>/dev/null; then
        .venv/bin/python -m pip install -q "torch==${MERC_TORCH_VERSION:-2.13.0}"
    fi
    .venv/bin/python -m pip install -q -e ".[test,text]"
    touch "$stamp"
fi
