#!/usr/bin/env bash
# Stop the cluster started by start_cluster.sh DIR: cancel jobs, stop slurmd,
# slurmctld and munged, kill leftover slurmstepd/job processes of THIS cluster.
# Idempotent: safe to run when nothing (or only part of it) is running.
#
# Usage: stop_cluster.sh DIR
set -uo pipefail

if [[ $# -ne 1 ]]; then
    echo "usage: $0 DIR" >&2
    exit 2
fi
[[ -d "$1" ]] || { echo "nothing to stop ($1 does not exist)"; exit 0; }
DIR=$(cd "$1" && pwd -P)
CONF="$DIR/slurm.conf"
MDIR="$DIR/munge"
RT="/tmp/slurm-$(printf %s "$DIR" | md5sum | cut -c1-12)"   # same as start_cluster.sh
export SLURM_CONF="$CONF"

pid_of() { [[ -s "$1" ]] && cat "$1" 2>/dev/null; }
# running and not a zombie (PID 1 may reap orphans late, or never in a container)
alive() {
    [[ -n "${1:-}" ]] && kill -0 "$1" 2>/dev/null || return 1
    [[ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]]
}

source "$(dirname "$(readlink -f "$0")")/find_cmd.sh"

# stop_pid PID NAME: SIGTERM, wait up to 10 s, then SIGKILL
stop_pid() {
    local pid=$1 i
    alive "$pid" || return 0
    kill -TERM "$pid" 2>/dev/null
    for i in $(seq 1 100); do alive "$pid" || return 0; sleep 0.1; done
    echo "WARNING: $2 ($pid) ignored SIGTERM, sending SIGKILL" >&2
    kill -KILL "$pid" 2>/dev/null
    for i in $(seq 1 20); do alive "$pid" || return 0; sleep 0.1; done
}

# descendants PID -> all descendant pids (depth first)
descendants() {
    local c
    for c in $(ps -o pid= --ppid "$1" 2>/dev/null); do
        echo "$c"; descendants "$c"
    done
}

# pids of slurmstepd processes that own a socket in our SlurmdSpoolDir
stepd_pids() {
    local inodes ino fd pid
    inodes=$(awk -v d="$RT/spool/" 'index($8, d) == 1 { print $7 }' /proc/net/unix 2>/dev/null)
    [[ -z "$inodes" ]] && return 0
    for fd in /proc/[0-9]*/fd/*; do
        ino=$(readlink "$fd" 2>/dev/null) || continue
        [[ "$ino" == socket:* ]] || continue
        ino=${ino#socket:[}; ino=${ino%]}
        if grep -qx "$ino" <<<"$inodes"; then
            pid=${fd#/proc/}; echo "${pid%%/*}"
        fi
    done | sort -u
}

# pid files, or (if a start was interrupted) the daemon found by its command line
ctld_pid=$(pid_of "$DIR/run/slurmctld.pid")
alive "$ctld_pid" || ctld_pid=$(find_cmd "slurmctld -f $CONF" | head -1)
slurmd_pid=$(pid_of "$DIR/run/slurmd.pid")
alive "$slurmd_pid" || slurmd_pid=$(find_cmd "slurmd -f $CONF" | head -1)

# 1. cancel all jobs while the controller still answers, wait until gone
if alive "$ctld_pid" && [[ -f "$CONF" ]]; then
    jobs=$(timeout 10 squeue -h -o '%A' 2>/dev/null)
    if [[ -n "$jobs" ]]; then
        timeout 10 scancel $jobs 2>/dev/null
        for i in $(seq 1 40); do   # <= 20 s (KillWait is 5 s)
            [[ -z "$(timeout 5 squeue -h -t R,CG,S -o '%A' 2>/dev/null)" ]] && break
            sleep 0.5
        done
    fi
fi

# 2. daemons (TERM both first: each takes 1-2 s to save state and exit)
alive "$slurmd_pid" && kill -TERM "$slurmd_pid" 2>/dev/null
alive "$ctld_pid" && kill -TERM "$ctld_pid" 2>/dev/null
stop_pid "$slurmd_pid" slurmd
stop_pid "$ctld_pid" slurmctld

# 3. anything of ours left behind (stepd of a job that would not die, orphans)
for s in $(stepd_pids); do
    kids=$(descendants "$s")
    kill -KILL $kids "$s" 2>/dev/null
done

# 4. munged
mpid=$(pid_of "$MDIR/munged.pid")
alive "$mpid" || mpid=$(find_cmd "munged --socket=$RT/munge.socket" | head -1)
if alive "$mpid"; then
    munged --stop --socket="$RT/munge.socket" >/dev/null 2>&1 || stop_pid "$mpid" munged
fi
stop_pid "$mpid" munged

rm -f "$DIR/run/slurmctld.pid" "$DIR/run/slurmd.pid" "$MDIR/munged.pid"
rm -rf "$RT"      # munge socket + SlurmdSpoolDir
echo "cluster in $DIR stopped"
exit 0
