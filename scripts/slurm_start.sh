#!/usr/bin/env bash
# Start a single-node SLURM cluster on this machine for the cluster tests (and for trying profiles/slurm):
# munged, MariaDB + slurmdbd (accounting, so Snakemake's executor can poll sacct), slurmctld and slurmd.
# Idempotent: installs the Debian packages only if missing and starts only daemons that are not already running.
# Everything it writes lives in one state folder; every daemon's PID is recorded there, and
# scripts/slurm_stop.sh stops exactly those PIDs. No systemd, no cgroups (works in containers), needs root.
#
#   PAINTBENCH_SLURM_DIR  state folder (default /tmp/paintbench-slurm)
#   PAINTBENCH_SLURM_ACCOUNT  accounting account made for the current user (default paintbench)
#
# Afterwards: `source $PAINTBENCH_SLURM_DIR/env.sh` points sbatch/squeue/sacct at this cluster (SLURM_CONF).
set -euo pipefail

state=${PAINTBENCH_SLURM_DIR:-/tmp/paintbench-slurm}
account=${PAINTBENCH_SLURM_ACCOUNT:-paintbench}
cluster=paintbench
partition=main
etc=$state/etc run=$state/run logs=$state/log
db_socket=$run/mariadb.sock
conf_changed=false
export SLURM_CONF=$etc/slurm.conf

say() { echo "slurm_start: $*"; }
die() { echo "slurm_start: $*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || die "needs root (it starts munged, slurmctld, slurmd and slurmdbd)"

# running PIDFILE NAME: the PID file names a live process called NAME (a stale file from a reboot does not count).
running() {
  local pid
  [[ -s $1 ]] || return 1
  pid=$(<"$1")
  [[ -n $pid && "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$2" ]]
}

# retry SECONDS COMMAND...: until COMMAND succeeds, at most SECONDS tries one second apart.
retry() {
  local tries=$1; shift
  for ((i = 0; i < tries; i++)); do "$@" >/dev/null 2>&1 && return 0; sleep 1; done
  die "gave up after ${tries} s waiting for: $*"
}

install_packages() {
  local wanted=(munge slurmctld slurmd slurm-client slurmdbd mariadb-server) missing=()
  # dpkg -s also succeeds for removed packages whose config files remain: ask for the installed state itself.
  for package in "${wanted[@]}"; do
    [[ $(dpkg-query -W -f='${Status}' "$package" 2>/dev/null) == "install ok installed" ]] || missing+=("$package")
  done
  ((${#missing[@]})) || return 0
  say "installing ${missing[*]}"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"; } \
    >"$logs/apt.log" 2>&1 || { tail -20 "$logs/apt.log" >&2; die "package installation failed (log: $logs/apt.log)"; }
}

start_munge() {
  if [[ ! -s /etc/munge/munge.key ]]; then
    mungekey --create --keyfile=/etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key && chmod 600 /etc/munge/munge.key
  fi
  install -d -o munge -g munge -m 755 /run/munge "$run/munge"
  if ! running "$run/munge/munged.pid" munged; then
    say "starting munged"
    runuser -u munge -- /usr/sbin/munged --pid-file="$run/munge/munged.pid" --log-file="$run/munge/munged.log"  # munged runs as munge: its own folder
  fi
  retry 10 sh -c 'munge -n | unmunge'
}

write_slurm_conf() {
  # The node line as slurmd detects the hardware, with 85% of the memory offered to jobs.
  local node memory
  node=$(slurmd -C | head -1)
  memory=$(grep -o 'RealMemory=[0-9]*' <<<"$node" | cut -d= -f2)
  node=${node/RealMemory=$memory/RealMemory=$((memory * 85 / 100))}
  cat >"$etc/slurm.conf.tmp" <<EOF
ClusterName=$cluster
SlurmctldHost=$(hostname -s)(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MailProg=/bin/true
# No cgroups in containers: track processes by /proc, bind nothing.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# A job that asks for no memory gets 1 GB per CPU instead of the whole node.
DefMemPerCPU=1000
# Finished jobs stay visible to squeue for 5 min (Snakemake's fallback status check).
MinJobAge=300
ReturnToService=2
StateSaveLocation=$state/slurmctld
SlurmdSpoolDir=$state/slurmd
SlurmctldPidFile=$run/slurmctld.pid
SlurmdPidFile=$run/slurmd.pid
SlurmctldLogFile=$logs/slurmctld.log
SlurmdLogFile=$logs/slurmd.log
JobAcctGatherType=jobacct_gather/linux
# Keep the job comment (Snakemake puts the rule name there) in the accounting database for sacct.
AccountingStoreFlags=job_comment
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
$node NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=$partition Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  if cmp -s "$etc/slurm.conf.tmp" "$etc/slurm.conf"; then
    rm "$etc/slurm.conf.tmp"
  else
    mv "$etc/slurm.conf.tmp" "$etc/slurm.conf"
    conf_changed=true
  fi
  # srun inside a job (Snakemake's job steps) ignores the submitter's SLURM_CONF and looks in /etc/slurm:
  # link ours there unless the machine has a SLURM configuration of its own.
  local system=/etc/slurm/slurm.conf
  if [[ ! -e $system || ( -L $system && $(readlink "$system") == "$etc/slurm.conf" ) ]]; then
    mkdir -p /etc/slurm && ln -sfn "$etc/slurm.conf" "$system"
  else
    say "note: $system belongs to another SLURM; jobs' job steps will read that one"
  fi
}

start_accounting() {
  if [[ ! -d $state/mariadb/mysql ]]; then
    say "creating the accounting database"
    mariadb-install-db --user=root --datadir="$state/mariadb" --auth-root-authentication-method=socket \
      --skip-test-db >"$logs/mariadb-install.log" 2>&1 || die "mariadb-install-db failed (log: $logs/mariadb-install.log)"
  fi
  if ! running "$run/mariadb.pid" mariadbd; then
    say "starting mariadbd"
    setsid /usr/sbin/mariadbd --no-defaults --user=root --datadir="$state/mariadb" --socket="$db_socket" \
      --pid-file="$run/mariadb.pid" --bind-address=127.0.0.1 --port=3306 --innodb-lock-wait-timeout=900 \
      --log-error="$logs/mariadb.err" </dev/null >/dev/null 2>&1 &
  fi
  retry 60 mariadb -S "$db_socket" -e 'select 1'
  local password
  [[ -s $etc/db.password ]] || (umask 077 && head -c 18 /dev/urandom | base64 | tr -d '/+=' >"$etc/db.password")
  password=$(<"$etc/db.password")
  mariadb -S "$db_socket" -e "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$password';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1'; FLUSH PRIVILEGES;"
  (umask 077 && cat >"$etc/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=$(hostname -s)
DbdAddr=127.0.0.1
SlurmUser=root
LogFile=$logs/slurmdbd.log
PidFile=$run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=3306
StorageUser=slurm
StoragePass=$password
StorageLoc=slurm_acct_db
EOF
  )
  if ! running "$run/slurmdbd.pid" slurmdbd; then say "starting slurmdbd"; /usr/sbin/slurmdbd; fi
  retry 60 sacctmgr -n list cluster
  local user; user=$(id -un)
  [[ -n $(sacctmgr -n -P list cluster "$cluster" format=cluster) ]] || sacctmgr -i add cluster "$cluster" >/dev/null
  [[ -n $(sacctmgr -n -P list account "$account" format=account) ]] \
    || sacctmgr -i add account "$account" Description=paintbench Organization=paintbench >/dev/null
  if [[ -z $(sacctmgr -n -P list assoc user="$user" account="$account" format=account) ]]; then
    sacctmgr -i add user "$user" Account="$account" >/dev/null
    sacctmgr -i modify user "$user" set DefaultAccount="$account" >/dev/null
  fi
}

start_scheduler() {
  if ! running "$run/slurmctld.pid" slurmctld; then
    say "starting slurmctld"; /usr/sbin/slurmctld
  elif $conf_changed; then
    say "slurm.conf changed: reconfiguring the running daemons"; scontrol reconfigure
  fi
  retry 30 scontrol ping
  if ! running "$run/slurmd.pid" slurmd; then say "starting slurmd"; /usr/sbin/slurmd; fi
  retry 30 sh -c "sinfo -h -N -o %t | grep -qE '^(idle|mix|alloc)'"
}

mkdir -p "$etc" "$run" "$logs" "$state/slurmctld" "$state/slurmd"
install_packages
start_munge
write_slurm_conf
start_accounting
start_scheduler
printf 'export SLURM_CONF=%q\n' "$SLURM_CONF" >"$state/env.sh"
say "cluster '$cluster' up: partition '$partition', account '$account', $(sinfo -h -o '%c CPUs, %m MB' | head -1)"
say "use it with: source $state/env.sh"
