#!/usr/bin/env bash
# docs/ROBUSTNESS.md's report (issue 16, deliverable 4) as one command: trains what is missing, then measures.
#
#   (a) today's `highway` recipe without the SA regulariser, on a perception student trained clean
#   (b) the same on the shipped robust student (`--robust-reg none`)
#   (c) (b) with the regulariser: the `highway` recipe itself (`python run.py train --scenario highway`)
#
# Each agent is trained with SEEDS into $RUNS/<agent>-seed<S>; the clean student is made first
# ($RUNS/clean-student.safetensors: `perception collect` on the fast backend, then `perception train --mode
# clean`). Finished runs are kept; a run killed while training resumes from its newest checkpoint; `bench
# robustness` resumes per setting from each run's evaluation JSON. So the command can be stopped and run again.
# Logs: $RUNS/logs/.
#
#   scripts/robustness_report.sh                     # all of it, on 2 cores: ~1 h of training, ~3.5 h of attacks
#   RUNS=/tmp/rr SEEDS="0" TIMESTEPS=2000 N_ENVS=8 CLEAN_FRAMES=300 CLEAN_SHARD_FRAMES=100 EPISODES=4 ATTACKS=pgd EPS=3/255 STEPS=2 \
#       CORRUPTIONS=none OUT=/tmp/rr/report scripts/robustness_report.sh   # a dry run, minutes
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
RUNS=${RUNS:-runs/robustness}
SEEDS=${SEEDS:-"0 1 2"}
JOBS=${JOBS:-2}                      # trainings and measurements side by side, one thread each
TIMESTEPS=${TIMESTEPS:-}             # empty: the recipe's
N_ENVS=${N_ENVS:-}                   # empty: the recipe's
CLEAN_FRAMES=${CLEAN_FRAMES:-12000}
CLEAN_SHARD_FRAMES=${CLEAN_SHARD_FRAMES:-1000}   # the student holds out whole shards: at least 2
ATTACKS=${ATTACKS:-random,fgsm,pgd,mad,critic}
EPS=${EPS:-1/255,3/255,8/255}
STEPS=${STEPS:-10,50}
CORRUPTIONS=${CORRUPTIONS:-all}
EPISODES=${EPISODES:-200}
OUT=${OUT:-docs/robustness}
mkdir -p "$RUNS/logs"
RUNS=$(cd "$RUNS" && pwd)            # the (a) config names the student by an absolute path

clean_student="$RUNS/clean-student.safetensors"
if [ ! -f "$clean_student" ]; then
    [ -f "$RUNS/clean-data/manifest.json" ] || $PY run.py perception collect --scenario highway --backend fast \
        --frames "$CLEAN_FRAMES" --shard-frames "$CLEAN_SHARD_FRAMES" --seed 0 --workers 1 --out "$RUNS/clean-data"
    $PY run.py --threads 1 perception train --data "$RUNS/clean-data" --arch student --mode clean --epochs 15 \
        --lr 3e-3 --out "$clean_student"
fi
cat > "$RUNS/a.yaml" <<EOF
# agent (a): no regulariser, a perception student trained clean
training: {robust_reg: none}
policy: {perception: $clean_student}
EOF

train_one() {  # agent seed: train (or resume) $RUNS/<agent>-seed<seed> unless it is finished
    local agent=$1 seed=$2 run="$RUNS/$1-seed$2" args=()
    [ -f "$run/model.zip" ] && return 0
    case $agent in
        a) args=(--config "$RUNS/a.yaml") ;;
        b) args=(--robust-reg none) ;;
        c) args=() ;;
    esac
    [ -n "$TIMESTEPS" ] && args+=(--timesteps "$TIMESTEPS")
    [ -n "$N_ENVS" ] && args+=(--n-envs "$N_ENVS")
    local log="$RUNS/logs/$agent-seed$seed.log"
    if [ -d "$run/checkpoints" ] && [ -n "$(ls -A "$run/checkpoints")" ]; then
        $PY run.py --threads 1 train --resume "$run" ${TIMESTEPS:+--timesteps "$TIMESTEPS"} >> "$log" 2>&1 \
            || { echo "resuming $run failed: $log" >&2; return 1; }
    else
        $PY run.py --threads 1 train --scenario highway --seed "$seed" --force --logdir "$RUNS" --name "$agent-seed$seed" \
            "${args[@]}" > "$log" 2>&1 || { echo "training $run failed: $log" >&2; return 1; }
    fi
    echo "trained $run"
}

measure_one() {  # agent seed: every setting of the report on one run (resumes per setting)
    local agent=$1 seed=$2
    $PY run.py --threads 1 bench robustness --agent "$agent=$RUNS/$agent-seed$seed" --attack "$ATTACKS" --eps "$EPS" \
        --steps "$STEPS" --corruption "$CORRUPTIONS" --episodes "$EPISODES" --out "$RUNS/report-$agent-seed$seed" \
        > "$RUNS/logs/measure-$agent-seed$seed.log" 2>&1 || { echo "measuring $agent-seed$seed failed: $RUNS/logs/measure-$agent-seed$seed.log" >&2; return 1; }
    echo "measured $RUNS/$agent-seed$seed"
}
export -f train_one measure_one
export PY RUNS TIMESTEPS N_ENVS ATTACKS EPS STEPS CORRUPTIONS EPISODES

jobs_list() { for seed in $SEEDS; do for agent in a b c; do echo "$agent $seed"; done; done; }
jobs_list | xargs -P "$JOBS" -L 1 bash -c 'train_one "$@"' _
jobs_list | xargs -P "$JOBS" -L 1 bash -c 'measure_one "$@"' _

# Every setting is measured by now: this only gathers them into the table, the JSON and the plot.
$PY run.py --threads 1 bench robustness --agent "a=$RUNS/a-seed*" --agent "b=$RUNS/b-seed*" --agent "c=$RUNS/c-seed*" \
    --attack "$ATTACKS" --eps "$EPS" --steps "$STEPS" --corruption "$CORRUPTIONS" --episodes "$EPISODES" --out "$OUT"
