#!/usr/bin/env bash
# The launcher every slurm/titans_<size>.sh calls (they hold only #SBATCH lines and SIZE).
#
#   [VARIANT=mac] sbatch [-p PARTITION -A ACCOUNT] slurm/titans_760m.sh [VARIANT] [section.key=value ...]
#
# Environment, with defaults:
#   VARIANT         transformer++ | gdn | lmm | mag | mal | mac      [the first argument; else CONFIG's variant; else mag]
#   CONFIG          the training config                                       [configs/${SIZE}_${VARIANT}.json]
#   DATA_DIR        data_prep/tokenize.py output                              [$TITANS_ROOT/data/fineweb-edu; tiny: demo_run/shards]
#   CKPT_ROOT       checkpoints and TensorBoard logs go to $CKPT_ROOT/$RUN_NAME [$TITANS_ROOT/checkpoints]
#   RUN_NAME        one folder per run; keep it to resume                      [${SIZE}_${VARIANT}]
#   TENSOR          tensor-parallel size (processes = nodes x tasks per node)  [the config's parallel.tensor]
#   CONTEXT         context-parallel size: each sequence split across this many ranks [the config's parallel.context]
#   PYTHON          the interpreter, the same path on every node               [$TITANS_ROOT/.venv/bin/python, else python3]
#   TITANS_ROOT     the repository, the same path on every node (read by the header scripts) [the submitted script's]
#   SAVE_MARGIN_MIN minutes before the time limit at which to save and requeue [10]
#   MAX_RESTARTS    requeues after which a stopped run is left stopped         [100]
#   MASTER_PORT     rendezvous port on the first node                          [20000 + job id mod 20000]
#
# What it does: checks the inputs on the first node before any task starts (pretrain/train.py --check:
# data manifest against the model's tokenizer and sequence length, checkpoint folder writable, a resumed
# run's model and layout); then srun starts one training process per task (srun-direct: rank, world
# size and local rank come from SLURM, the rendezvous host is the job's first node). A run resumes from
# $CKPT_ROOT/$RUN_NAME/latest by itself. SIGUSR1 (#SBATCH --signal, or `scancel --signal=USR1`) or
# SIGTERM (preemption) makes every process finish its step, save and exit with status 3, as does
# reaching the job's time limit minus SAVE_MARGIN_MIN; status 3 requeues the job, which resumes.
set -uo pipefail

die() { echo "launch.sh: error: $*" >&2; exit 2; }
say() { echo "launch.sh: $*"; }

[ -n "${SLURM_JOB_ID:-}" ] || die "not inside a SLURM job: submit a header script, e.g. sbatch slurm/titans_760m.sh"
[ -n "${SIZE:-}" ] || die "SIZE is not set (the slurm/titans_<size>.sh header sets it)"

# The repository: the one this launcher is in (the header found it from the submitted path).
TITANS_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
[ -f "$TITANS_ROOT/pretrain/train.py" ] || die "$TITANS_ROOT is not the repository (no pretrain/train.py)"

if [ -z "${PYTHON:-}" ]; then
    if [ -x "$TITANS_ROOT/.venv/bin/python" ]; then PYTHON=$TITANS_ROOT/.venv/bin/python; else PYTHON=python3; fi
fi

VARIANTS="transformer++ gdn lmm mag mal mac"
if [ $# -gt 0 ] && [[ " $VARIANTS " == *" $1 "* ]]; then
    VARIANT=$1
    shift
fi
if [ -n "${CONFIG:-}" ] && [ -z "${VARIANT:-}" ]; then
    # A config of one's own without VARIANT: its variant, not the default's.
    [ -f "$CONFIG" ] || die "no config $CONFIG"
    VARIANT=$(cd "$TITANS_ROOT" && "$PYTHON" -c 'import sys; from titans_pretrain.config import load_config
print(load_config(sys.argv[1]).model.variant)' "$CONFIG") || die "could not read model.variant from $CONFIG"
fi
VARIANT=${VARIANT:-mag}
[[ " $VARIANTS " == *" $VARIANT "* ]] || die "VARIANT=$VARIANT; expected one of: $VARIANTS"

CONFIG=${CONFIG:-$TITANS_ROOT/configs/${SIZE}_${VARIANT}.json}
[ -f "$CONFIG" ] || die "no config $CONFIG (SIZE=$SIZE, VARIANT=$VARIANT; or set CONFIG)"
if [ "$SIZE" = tiny ]; then
    DATA_DIR=${DATA_DIR:-$TITANS_ROOT/demo_run/shards}
else
    DATA_DIR=${DATA_DIR:-$TITANS_ROOT/data/fineweb-edu}
fi
CKPT_ROOT=${CKPT_ROOT:-$TITANS_ROOT/checkpoints}
RUN_NAME=${RUN_NAME:-${SIZE}_${VARIANT}}
CKPT_DIR=$CKPT_ROOT/$RUN_NAME
SAVE_MARGIN_MIN=${SAVE_MARGIN_MIN:-10}
MAX_RESTARTS=${MAX_RESTARTS:-100}
TASKS=${SLURM_NTASKS:-1}

overrides=("data.dir=$DATA_DIR" "checkpoint.dir=$CKPT_DIR" "model.variant=$VARIANT")
[ -n "${TENSOR:-}" ] && overrides+=("parallel.tensor=$TENSOR")
[ -n "${CONTEXT:-}" ] && overrides+=("parallel.context=$CONTEXT")

# Save before the time limit even if the signal is lost: the job's remaining time minus the margin.
left=$(squeue -h -j "$SLURM_JOB_ID" -o %L 2>/dev/null | head -n1)
minutes_left() {  # [D-]HH:MM:SS, MM:SS or UNLIMITED -> whole minutes (empty when unlimited or unknown)
    local t=$1 days=0 h=0 m=0 s=0
    [[ $t =~ ^[0-9:-]+$ ]] || return 0
    if [[ $t == *-* ]]; then days=${t%%-*}; t=${t#*-}; fi
    IFS=: read -r -a parts <<< "$t"
    case ${#parts[@]} in
        3) h=${parts[0]}; m=${parts[1]}; s=${parts[2]} ;;
        2) m=${parts[0]}; s=${parts[1]} ;;
        1) s=${parts[0]} ;;
    esac
    echo $(( (10#$days * 24 + 10#$h) * 60 + 10#$m ))
}
left_min=$(minutes_left "$left")
if [ -n "$left_min" ]; then
    budget=$(( left_min - SAVE_MARGIN_MIN ))
    [ "$budget" -ge 1 ] || budget=1
    overrides+=("run.max_minutes=$budget")
fi
overrides+=("$@")

MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)
MASTER_PORT=${MASTER_PORT:-$(( 20000 + SLURM_JOB_ID % 20000 ))}
export MASTER_ADDR MASTER_PORT
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}
export PYTHONUNBUFFERED=1

restarts=${SLURM_RESTART_COUNT:-0}
say "job $SLURM_JOB_ID attempt $((restarts + 1)) on ${SLURM_JOB_NUM_NODES:-1} node(s) x $TASKS task(s): $SIZE $VARIANT"
say "config $CONFIG; data $DATA_DIR; checkpoints $CKPT_DIR; rendezvous $MASTER_ADDR:$MASTER_PORT; time left ${left:-?}"

"$PYTHON" "$TITANS_ROOT/pretrain/train.py" --check --world "$TASKS" --config "$CONFIG" "${overrides[@]}" \
    || die "the inputs failed their check (above); nothing was started"

# A stop that saved leaves CKPT_DIR/stopped.json (rank 0 writes it after the checkpoint): srun's own
# status can be a killed task's once the first process has exited, so the marker is what says "requeue".
rm -f "$CKPT_DIR/stopped.json"
# srun in the background so that this shell can forward SIGUSR1 / SIGTERM to it while it waits;
# --kill-on-bad-exit: a process that fails takes the others down instead of leaving them in a collective.
srun --kill-on-bad-exit=1 "$PYTHON" "$TITANS_ROOT/pretrain/train.py" --config "$CONFIG" "${overrides[@]}" &
srun_pid=$!
forward() { say "received SIG$1: asking the training processes to save and stop"; kill -"$1" "$srun_pid" 2>/dev/null; }
trap 'forward USR1' USR1
trap 'forward TERM' TERM
status=0
while :; do
    wait "$srun_pid"
    status=$?
    kill -0 "$srun_pid" 2>/dev/null || break  # wait returned for a trapped signal, not srun's exit
done

[ -f "$CKPT_DIR/stopped.json" ] && [ "$status" -ne 0 ] && status=3
case $status in
    0) say "training finished"; exit 0 ;;
    3)
        if [ "$restarts" -ge "$MAX_RESTARTS" ]; then
            say "stopped and saved; not requeued after $restarts restarts (MAX_RESTARTS)"
            exit 3
        fi
        say "stopped and saved ($(cat "$CKPT_DIR/stopped.json" 2>/dev/null)); requeueing job $SLURM_JOB_ID"
        scontrol requeue "$SLURM_JOB_ID"
        exit 0 ;;
    *) echo "launch.sh: training exited with status $status; not requeued (see the log above)" >&2; exit "$status" ;;
esac
