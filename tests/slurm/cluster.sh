#!/usr/bin/env bash
# A real single-node SLURM (Debian's packages) on this machine, for the SLURM tests.
#
#   bash tests/slurm/cluster.sh up      # install (apt) if needed, configure, start; idempotent
#   bash tests/slurm/cluster.sh status  # sinfo / sacct check; exit 0 when usable
#   bash tests/slurm/cluster.sh down    # stop only the daemons this script started
#
# No systemd is assumed: munged, mariadbd, slurmdbd, slurmctld and slurmd are started directly.
# Accounting (slurmdbd + MariaDB) is on because snakemake's SLURM executor reads job states with
# `sacct`. The node advertises two *fake* GPUs (gres.conf AutoDetect=off, File=/dev/null and
# /dev/zero) so that jobs asking for `--gpus=1` or `--gpus=2` are scheduled on this GPU-less
# machine; nothing runs on a GPU. Two partitions, `cpu` (default) and `gpu`, both on this node,
# match profiles/slurm and profiles/slurm-small.
#
# Exit status of `up`: 0 ready; 77 the cluster cannot be installed here (no apt-get, not root,
# package install failed) — tests skip on 77 and fail on anything else.
set -uo pipefail

STATE=${MMABLATE_SLURM_STATE:-/var/lib/mmablate-slurm}
STARTED=$STATE/started          # "name pid" per daemon this script started
MARK="# written by mmablate tests/slurm/cluster.sh"
CONF=/etc/slurm
PKGS=(munge slurmctld slurmd slurm-client slurmdbd mariadb-server)
DB_PASS=mmablate-test

log() { echo "cluster.sh: $*" >&2; }
cannot() { log "cannot install SLURM here: $*"; exit 77; }

usable() {  # controller answers, node is up, accounting answers
  timeout 10 sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated|completing)' &&
    timeout 10 sacct -n -X -S now-1minutes >/dev/null 2>&1
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
  local n=$1 what=$2; shift 2
  for ((i = 0; i < n * 2; i++)); do "$@" >/dev/null 2>&1 && return 0; sleep 0.5; done
  log "timed out after ${n}s waiting for $what"; return 1
}

running() { [ -n "$1" ] && kill -0 "$1" 2>/dev/null; }
pid_of() { pgrep -x "$1" | head -1; }

start() {  # start NAME PIDFILE COMMAND... : start a daemon unless one runs; record what we start
  local name=$1 pidfile=$2; shift 2
  if [ -n "$(pid_of "$name")" ]; then log "$name already running (pid $(pid_of "$name"))"; return 0; fi
  "$@" || { log "$name failed to start"; return 1; }
  wait_for 20 "$name pid file" test -s "$pidfile" || return 1
  local pid; pid=$(cat "$pidfile")
  echo "$name $pid" >>"$STARTED"
  log "started $name (pid $pid)"
}

install() {
  local missing=()
  for b in munged slurmctld slurmd slurmdbd sbatch sacct mariadbd; do
    command -v "$b" >/dev/null 2>&1 || missing+=("$b")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "$(id -u)" = 0 ] || cannot "not root and ${missing[*]} missing"
  command -v apt-get >/dev/null 2>&1 || cannot "no apt-get and ${missing[*]} missing"
  log "installing ${PKGS[*]} (missing: ${missing[*]})"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2 || cannot "apt-get update failed"
  apt-get install -y -qq "${PKGS[@]}" >&2 || cannot "apt-get install ${PKGS[*]} failed"
}

ours_or_absent() { [ ! -e "$1" ] || head -1 "$1" | grep -qF "$MARK"; }

configure() {
  mkdir -p "$CONF" /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/slurm "$STATE"
  chown slurm:slurm /var/spool/slurmctld /var/log/slurm /run/slurm
  local node cpus mem
  node=$(hostname -s)
  if ! ours_or_absent "$CONF/slurm.conf"; then
    log "keeping the existing $CONF/slurm.conf (not written by this script)"; return 0
  fi
  cpus=$(nproc)
  mem=$(slurmd -C 2>/dev/null | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
  mem=$(( ${mem:-4096} * 9 / 10 ))
  cat >"$CONF/slurm.conf" <<EOF
$MARK
ClusterName=mmablate
SlurmctldHost=$node
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
ReturnToService=2
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmdSpoolDir=/var/spool/slurmd
StateSaveLocation=/var/spool/slurmctld
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SlurmUser=slurm
SchedulerType=sched/backfill
MinJobAge=300
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStorageTRES=gres/gpu
JobAcctGatherType=jobacct_gather/none
GresTypes=gpu
NodeName=$node CPUs=$cpus RealMemory=$mem Gres=gpu:2 State=UNKNOWN
PartitionName=cpu Nodes=$node Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=$node Default=NO MaxTime=INFINITE State=UP
EOF
  cat >"$CONF/gres.conf" <<EOF
$MARK
# Two fake GPUs so that GPU jobs (and a 2-GPU job) schedule on a GPU-less test machine
# (nothing runs on them: the training falls back to the CPU, gloo for 2 ranks).
AutoDetect=off
NodeName=$node Name=gpu File=/dev/null
NodeName=$node Name=gpu File=/dev/zero
EOF
  cat >"$CONF/slurmdbd.conf" <<EOF
$MARK
AuthType=auth/munge
DbdHost=localhost
SlurmUser=slurm
PidFile=/run/slurm/slurmdbd.pid
LogFile=/var/log/slurm/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
  chown slurm:slurm "$CONF/slurmdbd.conf"
  chmod 600 "$CONF/slurmdbd.conf"
}

up() {
  if usable; then log "reusing the running cluster"; sinfo >&2; return 0; fi
  install
  configure
  mkdir -p "$STATE"; touch "$STARTED"
  # munge
  mkdir -p /run/munge && chown munge:munge /run/munge && chmod 755 /run/munge
  [ -s /etc/munge/munge.key ] || { mungekey -c -k /etc/munge/munge.key && chown munge:munge /etc/munge/munge.key; }
  start munged /run/munge/munged.pid runuser -u munge -- /usr/sbin/munged || return 1
  # MariaDB for slurmdbd
  mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
  if [ -z "$(pid_of mariadbd)" ]; then
    runuser -u mysql -- /usr/sbin/mariadbd --pid-file=/run/mysqld/mysqld.pid \
      --socket=/run/mysqld/mysqld.sock >/var/log/slurm/mariadbd.log 2>&1 &
    wait_for 60 "mariadbd" test -S /run/mysqld/mysqld.sock || return 1
    wait_for 20 "mariadbd pid file" test -s /run/mysqld/mysqld.pid || return 1
    echo "mariadbd $(cat /run/mysqld/mysqld.pid)" >>"$STARTED"; log "started mariadbd"
  fi
  wait_for 30 "mariadb answering" mariadb -e "select 1" || return 1
  mariadb -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
              GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;" || return 1
  start slurmdbd /run/slurm/slurmdbd.pid /usr/sbin/slurmdbd || return 1
  wait_for 30 "slurmdbd answering" sacctmgr -n list cluster || return 1
  start slurmctld /run/slurm/slurmctld.pid /usr/sbin/slurmctld || return 1
  start slurmd /run/slurm/slurmd.pid /usr/sbin/slurmd || return 1
  # the controller registers the cluster with slurmdbd; an account for the profile's example
  wait_for 30 "cluster registered in accounting" sh -c "sacctmgr -n list cluster format=cluster | grep -q mmablate" || return 1
  sacctmgr -i add account mmablate Description=tests Organization=mmablate >/dev/null 2>&1
  sacctmgr -i add user root Account=mmablate >/dev/null 2>&1
  scontrol update NodeName="$(hostname -s)" State=RESUME >/dev/null 2>&1
  wait_for 60 "node idle and accounting answering" usable || { status; return 1; }
  log "cluster up"; sinfo >&2
}

down() {
  [ -s "$STARTED" ] || { log "nothing started by this script"; return 0; }
  tac "$STARTED" | while read -r name pid; do  # reverse order of starting
    if running "$pid"; then kill "$pid" && log "stopped $name ($pid)"; fi
    for ((i = 0; i < 40; i++)); do running "$pid" || break; sleep 0.25; done
  done
  rm -f "$STARTED"
}

status() {
  for d in munged mariadbd slurmdbd slurmctld slurmd; do
    printf '%-10s %s\n' "$d" "$(pid_of $d || echo '-')"
  done
  timeout 10 sinfo 2>&1
  if usable; then echo "usable: yes"; return 0; else echo "usable: no"; return 1; fi
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
