#!/usr/bin/env bash
# merc-sweeps GPU check: CORECT trials one-per-GPU against four-per-GPU (fractional GPUs), with
# epoch times, nvidia-smi utilisation samples (every 200 ms, in the background) and the peak
# memory of every trial (torch.cuda.max_memory_allocated). Everything goes under $OUT.
# What each phase does: benchmarks/gpu_check.py (docstring). Device budget: about 4-6 minutes.
#
# PREPARED, NOT YET RUN ON A GPU: the session that wrote it had no GPU machine. Its Python side ran
# here end to end on the CPU (`bash benchmarks/gpu_check.sh --dry-run`).
#
# On a lent GPU machine (the device tool: a copy of this working tree, no network, python3 3.12
# with a CUDA torch and torch-geometric preinstalled; ray, optuna, mlflow and pydantic are not):
#   1. here, once (pip and network needed):  bash benchmarks/gpu_check.sh --fetch-wheels
#      -> .whl/ with pydantic + its three dependencies for CPython 3.12 (about 2.5 MB, git-ignored
#      through .git/info/exclude)
#   2. device run:  command "bash benchmarks/gpu_check.sh", carry [".whl"], timeout_s 540
#      -> $OUT/gpu_check.md, gpu_check.json, gpu_util.csv, log.txt
# Ray itself cannot travel (its wheel is larger than what one call may carry), so the fractional
# phase starts the four trial processes itself, exactly as Ray would with --gpus-per-trial 0.25
# (same GPU, memory capped with torch.cuda.set_per_process_memory_fraction(0.25), as
# merc/sweep/trainable.py does). If `import ray, optuna, mlflow` works there, the real engine runs
# too: sweeps/corect.py --study window --quick --gpus-per-trial 0.25.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if [[ "${1:-}" == "--fetch-wheels" ]]; then
  grep -qxF '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
  for spec in pydantic==2.13.4 pydantic-core==2.46.4 annotated-types==0.7.0 typing-inspection==0.4.2; do
    $PY -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
      -d .whl "$spec" || exit 1
  done
  ls -la .whl
  exit 0
fi

DRY=0
[[ "${1:-}" == "--dry-run" ]] && DRY=1
OUT=${OUT:-$PWD/benchmarks/out/gpu}
mkdir -p "$OUT"
exec > >(tee "$OUT/log.txt") 2>&1
export PYTHONUNBUFFERED=1 RAY_AUTH_MODE=disabled MERC_CACHE=/tmp/merc-cache
echo "== $(date -Is) gpu_check on $(hostname); load $(cut -d' ' -f1-3 /proc/loadavg)"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null || echo "no nvidia-smi"

# 1. what merc needs beyond the image: pydantic (carried wheels), then merc itself, editable,
#    without dependencies or a build-isolation download (there is no network there)
if ! $PY -c "import pydantic" 2>/dev/null; then
  if ls .whl/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl || exit 3
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  else
    echo "pydantic is missing and no .whl/ was carried: run 'bash benchmarks/gpu_check.sh --fetch-wheels' here first"; exit 3
  fi
fi
if [[ $DRY == 1 ]]; then
  echo "(dry run: the local environment is left alone; importing the checkout through PYTHONPATH)"
elif ! $PY -m pip install -q --no-index --no-deps --no-build-isolation -e . 2>/dev/null; then
  echo "(pip install -e . unavailable offline; importing the checkout through PYTHONPATH)"
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
$PY - <<'PY' || exit 4
import torch, torch_geometric, pydantic, merc.train, merc.models
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available(),
      "| pyg", torch_geometric.__version__, "| pydantic", pydantic.VERSION,
      "| models", merc.models.model_names())
PY

# 2. the measurements (phases A, B, C of benchmarks/gpu_check.py); the nvidia-smi sampler runs
#    inside it, in the background, for the whole run
if [[ $DRY == 1 ]]; then
  $PY -m benchmarks.gpu_check run --device cpu --data dry --trials 2 --epochs 1 --phase-epochs 1 \
    --threads 1 --out "$OUT"
else
  timeout 420 $PY -m benchmarks.gpu_check run --device cuda --data full --trials 4 --epochs 3 \
    --phase-epochs 2 --threads 4 --out "$OUT"
fi
rc=$?
tail -n 30 /tmp/merc-gpu-check/trials/*.log > "$OUT/trial_logs.txt" 2>/dev/null

# 3. the real engine with fractional GPUs, only where Ray, Optuna and MLflow are importable
if [[ $DRY == 0 ]] && $PY -c "import ray, optuna, mlflow" 2>/dev/null; then
  timeout 150 $PY sweeps/corect.py --study window --quick --gpus-per-trial 0.25 --cpus-per-trial 4 \
    --storage /tmp/merc-gpu-ray --mlflow-uri sqlite:////tmp/merc-gpu-mlflow.db -v 1 \
    > "$OUT/ray_sweep.log" 2>&1 || echo "ray sweep exited $?"
else
  echo "(ray/optuna/mlflow not importable here: engine run skipped; phase C stands in for it)"
fi
echo "== $(date -Is) done (rc $rc); load $(cut -d' ' -f1-3 /proc/loadavg)"
exit $rc
