#!/usr/bin/env bash
# One-command, idempotent setup of the two environments the pipeline needs:
#   .venvs/paintbench     snakemake, torch/timm, pandas/pyarrow, statsmodels, ... + this package (editable)
#   .venvs/cellprofiler   CellProfiler 5 headless (numpy<2 / scipy<1.11 pins clash with the analysis stack)
# and, for the test suite only, Debian's chromium (headless rendering of the HTML report) when run as root.
# Re-running is cheap: an environment whose lock file has not changed since it was built is left alone.
# Usage: bash scripts/setup.sh [--analysis-only]
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venvs="${PAINTBENCH_VENVS:-$root/.venvs}"
python="${PYTHON:-python3}"
analysis_only=false
[[ "${1:-}" == "--analysis-only" ]] && analysis_only=true

"$python" -c 'import sys; assert sys.version_info[:2] == (3, 11), f"paintbench needs Python 3.11, found {sys.version.split()[0]}"' \
  || { echo "setup: set PYTHON to a Python 3.11 interpreter" >&2; exit 1; }

# build_env NAME LOCKFILE PIP_ARGS...: (re)create venvs/NAME unless its stamp matches the lock file.
build_env() {
  local name=$1 lock=$2; shift 2
  local env="$venvs/$name" stamp="$venvs/$name/.paintbench-lock.sha256"
  local want; want=$(sha256sum "$lock" | cut -d' ' -f1)
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    echo "setup: $name environment up to date ($env)"
    return
  fi
  echo "setup: building $name environment in $env (from $lock)"
  rm -rf "$env"
  "$python" -m venv "$env"
  "$env/bin/python" -m pip install --quiet --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
  "$env/bin/python" -m pip install --quiet "$@" -r "$lock" 2>&1 | grep -v "^WARNING: Location" || true
  "$env/bin/python" -m pip check >/dev/null 2>&1 || echo "setup: note: pip check reports conflicts in $name (see pip check)"
  echo "$want" > "$stamp"
}

build_env paintbench "$root/envs/paintbench.lock.txt"
# The package itself is editable so a `git pull` needs no reinstall; its dependencies are the lock's.
"$venvs/paintbench/bin/python" -m pip install --quiet --no-deps --no-build-isolation -e "$root" 2>&1 | grep -v "^WARNING: Location" || true
"$venvs/paintbench/bin/python" -c "import paintbench, snakemake, torch, timm" \
  || { echo "setup: the paintbench environment is broken" >&2; rm -f "$venvs/paintbench/.paintbench-lock.sha256"; exit 1; }

if ! $analysis_only; then
  # --no-deps: the lock list is complete; CellProfiler's own metadata would pull wxPython and mysqlclient.
  build_env cellprofiler "$root/envs/cellprofiler.lock.txt" --no-deps
  MPLCONFIGDIR="${TMPDIR:-/tmp}/paintbench-mpl" "$venvs/cellprofiler/bin/python" -c "import cellprofiler_core, cellprofiler" \
    || { echo "setup: the CellProfiler environment is broken" >&2; rm -f "$venvs/cellprofiler/.paintbench-lock.sha256"; exit 1; }
fi
# Headless Chromium renders reports/index.html in the test suite and Debian's chromium-driver lets Selenium use the
# report's target look-up (neither is needed to run the pipeline).
if ! command -v chromedriver >/dev/null 2>&1 \
   || { ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; }; then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing Debian's chromium and chromium-driver (for the report's browser tests)"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium \
        chromium-driver; } >/dev/null || echo "setup: note: could not install chromium; tests/test_report.py will say so"
  else
    echo "setup: note: no chromium/chromedriver found; install them (apt-get install chromium chromium-driver) to" \
         "run the report's browser tests"
  fi
fi
echo "setup: done. Activate with: source $venvs/paintbench/bin/activate"
