# A one-machine Slurm cluster for tests, sourced by tests/cli/slurm_*.sh.
#   slurm_up DIR    install slurm-wlm + munge if missing, start munged,
#                   slurmctld and slurmd with a config under DIR, wait until a
#                   job step runs. If a slurmctld already runs here, use it.
#   slurm_down      stop (by pid) only the daemons slurm_up started; DIR is
#                   the caller's to remove.
#   slurm_wait ID SECONDS   wait until job ID (every task of an array) has
#                   ended; prints the final states, one per line.
#   slurm_state ID  the job's current state(s), one per line.
# Needs root (it starts daemons). The config is passed through SLURM_CONF, so
# /etc/slurm is never written; daemons, sbatch, srun and the jobs all read it.
# Recipe and config: STACK.md "Slurm on one machine".

SLURM_STARTED=()   # pids of the daemons this file started, stopped by slurm_down

slurm_install() {
  local missing=()
  for p in slurm-wlm munge; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "slurm-local: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# Writes DIR/slurm.conf for one node named localhost with this machine's cores.
slurm_write_conf() {
  local dir=$1 cpus
  cpus=$(nproc --all)
  cat >"$dir/slurm.conf" <<EOF
# Written by tests/cluster/slurm-local.bash (a test cluster; removed afterwards).
ClusterName=ferrytest
SlurmctldHost=localhost
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=pmix
MailProg=/bin/true
ReturnToService=2
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
StateSaveLocation=$dir/ctld
SlurmdSpoolDir=$dir/slurmd
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# Short waits: a test requeues jobs and wants the node back at once.
KillWait=20
MinJobAge=600
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus Sockets=1 CoresPerSocket=$cpus ThreadsPerCore=1 RealMemory=1000
PartitionName=debug Nodes=localhost Default=YES State=UP MaxTime=INFINITE
EOF
}

# Reads a pid file, waiting for it to appear (daemons write it after forking).
slurm_pidfile() {
  local f=$1
  for _ in $(seq 100); do
    [ -s "$f" ] && { cat "$f"; return 0; }
    sleep 0.1
  done
  return 1
}

slurm_up() {
  local dir=$1
  # One test cluster per machine at a time (several build trees may run the
  # suite at once): wait for the other's slurm_down. The lock is released
  # when this shell exits.
  exec 8>/tmp/ferry-slurm-test.lock
  flock -w 900 8 || { echo "slurm-local: another Slurm test holds the lock" >&2; return 1; }
  slurm_install
  if pgrep -x slurmctld >/dev/null; then
    echo "slurm-local: slurmctld already running: using that cluster, leaving it running"
    scontrol ping >/dev/null || { echo "slurm-local: the running slurmctld does not answer" >&2; return 1; }
    return 0
  fi
  mkdir -p "$dir/ctld" "$dir/slurmd"
  slurm_write_conf "$dir"
  export SLURM_CONF=$dir/slurm.conf
  # munged: the package makes /etc/munge/munge.key; keep a running munged.
  if ! pgrep -x munged >/dev/null; then
    [ -s /etc/munge/munge.key ] || mungekey --create --keyfile=/etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key
    install -d -o munge -g munge -m 0755 /run/munge
    rm -f /run/munge/munged.pid
    runuser -u munge -- /usr/sbin/munged 8>&-
    SLURM_STARTED+=("$(slurm_pidfile /run/munge/munged.pid)")
  fi
  slurmctld 8>&-   # (the lock stays with this shell, not the daemons)
  SLURM_STARTED+=("$(slurm_pidfile "$dir/slurmctld.pid")")
  slurmd -N localhost 8>&-
  SLURM_STARTED+=("$(slurm_pidfile "$dir/slurmd.pid")")
  # The node registers within seconds; a first job step proves the whole path.
  for _ in $(seq 300); do
    timeout 20 srun -n 1 true 2>/dev/null && return 0
    sleep 0.2
  done
  echo "slurm-local: no job step ran within a minute; logs:" >&2
  tail -n 20 "$dir"/slurm*.log >&2
  return 1
}

slurm_down() {
  local i pid
  # Reverse order: slurmd, slurmctld, then munged.
  for ((i = ${#SLURM_STARTED[@]} - 1; i >= 0; i--)); do
    pid=${SLURM_STARTED[$i]}
    [ -n "$pid" ] || continue
    kill "$pid" 2>/dev/null || continue
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
  done
  SLURM_STARTED=()
  return 0
}

slurm_state() {
  scontrol show job "$1" -o 2>/dev/null | grep -o 'JobState=[A-Z_]*' | cut -d= -f2
}

slurm_wait() {
  local id=$1 secs=$2 states
  for _ in $(seq $((secs * 5))); do
    states=$(slurm_state "$id")
    if [ -n "$states" ] && ! grep -qvE '^(COMPLETED|FAILED|CANCELLED|TIMEOUT|NODE_FAIL|OUT_OF_MEMORY|BOOT_FAIL|DEADLINE|PREEMPTED)$' <<<"$states"; then
      echo "$states"
      return 0
    fi
    sleep 0.2
  done
  echo "slurm-local: job $id not finished after ${secs}s: $(echo $states)" >&2
  scontrol show job "$id" >&2
  return 1
}
