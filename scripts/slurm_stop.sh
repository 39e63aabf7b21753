#!/usr/bin/env bash
# Stop the daemons scripts/slurm_start.sh started, by the PIDs it recorded (never by name, so a site's own
# SLURM on the same machine is left alone). The state folder stays; `slurm_start.sh` reuses it.
#   PAINTBENCH_SLURM_DIR  state folder (default /tmp/paintbench-slurm); --purge also deletes it.
set -euo pipefail

state=${PAINTBENCH_SLURM_DIR:-/tmp/paintbench-slurm}
run=$state/run

# Reverse start order; each entry is PIDFILE:NAME, and a PID is signalled only if it still runs under NAME.
for entry in slurmd.pid:slurmd slurmctld.pid:slurmctld slurmdbd.pid:slurmdbd mariadb.pid:mariadbd munge/munged.pid:munged; do
  file=$run/${entry%%:*} name=${entry##*:}
  [[ -s $file ]] || continue
  pid=$(<"$file")
  if [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$name" ]]; then
    echo "slurm_stop: stopping $name ($pid)"
    kill "$pid"
    for _ in $(seq 30); do [[ -d /proc/$pid ]] || break; sleep 1; done
    [[ -d /proc/$pid ]] && { echo "slurm_stop: $name ($pid) ignored SIGTERM; killing"; kill -9 "$pid"; }
  fi
  rm -f "$file"
done
if [[ "${1:-}" == "--purge" ]]; then rm -rf "$state"; echo "slurm_stop: removed $state"; fi
