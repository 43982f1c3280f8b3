#!/usr/bin/env bash
# Issue 20's GPU measurements, as one script for a session that is lent a GPU (the device tool runs it in
# the repository root; what it writes under $OUT comes back). Dry-run on the CPU first:
#     DEVICE=cpu N_ENVS="16 64" TRAIN_ENVS=8 TRAIN_STEPS=6000 EVAL_EPISODES=50 OUT=/tmp/gpu-check scripts/gpu_check.sh
# On the GPU machine (torch with CUDA is there; the project's other dependencies are not, and it reaches no
# package index): put their wheels in .wheels/ here first (`pip download --no-deps -d .wheels gymnasium
# stable-baselines3 highway-env pygame-ce pydantic pydantic-core shap slicer farama-notifications
# annotated-types`), then `run(command="scripts/gpu_check.sh", carry=[".wheels"], timeout_s=600)`.
# About 8 minutes on an H200 (tests ~1, bench ~3, training ~4).
set -euo pipefail
export COLUMNS=${COLUMNS:-160}   # rich tables at full width in the logs
cd "$(dirname "$0")/.."
DEVICE=${DEVICE:-cuda}
N_ENVS=${N_ENVS:-"256 4096"}
TRAIN_STEPS=${TRAIN_STEPS:-}         # empty: the recipe's 200,000 env steps
TRAIN_ENVS=${TRAIN_ENVS:-}           # empty: the recipe's 256 envs
EVAL_EPISODES=${EVAL_EPISODES:-1000}
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
PY=python3
if [ -d .wheels ]; then
    $PY -m pip install -q --no-index --find-links .wheels --no-deps .wheels/*.whl
    $PY -m pip install -q --no-index --no-deps --no-build-isolation -e .
elif [ -x .venv/bin/python ]; then
    PY=.venv/bin/python
fi
{
    date -u; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null || echo "no nvidia-smi"
    $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())"
} | tee "$OUT/machine.txt"

# 1. the device paths' tests: CPU-vs-CUDA equality, the device rollout and imitation, the memory check
$PY -m pytest -q -x tests/test_cuda.py tests/agents/test_device_rollout.py tests/agents/test_memory.py \
    2>&1 | tail -n 5 | tee "$OUT/tests.txt"

# 2. PPO env steps/s, host path vs DevicePPO (and kernels per sim step at the smallest B)
first=${N_ENVS%% *}
$PY -m agents.bench_device --device "$DEVICE" --n-envs $first --out "$OUT/bench-device-profiled.json" \
    2>&1 | tail -n 12 | tee "$OUT/bench-device.txt"
$PY -m agents.bench_device --device "$DEVICE" --n-envs $N_ENVS --host-max-envs 1024 --no-profile \
    --out "$OUT/bench-device.json" 2>&1 | tail -n 12 | tee -a "$OUT/bench-device.txt"

# 3. the default recipe end to end (imitation now steps on the device), then its quality on 1,000 episodes
steps=()
[ -n "$TRAIN_STEPS" ] && steps+=(--timesteps "$TRAIN_STEPS")
[ -n "$TRAIN_ENVS" ] && steps+=(--n-envs "$TRAIN_ENVS")
/usr/bin/time -f "%e s wall" $PY run.py train --scenario highway --device "$DEVICE" "${steps[@]}" \
    --logdir "$OUT/runs" --name highway-gpu 2>&1 | grep -v "━" | tail -n 25 | tee "$OUT/train.txt"
$PY run.py evaluate --run "$OUT/runs/highway-gpu" --backend fast --episodes "$EVAL_EPISODES" --device "$DEVICE" \
    2>&1 | tail -n 40 | tee "$OUT/evaluate.txt"
cp "$OUT/runs/highway-gpu/evaluation-highway-fast.json" "$OUT/runs/highway-gpu/safety_summary.md" "$OUT/"
rm -rf "$OUT/runs"   # the run folder is larger than what comes back (8 files at most)

# 4. bad input: more envs than the device holds gives one line before any work
$PY run.py train --scenario highway --device "$DEVICE" --n-envs 10000000 --timesteps 100000000000 \
    > "$OUT/too-many-envs.txt" 2>&1 || true
cat "$OUT/too-many-envs.txt"
