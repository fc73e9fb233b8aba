#!/bin/bash
# Titans 1.3b (100B tokens, 190,735 steps of 128 x 4096 on 4 x 8 GPUs). Submit from anywhere:  [VARIANT=mac] sbatch [-p PARTITION -A ACCOUNT] slurm/titans_1.3b.sh [VARIANT] [section.key=value ...]
# Environment variables (data, checkpoint and log locations, ...): slurm/launch.sh. README: "Running the scaling study".
#SBATCH --job-name=titans-1.3b
#SBATCH --nodes=4
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --time=48:00:00
#SBATCH --signal=USR1@900
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=%x-%j.out
export SIZE=1.3b
# sbatch runs a copy of this file: the submitted path (scontrol's Command=) leads to the launcher.
submitted=$(scontrol show job "$SLURM_JOB_ID" | sed -n 's/^ *Command=\([^ ]*\).*/\1/p')
exec bash "${TITANS_ROOT:-$(dirname "$submitted")/..}/slurm/launch.sh" "$@"
