#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for trying and testing
# `cargo xtask reproduce-table --executor slurm` without a real cluster.
#
#   scripts/slurm/local-cluster.sh start    # install (Debian/Ubuntu, as root) and start
#   scripts/slurm/local-cluster.sh status   # exit 0 iff the cluster answers
#   scripts/slurm/local-cluster.sh stop
#
# Everything lives in a state folder, ${TFKD_SLURM_DIR:-/tmp/tfkd-slurm}:
# slurm.conf, the controller's state, the node's spool, logs and pid files.
# The daemons read that slurm.conf (`-f`). The clients (sbatch, squeue,
# scontrol, sinfo) read /etc/slurm/slurm.conf unless SLURM_CONF says
# otherwise, so `start` links /etc/slurm/slurm.conf to it when that file is
# absent (and `stop` removes the link again). A machine with a slurm.conf of
# its own is left alone: `start` then prints the SLURM_CONF to export.
#
# The node is this machine with the CPUs and memory `slurmd -C` sees, one
# partition `debug`, CPUs as the consumable resource (so 1-CPU tasks run one
# per core), no cgroups (proctrack/linuxproc, task/none) and no accounting
# database. Finished jobs leave squeue after a few seconds (MinJobAge).
# Munge: a running munged is reused; otherwise one is started with the
# machine's key (created when missing).
set -euo pipefail

STATE="${TFKD_SLURM_DIR:-/tmp/tfkd-slurm}"
CONF="$STATE/slurm.conf"
SYSTEM_CONF=/etc/slurm/slurm.conf
MARK="# written by tfkd scripts/slurm/local-cluster.sh"
PACKAGES=(slurmctld slurmd slurm-client munge)

die() {
  echo "local-cluster: $*" >&2
  exit 1
}
say() { echo "local-cluster: $*"; }

# Whether /etc/slurm/slurm.conf is (a link to) ours.
uses_system_conf() {
  [ "$(readlink -f "$SYSTEM_CONF" 2>/dev/null)" = "$(readlink -f "$CONF" 2>/dev/null)" ]
}

# Clients find our config through SLURM_CONF when /etc/slurm/slurm.conf is
# not (a link to) ours.
client_env() {
  if [ -z "${SLURM_CONF:-}" ] && ! uses_system_conf; then
    export SLURM_CONF="$CONF"
  fi
}

answers() {
  client_env
  timeout 10 sinfo -h -o %T >/dev/null 2>&1
}

install_packages() {
  local missing=()
  for bin in slurmctld slurmd sbatch squeue sinfo scontrol munged munge; do
    command -v "$bin" >/dev/null 2>&1 || [ -x "/usr/sbin/$bin" ] || missing+=("$bin")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -ne 0 ]; then
    die "missing ${missing[*]}; install them as root: apt-get install ${PACKAGES[*]} (or run this script as root)"
  fi
  command -v apt-get >/dev/null 2>&1 ||
    die "missing ${missing[*]} and no apt-get here: install Slurm (slurmctld, slurmd, client commands) and munge by hand"
  say "installing ${PACKAGES[*]} with apt-get"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${PACKAGES[@]}" >/dev/null ||
    { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${PACKAGES[@]}" >/dev/null; } ||
    die "apt-get install ${PACKAGES[*]} failed"
}

PATH="$PATH:/usr/sbin:/sbin"

start_munge() {
  if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    return 0
  fi
  if [ ! -s /etc/munge/munge.key ]; then
    say "creating a munge key"
    if command -v mungekey >/dev/null 2>&1; then
      mungekey --create --keyfile=/etc/munge/munge.key
    else
      dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
    fi
    chown munge:munge /etc/munge/munge.key 2>/dev/null || true
    chmod 400 /etc/munge/munge.key
  fi
  mkdir -p /run/munge /var/lib/munge /var/log/munge
  if id munge >/dev/null 2>&1; then
    chown munge:munge /run/munge /var/lib/munge /var/log/munge
    chmod 755 /run/munge
    runuser -u munge -- munged || die "munged did not start: $(tail -n 20 /var/log/munge/munged.log 2>/dev/null)"
  else
    munged --force || die "munged did not start: $(tail -n 20 /var/log/munge/munged.log 2>/dev/null)"
  fi
  for _ in $(seq 1 20); do
    munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  die "munged started but does not answer; its log: $(tail -n 20 /var/log/munge/munged.log 2>/dev/null)"
}

write_config() {
  local host node mem
  host="$(hostname -s)"
  # The node as slurmd sees it (CPUs, sockets, cores, threads), with less
  # memory than it has so that the node is never drained for "low memory".
  node="$(slurmd -C 2>/dev/null | head -n 1 | sed -E 's/ RealMemory=[0-9]+//')"
  [ -n "$node" ] || node="NodeName=$host CPUs=$(nproc)"
  mem=$(awk '/MemAvailable/ { m = int($2 / 1024) - 1024; if (m < 256) m = 256; print m }' /proc/meminfo)
  mkdir -p "$STATE/state" "$STATE/spool" "$STATE/log"
  cat >"$CONF" <<EOF
$MARK
ClusterName=tfkd-local
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
MinJobAge=5
KillWait=10
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=60
StateSaveLocation=$STATE/state
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
$node RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  # An empty plugstack: the daemons look for one beside slurm.conf.
  : >"$STATE/plugstack.conf"
}

link_system_conf() {
  if [ -L "$SYSTEM_CONF" ] && uses_system_conf; then
    return 0
  fi
  if [ ! -e "$SYSTEM_CONF" ] && [ ! -L "$SYSTEM_CONF" ] && mkdir -p "$(dirname "$SYSTEM_CONF")" 2>/dev/null &&
    ln -s "$CONF" "$SYSTEM_CONF" 2>/dev/null; then
    say "linked $SYSTEM_CONF to $CONF"
    return 0
  fi
  say "$SYSTEM_CONF exists (or cannot be written) and is left alone; clients need: export SLURM_CONF=$CONF"
}

logs() {
  for f in "$STATE/log/slurmctld.log" "$STATE/log/slurmd.log"; do
    if [ -f "$f" ]; then
      echo "---- last lines of $f" >&2
      tail -n 25 "$f" >&2
    fi
  done
}

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

start() {
  if [ -f "$CONF" ] && answers; then
    say "already running (state in $STATE)"
    return 0
  fi
  install_packages
  [ "$(id -u)" -eq 0 ] || die "starting the daemons needs root (SlurmUser=root); run: sudo $0 start"
  start_munge
  write_config
  link_system_conf
  client_env
  pid_alive "$STATE/slurmctld.pid" || slurmctld -f "$CONF" || { logs; die "slurmctld did not start"; }
  pid_alive "$STATE/slurmd.pid" || slurmd -f "$CONF" || { logs; die "slurmd did not start"; }
  local state=""
  for _ in $(seq 1 60); do
    state="$(timeout 5 sinfo -h -N -o %T 2>/dev/null | head -n 1 || true)"
    case "$state" in
      idle* | mixed* | allocated*)
        say "cluster tfkd-local is up: node $(hostname -s) $state, partition debug (state in $STATE)"
        uses_system_conf || say "clients need: export SLURM_CONF=$CONF"
        return 0
        ;;
      drain* | down* | fail*)
        # ReturnToService=2 brings a registered node back; nudge it once.
        timeout 5 scontrol update NodeName="$(hostname -s)" State=RESUME >/dev/null 2>&1 || true
        ;;
    esac
    sleep 1
  done
  echo "local-cluster: the node did not become idle within 60 s (sinfo says: ${state:-nothing})" >&2
  timeout 5 sinfo -N -l >&2 || true
  logs
  exit 1
}

stop() {
  client_env
  for d in slurmd slurmctld; do
    local pidfile="$STATE/$d.pid"
    if pid_alive "$pidfile"; then
      local pid
      pid="$(cat "$pidfile")"
      kill "$pid"
      for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
      say "stopped $d (pid $pid)"
    fi
  done
  if [ -L "$SYSTEM_CONF" ] && uses_system_conf; then
    rm -f "$SYSTEM_CONF"
    say "removed the link $SYSTEM_CONF"
  fi
  # munged is left running: other programs may use it.
}

status() {
  if answers; then
    sinfo
    return 0
  fi
  echo "local-cluster: no Slurm cluster answers (state folder $STATE)" >&2
  return 1
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *)
    echo "usage: $0 start|stop|status" >&2
    exit 2
    ;;
esac
