#!/usr/bin/env bash
# The prepared GPU check (scripts/gpu_check.py) on a GPU machine that has the driver, Python and torch but no
# network: the small packages it lacks come from wheels carried in .whl/ (scripts/gpu_wheels.sh downloads them).
# Usage: bash scripts/gpu_check.sh --out DIR        (at most 8 minutes on one GPU; every figure in DIR)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python="${PYTHON:-python3}"
if ! "$python" -c "import imagecodecs" 2>/dev/null; then
  if compgen -G "$root/.whl/*.whl" >/dev/null; then
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/gpu_site \
      "$root"/.whl/*.whl
    export PYTHONPATH="/tmp/gpu_site${PYTHONPATH:+:$PYTHONPATH}"
  else
    echo "gpu_check: imagecodecs is missing and .whl/ holds no wheels (run scripts/gpu_wheels.sh where pip works)" >&2
  fi
fi
export PYTHONUNBUFFERED=1 PYTHONPATH="$root/src${PYTHONPATH:+:$PYTHONPATH}"
exec timeout 480 "$python" "$root/scripts/gpu_check.py" "$@"
