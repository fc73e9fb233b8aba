#!/bin/bash
# Titans tiny (CPU: the tiny preset on data_prep's shards of the shipped corpus, 2 processes over gloo). Submit from anywhere:  [VARIANT=mac] sbatch [-p PARTITION -A ACCOUNT] slurm/titans_tiny.sh [VARIANT] [section.key=value ...]
# Environment variables (data, checkpoint and log locations, ...): slurm/launch.sh. README: "Running the scaling study".
#SBATCH --job-name=titans-tiny
#SBATCH --nodes=1
#SBATCH --ntasks=2
#SBATCH --cpus-per-task=1
#SBATCH --time=00:30:00
#SBATCH --signal=USR1@60
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=%x-%j.out
export SIZE=tiny
# sbatch runs a copy of this file: the submitted path (scontrol's Command=) leads to the launcher.
submitted=$(scontrol show job "$SLURM_JOB_ID" | sed -n 's/^ *Command=\([^ ]*\).*/\1/p')
exec bash "${TITANS_ROOT:-$(dirname "$submitted")/..}/slurm/launch.sh" "$@"
