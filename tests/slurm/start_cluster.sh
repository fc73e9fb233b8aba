#!/usr/bin/env bash
# Start a private one-node SLURM cluster (munged + slurmctld + slurmd) whose
# config, state, spool, logs, pid files and munge socket all live under DIR.
#
# Usage: start_cluster.sh DIR
#
# Optional environment overrides:
#   SLURMCTLD_PORT / SLURMD_PORT   TCP ports (default: reuse the ones in an
#                                  existing DIR/slurm.conf, else pick free ones)
#   SLURM_NCPUS                    CPUs advertised for the node (default: nproc;
#                                  may exceed the real count -> oversubscription)
#   SLURM_REAL_MEMORY              MB advertised (default 1000)
#   SLURM_MIN_JOB_AGE              seconds a finished job stays visible in
#                                  squeue/scontrol (default 30)
#   SLURM_KILL_WAIT                seconds between SIGTERM and SIGKILL (default 5)
#   SLURM_CRED_EXPIRE              credential lifetime = requeue delay (default 10 s)
#   SLURM_GRACE_TIME               preemption GraceTime of partition debug (default 0)
#   SLURM_CLUSTER_NAME             (default: "c" + SLURMCTLD_PORT)
#   SLURM_CLEAR_STATE=1            start slurmctld with -c (drop jobs recovered from
#                                  an earlier run in the same DIR)
#   SLURM_START_TIMEOUT            seconds to wait for the node to be idle (60)
#
# Needs root and the Debian packages slurmctld slurmd slurm-client munge.
set -euo pipefail

if [[ $# -ne 1 ]]; then
    echo "usage: $0 DIR" >&2
    exit 2
fi
mkdir -p "$1"
DIR=$(cd "$1" && pwd -P)           # absolute, symlink-free
CONF="$DIR/slurm.conf"
MDIR="$DIR/munge"
# Unix sockets (munge socket, slurmstepd sockets in SlurmdSpoolDir) need a
# short path (< 108 bytes) and munged needs o+x on every parent dir of its
# socket; pytest/mkdtemp dirs are 0700 and can be long, so these live in a
# short per-DIR runtime dir instead.
RT="/tmp/slurm-$(printf %s "$DIR" | md5sum | cut -c1-12)"
MSOCK="$RT/munge.socket"
NODE=$(hostname -s)
TIMEOUT=${SLURM_START_TIMEOUT:-60}
export SLURM_CONF="$CONF"

for b in munged munge slurmctld slurmd sinfo scontrol; do
    command -v "$b" >/dev/null || { echo "ERROR: $b not found (apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge)" >&2; exit 1; }
done

pid_alive() {  # pid_alive PIDFILE -> 0 if the process in PIDFILE runs
    local pid
    pid=$(cat "$1" 2>/dev/null) && [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 1
    [[ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ]]   # not a zombie
}

source "$(dirname "$(readlink -f "$0")")/find_cmd.sh"

# a port is taken if any socket other than a TIME-WAIT leftover uses it
# (slurmctld/slurmd set SO_REUSEADDR, so TIME-WAIT does not block a restart)
port_in_use() {
    ss -Htan "( sport = :$1 )" 2>/dev/null | grep -qv TIME-WAIT
}

free_port() {  # free_port [EXCLUDE] -> a currently unused TCP port
    # pick below the kernel's ephemeral range so that outgoing connections
    # (which get ephemeral source ports) cannot grab it between check and bind
    local p i lo span
    lo=$(awk '{print $1}' /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
    span=$(( lo - 10000 )); (( span < 1000 )) && span=1000
    for i in $(seq 1 200); do
        p=$(( 10000 + (RANDOM * 32768 + RANDOM) % span ))
        [[ "$p" == "${1:-}" ]] && continue
        port_in_use "$p" || { echo "$p"; return 0; }
    done
    echo "ERROR: no free port found" >&2
    return 1
}

show_logs() {
    local f
    for f in "$DIR/log/slurmctld.log" "$DIR/log/slurmd.log" "$MDIR/munged.log"; do
        [[ -f "$f" ]] || continue
        echo "--- tail $f" >&2
        grep -v pmix "$f" | tail -15 >&2 || true
    done
}

wait_idle() {
    local t0=$SECONDS st=""
    while (( SECONDS - t0 < TIMEOUT )); do
        st=$(sinfo -h -N -n "$NODE" -o '%t' 2>/dev/null | head -1 || true)
        case "$st" in
            idle|mix|alloc) return 0 ;;
            drain*|down*|drng*)
                # e.g. state recovered from an earlier run; ReturnToService=2
                # normally handles this, but be explicit.
                (( SECONDS - t0 > 3 )) && scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true ;;
        esac
        sleep 0.5
    done
    echo "ERROR: node $NODE not idle after ${TIMEOUT}s (state='$st')" >&2
    show_logs
    return 1
}

usage() {
    cat <<EOF
SLURM cluster '$(grep -m1 '^ClusterName=' "$CONF" | cut -d= -f2)' is up: node $NODE, $(grep -m1 '^SlurmctldPort=' "$CONF"), $(grep -m1 '^SlurmdPort=' "$CONF")
Use it with:
    export SLURM_CONF=$CONF      # or: source $DIR/env.sh
    sinfo; sbatch job.sh; squeue; scontrol show job JOBID
Partitions: debug (default, PriorityTier=1, preemptable -> REQUEUE), high (PriorityTier=10)
Logs: $DIR/log/   Stop with: $(dirname "$(readlink -f "$0")")/stop_cluster.sh $DIR
EOF
}

# ---------------------------------------------------------------- already up?
if pid_alive "$DIR/run/slurmctld.pid" && pid_alive "$DIR/run/slurmd.pid" && pid_alive "$MDIR/munged.pid"; then
    echo "cluster in $DIR already running"
    wait_idle
    usage
    exit 0
fi
# partially running leftovers -> clean them first
if [[ -d "$DIR/run" || -d "$MDIR" || -d "$RT" ]]; then
    "$(dirname "$(readlink -f "$0")")/stop_cluster.sh" "$DIR" >/dev/null 2>&1 || true
fi

mkdir -p "$MDIR" "$DIR/state" "$DIR/log" "$DIR/run" "$RT/spool"
chmod 700 "$MDIR"
chmod 755 "$RT"

# ---------------------------------------------------------------- munge
if [[ ! -s "$MDIR/munge.key" ]]; then
    dd if=/dev/urandom of="$MDIR/munge.key" bs=1024 count=1 status=none
fi
chmod 600 "$MDIR/munge.key"
rm -f "$MSOCK" "$MSOCK.lock"
munged --socket="$MSOCK" --key-file="$MDIR/munge.key" \
       --pid-file="$MDIR/munged.pid" --log-file="$MDIR/munged.log" \
       --seed-file="$MDIR/munged.seed"
munge -S "$MSOCK" -n </dev/null | unmunge -S "$MSOCK" >/dev/null \
    || { echo "ERROR: munge self-test failed, see $MDIR/munged.log" >&2; exit 1; }

# ---------------------------------------------------------------- ports
old_port() { [[ -f "$CONF" ]] && grep -m1 "^$1=" "$CONF" | cut -d= -f2 || true; }
pick_port() {  # pick_port EXPLICIT OLD EXCLUDE
    if [[ -n "$1" ]]; then echo "$1"; return; fi           # explicitly requested
    if [[ -n "$2" ]] && ! port_in_use "$2" && [[ "$2" != "$3" ]]; then echo "$2"; return; fi
    free_port "$3"
}
CTLD_PORT=$(pick_port "${SLURMCTLD_PORT:-}" "$(old_port SlurmctldPort)" "")
D_PORT=$(pick_port "${SLURMD_PORT:-}" "$(old_port SlurmdPort)" "$CTLD_PORT")

# node topology: real one from "slurmd -C" unless SLURM_NCPUS overrides it
if [[ -n "${SLURM_NCPUS:-}" ]]; then
    CPU_SPEC="CPUs=$SLURM_NCPUS"
else
    CPU_SPEC=$(slurmd -C 2>/dev/null | grep -oE 'CPUs=[0-9]+ .*ThreadsPerCore=[0-9]+' || true)
    [[ -n "$CPU_SPEC" ]] || CPU_SPEC="CPUs=$(nproc)"
fi
CLUSTER=${SLURM_CLUSTER_NAME:-c$CTLD_PORT}
# ClusterName must stay constant for a given StateSaveLocation
[[ -f "$DIR/state/clustername" ]] && CLUSTER=$(cat "$DIR/state/clustername")

# ---------------------------------------------------------------- slurm.conf
write_conf() {
cat > "$CONF" <<EOF
# generated by $0 on $(date -Is)
ClusterName=$CLUSTER
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$D_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire also = delay before a requeued job may start again (default 120 s)
AuthInfo=socket=$MSOCK,cred_expire=${SLURM_CRED_EXPIRE:-10}
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$RT/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
PlugStackConfig=$DIR/plugstack.conf
# no cgroups, no accounting
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
MailProg=/bin/true
SwitchType=switch/none
SchedulerType=sched/backfill
# fast periodic passes: time-triggered events (requeue delay, BeginTime) start promptly
SchedulerParameters=sched_interval=2,bf_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
# preemption: jobs in 'high' requeue jobs in 'debug'
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
# also deliver the job's --signal=[B:]SIG@T when it is preempted
SlurmctldParameters=preempt_send_user_signal
JobRequeue=1
# timers
ReturnToService=2
MinJobAge=${SLURM_MIN_JOB_AGE:-30}
KillWait=${SLURM_KILL_WAIT:-5}
OverTimeLimit=0
InactiveLimit=0
WaitTime=0
MessageTimeout=10
SlurmctldTimeout=120
SlurmdTimeout=300
NodeName=$NODE NodeAddr=127.0.0.1 NodeHostname=$NODE $CPU_SPEC RealMemory=${SLURM_REAL_MEMORY:-1000} State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP PriorityTier=1 GraceTime=${SLURM_GRACE_TIME:-0}
PartitionName=high  Nodes=$NODE Default=NO  MaxTime=INFINITE State=UP PriorityTier=10 PreemptMode=OFF
EOF
}
: > "$DIR/plugstack.conf"
echo "export SLURM_CONF=$CONF" > "$DIR/env.sh"

# ---------------------------------------------------------------- daemons
# wait_daemon PIDFILE NAME PORT LOGOFFSET: 0 = running and listening on PORT,
# 1 = died because the port was taken, 2 = other failure.
# NB: while a daemon forks into the background its pid file can briefly name
# an already-exited intermediate process, so "pid in pid file is dead" alone
# is NOT a failure; we look for our process by its command line instead.
wait_daemon() {
    local t0=$SECONDS log="$DIR/log/$2.log" new gone=0 pid
    while (( SECONDS - t0 < 30 )); do
        pid=$(cat "$1" 2>/dev/null || true)
        if [[ -n "$pid" ]] && pid_alive "$1" \
           && ss -Htlnp "( sport = :$3 )" 2>/dev/null | grep -q "pid=$pid,"; then
            return 0
        fi
        new=$(tail -c +"$(( $4 + 1 ))" "$log" 2>/dev/null || true)
        grep -q "Address already in use" <<<"$new" && return 1
        grep -q "fatal" <<<"$new" && return 2
        if [[ -n "$(find_cmd "$2 -f $CONF")" ]]; then gone=0; else gone=$(( gone + 1 )); fi
        (( gone > 20 )) && return 2          # no such process for 2 s
        sleep 0.1
    done
    return 2
}

for attempt in 1 2 3 4 5; do
    write_conf
    # Default: recover jobs/nodes from StateSaveLocation like a real restart.
    # SLURM_CLEAR_STATE=1 -> "slurmctld -c": forget all jobs (job ids keep counting).
    rm -f "$DIR/run/slurmctld.pid" "$DIR/run/slurmd.pid"
    ctld_off=$(stat -c %s "$DIR/log/slurmctld.log" 2>/dev/null || echo 0)
    slurmd_off=$(stat -c %s "$DIR/log/slurmd.log" 2>/dev/null || echo 0)
    rc=0
    if [[ "${SLURM_CLEAR_STATE:-0}" == 1 ]]; then
        slurmctld -f "$CONF" -c || rc=2
    else
        slurmctld -f "$CONF" || rc=2
    fi
    if (( rc == 0 )); then
        wait_daemon "$DIR/run/slurmctld.pid" slurmctld "$CTLD_PORT" "$ctld_off" || rc=$?
    fi
    if (( rc == 0 )); then
        slurmd -f "$CONF" -N "$NODE" || rc=2
    fi
    if (( rc == 0 )); then
        wait_daemon "$DIR/run/slurmd.pid" slurmd "$D_PORT" "$slurmd_off" || rc=$?
    fi
    (( rc == 0 )) && break
    if (( rc == 1 )) && [[ -z "${SLURMCTLD_PORT:-}${SLURMD_PORT:-}" ]]; then
        echo "port $CTLD_PORT or $D_PORT taken, retrying with other ports" >&2
        for pid in $(find_cmd "slurmctld -f $CONF") $(find_cmd "slurmd -f $CONF"); do
            kill "$pid" 2>/dev/null || true
        done
        sleep 1
        CTLD_PORT=$(free_port); D_PORT=$(free_port "$CTLD_PORT")
        continue
    fi
    echo "ERROR: slurmctld/slurmd failed to start" >&2
    show_logs
    "$(dirname "$(readlink -f "$0")")/stop_cluster.sh" "$DIR" >/dev/null 2>&1 || true
    exit 1
done
if (( rc != 0 )) || ! wait_idle; then
    (( rc != 0 )) && { echo "ERROR: could not find free ports after 5 attempts" >&2; show_logs; }
    "$(dirname "$(readlink -f "$0")")/stop_cluster.sh" "$DIR" >/dev/null 2>&1 || true
    exit 1
fi
usage
