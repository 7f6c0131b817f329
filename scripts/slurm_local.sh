#!/usr/bin/env bash
# A one-node Slurm on this machine, for testing `equimodal sweep --slurm --submit` against a
# real scheduler (CI runs it; needs root and Debian's slurm-wlm and munge packages).
#   scripts/slurm_local.sh install   apt-get the packages if missing
#   scripts/slurm_local.sh start     munged + slurmctld + slurmd, wait for the node to be idle
#   scripts/slurm_local.sh stop      stop the daemons this script started (by pid)
# Without systemd or cgroups: linuxproc process tracking, no task plugin, no accounting.
set -euo pipefail
state=${SLURM_LOCAL_DIR:-/tmp/equimodal-slurm}
conf_dir=/etc/slurm

install() {
  if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq slurm-wlm munge >/dev/null
  fi
}

start() {
  mkdir -p "$state"/{spool,state,log} /run/munge "$conf_dir"
  # munge: a key readable by its user only, the daemon as that user
  if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
  fi
  chown munge:munge /etc/munge/munge.key /run/munge
  chmod 400 /etc/munge/munge.key
  if ! pgrep -x munged >/dev/null; then
    runuser -u munge -- /usr/sbin/munged
  fi
  local host cpus mem
  host=$(hostname)
  cpus=$(nproc)
  mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
  cat > "$conf_dir/slurm.conf" <<EOF
ClusterName=equimodal-test
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
SlurmctldPidFile=$state/slurmctld.pid
SlurmdPidFile=$state/slurmd.pid
SlurmdSpoolDir=$state/spool
StateSaveLocation=$state/state
SlurmctldLogFile=$state/log/slurmctld.log
SlurmdLogFile=$state/log/slurmd.log
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
  # a GPU request (--gres) on this node would never start: tests submit with gpus_per_task = 0
  slurmctld -i
  slurmd
  for _ in $(seq 1 60); do
    if sinfo -h -o %T 2>/dev/null | grep -q idle; then
      echo "slurm: node $host idle"
      return 0
    fi
    sleep 1
  done
  echo "slurm: node did not become idle; logs in $state/log" >&2
  sinfo >&2 || true
  return 1
}

stop() {
  for d in slurmd slurmctld; do
    if [ -s "$state/$d.pid" ]; then
      kill "$(cat "$state/$d.pid")" 2>/dev/null || true
    fi
  done
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 install|start|stop" >&2; exit 2 ;;
esac
