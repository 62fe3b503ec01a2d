#!/usr/bin/env bash
# cluster.sh: a throw-away one-node Slurm cluster (munged, slurmctld, slurmd) for the slurm tests,
# run as root. No systemd, no cgroups, no accounting database: every file it makes (config, munge
# key and socket, spool, state, logs, pid files) lives in one directory, and the two daemon
# ports are picked free at start, so several clusters (or a site's own Slurm) do not collide.
#
#   eval "$(tests/slurm/cluster.sh start DIR)"   # prints: export SLURM_CONF=DIR/etc/slurm.conf
#   tests/slurm/cluster.sh stop DIR              # kills slurmd, slurmctld, munged by PID, waits
#   tests/slurm/cluster.sh status DIR            # sinfo and squeue
#
# Optional: CF_SLURM_CPUS (CPUs of the node, default max(nproc, 2); config_overrides lets it
# exceed the machine so 2-rank jobs run on one core).
set -euo pipefail

cmd=${1:-}
dir=${2:-}
if [ -z "$cmd" ] || [ -z "$dir" ]; then
  echo "usage: $0 start|stop|status DIR" >&2
  exit 2
fi
mkdir -p "$dir"
D=$(cd "$dir" && pwd) # the daemons change directory: absolute paths only
export SLURM_CONF=$D/etc/slurm.conf

free_port() { # a TCP port nothing listens on now (the kernel picks it)
  /usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

daemon_pids() {
  local f
  for f in "$D/run/slurmd.pid" "$D/run/slurmctld.pid" "$D/run/munged.pid"; do
    [ -s "$f" ] && cat "$f"
  done
  return 0
}

start() {
  local cpus mem_mb ctld_port slurmd_port
  mkdir -p "$D"/{etc,state,spool,log,run,munge,tmp}
  chmod 0755 "$D/munge"
  if [ ! -s "$D/munge/munge.key" ]; then
    head -c 1024 /dev/urandom >"$D/munge/munge.key"
    chmod 0400 "$D/munge/munge.key"
  fi
  cpus=${CF_SLURM_CPUS:-$(getconf _NPROCESSORS_ONLN)}
  [ "$cpus" -ge 2 ] || cpus=2
  mem_mb=$(($(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024 / 2))
  ctld_port=$(free_port)
  slurmd_port=$(free_port)
  while [ "$slurmd_port" = "$ctld_port" ]; do slurmd_port=$(free_port); done
  cat >"$SLURM_CONF" <<EOF
# written by tests/slurm/cluster.sh for a throw-away test cluster; everything under $D
ClusterName=cftest
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
AuthType=auth/munge
AuthInfo=socket=$D/munge/munge.socket,cred_expire=6
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$D/state
SlurmdSpoolDir=$D/spool
TmpFS=$D/tmp
SlurmctldPidFile=$D/run/slurmctld.pid
SlurmdPidFile=$D/run/slurmd.pid
SlurmctldLogFile=$D/log/slurmctld.log
SlurmdLogFile=$D/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
MpiDefault=pmix
JobRequeue=1
ReturnToService=2
SlurmdParameters=config_overrides
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
MinJobAge=600
NodeName=localhost NodeAddr=127.0.0.1 NodeHostname=$(hostname) CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=test Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
  /usr/sbin/munged --force --socket="$D/munge/munge.socket" --key-file="$D/munge/munge.key" \
    --pid-file="$D/run/munged.pid" --log-file="$D/log/munged.log" --seed-file="$D/munge/munge.seed"
  /usr/sbin/slurmctld -c # -c: a clean start, no saved jobs
  /usr/sbin/slurmd -N localhost
  local _
  for _ in $(seq 1 100); do
    if sinfo -h -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
      printf 'export SLURM_CONF=%q\n' "$SLURM_CONF"
      return 0
    fi
    sleep 0.2
  done
  echo "cluster.sh: the node did not come up within 20 s; logs in $D/log" >&2
  sinfo >&2 || true
  tail -n 20 "$D"/log/*.log >&2 || true
  return 1
}

stop() { # cancels what is left (so no job step outlives slurmd), then the daemons by PID
  local ps p alive _ jobs
  ps=$(daemon_pids)
  [ -n "$ps" ] || return 0
  jobs=$(squeue -h -o '%i' 2>/dev/null || true)
  if [ -n "$jobs" ]; then
    # shellcheck disable=SC2086
    scancel $jobs 2>/dev/null || true
    for _ in $(seq 1 75); do
      squeue -h -t running,completing 2>/dev/null | grep -q . || break
      sleep 0.2
    done
  fi
  for p in $ps; do kill "$p" 2>/dev/null || true; done
  for _ in $(seq 1 50); do
    alive=0
    for p in $ps; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && return 0
    sleep 0.2
  done
  for p in $ps; do kill -9 "$p" 2>/dev/null || true; done
  echo "cluster.sh: daemons $ps needed SIGKILL" >&2
}

case "$cmd" in
start) start ;;
stop) stop ;;
status)
  sinfo
  squeue
  ;;
*)
  echo "usage: $0 start|stop|status DIR" >&2
  exit 2
  ;;
esac
