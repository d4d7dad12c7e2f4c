#!/usr/bin/env bash
# A single-node SLURM on this machine for the workflow tests and CI (no systemd needed): munged,
# slurmctld and slurmd, partition `debug`, two fake GPUs (`Gres=gpu:2` backed by /dev/null and
# /dev/zero, so rules with `resources: gpu=1` are scheduled, two at a time; jobs see
# CUDA_VISIBLE_DEVICES but no real GPU), no accounting (poll with `squeue`). Needs root and the
# Debian packages slurm-wlm and munge.
#
#   bash tests/slurm/start.sh     # ~2 s; prints sinfo
#   bash tests/slurm/stop.sh      # stops what start.sh started, removes its config
#
# Exit status: 0 running; 3 cannot run here (not root, packages missing, or a SLURM that this script
# did not configure is in the way: it never touches a real cluster's config).
set -euo pipefail
STATE=${SEDM_SLURM_STATE:-/var/lib/sedm-slurm}
CONF_DIR=/etc/slurm
MARK="# written by sedm tests/slurm/start.sh"

cannot() { echo "local SLURM cannot start: $*" >&2; exit 3; }
[ "$(id -u)" = 0 ] || cannot "needs root (it writes $CONF_DIR/slurm.conf and runs slurmd)"
for bin in munged slurmctld slurmd sinfo sbatch; do
    command -v "$bin" >/dev/null 2>&1 || [ -x "/usr/sbin/$bin" ] || cannot "$bin not found (apt-get install slurm-wlm munge)"
done
if [ -e "$CONF_DIR/slurm.conf" ] && ! grep -qxF "$MARK" "$CONF_DIR/slurm.conf"; then
    cannot "$CONF_DIR/slurm.conf exists and was not written by this script (a real SLURM?)"
fi

# a restart begins from a clean slate (old daemons, job ids, spool)
bash "$(dirname "$0")/stop.sh" >/dev/null 2>&1 || true
rm -rf "$STATE"
mkdir -p "$STATE"/{ctld,slurmd,log}

# munge: reuse a working munged, else start one (and remember that we did)
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    install -d -o munge -g munge -m 0755 /run/munge
    install -d -o munge -g munge -m 0700 /var/log/munge /var/lib/munge
    if [ ! -s /etc/munge/munge.key ]; then
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 2>/dev/null
        chown munge:munge /etc/munge/munge.key
        chmod 400 /etc/munge/munge.key
    fi
    runuser -u munge -- /usr/sbin/munged
    cp /run/munge/munged.pid "$STATE/munged.pid"
    for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
fi

HOST=$(hostname -s)
NCPU=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)  # nproc obeys OMP_NUM_THREADS (pytest sets it)
MEM=$(( $(awk '/MemTotal/{print $2}' /proc/meminfo) / 1024 - 1024 ))
[ "$MEM" -ge 2048 ] || MEM=2048
mkdir -p "$CONF_DIR"
cat > "$CONF_DIR/slurm.conf" <<CONF
$MARK
ClusterName=sedmtest
SlurmctldHost=${HOST}(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
MpiDefault=none
ReturnToService=2
MinJobAge=600
GresTypes=gpu
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
NodeName=${HOST} NodeAddr=127.0.0.1 CPUs=${NCPU} RealMemory=${MEM} Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
printf '%s\nNodeName=%s Name=gpu File=/dev/null\nNodeName=%s Name=gpu File=/dev/zero\n' "$MARK" "$HOST" "$HOST" \
    > "$CONF_DIR/gres.conf"

/usr/sbin/slurmctld
/usr/sbin/slurmd
for _ in $(seq 100); do
    sinfo -h -o %t 2>/dev/null | grep -qx idle && { sinfo; exit 0; }
    sleep 0.2
done
echo "local SLURM did not come up; last log lines:" >&2
tail -n 5 "$STATE"/log/*.log >&2 || true
exit 1
