#!/usr/bin/env bash
# A single-node SLURM cluster on this machine, for trying `etrmtrm sweep --executor slurm` for real
# (tests/test_sweep_slurm.py runs when `sinfo` answers). Debian/Ubuntu, as root:
#
#   apt-get install -y slurm-wlm munge      # once
#   scripts/slurm-single-node.sh            # writes /etc/slurm/slurm.conf, starts munged, slurmctld, slurmd
#   scripts/slurm-single-node.sh stop       # stops the three daemons
#
# No systemd and no cgroups are needed: processes are tracked by their parent (proctrack/linuxproc), tasks are
# not bound to cores (task/none), there is no accounting database (so no sacct), and every daemon runs as
# root. It is a test bed, not a production setup. Logs: /var/log/slurm/.
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"  # the daemons live in sbin, which a non-login or CI shell may leave out

CONF=/etc/slurm/slurm.conf
STATE=/var/spool/slurmctld
SPOOL=/var/spool/slurmd
LOGS=/var/log/slurm
HOST=$(hostname -s)

stop_pid() {  # name pidfile: SIGTERM, then wait up to 20 s for it to exit
    local pid
    [ -f "$2" ] && pid=$(cat "$2") && kill -0 "$pid" 2>/dev/null || return 0
    kill "$pid"
    for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    echo "stopped $1"
}

stop() {
    # Jobs first: a job's step (slurmstepd, srun) outlives the daemons otherwise.
    if squeue -h >/dev/null 2>&1; then
        squeue -h -o %A | xargs -r scancel
        for _ in $(seq 60); do [ -z "$(squeue -h 2>/dev/null)" ] && break; sleep 0.5; done
    fi
    stop_pid slurmd /run/slurmd.pid
    stop_pid slurmctld /run/slurmctld.pid
    stop_pid munged /run/munge/munged.pid
}

if [ "${1:-start}" = stop ]; then
    stop
    exit 0
fi
[ "$(id -u)" = 0 ] || { echo "run as root (it writes $CONF and starts daemons)" >&2; exit 1; }
for tool in munged slurmctld slurmd sinfo; do
    command -v "$tool" >/dev/null || { echo "$tool not found: apt-get install -y slurm-wlm munge" >&2; exit 1; }
done

# The node as slurmd sees it (CPUs, sockets, cores, memory), less a little memory for the daemons.
NODE=$(slurmd -C | head -n 1)
MEM=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$NODE")
NODE=$(sed "s/RealMemory=[0-9]*/RealMemory=$((MEM * 9 / 10))/" <<<"$NODE")

MARK="# Written by scripts/slurm-single-node.sh"
if [ -s "$CONF" ] && ! head -n 1 "$CONF" | grep -qF "$MARK"; then
    echo "$CONF exists and this script did not write it: a real cluster's configuration is left alone" >&2
    exit 1
fi
mkdir -p /etc/slurm "$STATE" "$SPOOL" "$LOGS"
cat >"$CONF" <<CONFIG
$MARK: one node ($HOST), one partition, no accounting, no cgroups.
ClusterName=etrmtrm
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$STATE
SlurmdSpoolDir=$SPOOL
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
# A requeued or cancelled job gets SIGTERM, then SIGKILL after KillWait: time to save a checkpoint.
KillWait=60
JobRequeue=1
SlurmdTimeout=300
$NODE State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
CONFIG
echo "wrote $CONF: $NODE"

# munge: the authentication every SLURM message carries.
mkdir -p /run/munge && chown munge:munge /run/munge && chmod 755 /run/munge
if ! munge -n >/dev/null 2>&1; then
    [ -s /etc/munge/munge.key ] || { /usr/sbin/mungekey --create --force && chown munge:munge /etc/munge/munge.key; }
    runuser -u munge -- /usr/sbin/munged
fi
munge -n | unmunge >/dev/null && echo "munged: ok"

if ! sinfo -h >/dev/null 2>&1; then
    slurmctld
    for _ in $(seq 30); do sinfo -h >/dev/null 2>&1 && break; sleep 1; done
fi
pgrep -x slurmd >/dev/null || slurmd

for _ in $(seq 60); do
    state=$(sinfo -h -n "$HOST" -o %t 2>/dev/null || true)
    case "$state" in
        idle|mix|alloc) sinfo; exit 0 ;;
        down*|drain*) scontrol update nodename="$HOST" state=resume 2>/dev/null || true ;;
    esac
    sleep 1
done
echo "the node did not become idle within 60 s (state: ${state:-none}); see $LOGS/slurmctld.log and $LOGS/slurmd.log" >&2
sinfo >&2 || true
exit 1
