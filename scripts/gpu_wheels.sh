#!/usr/bin/env bash
# Wheels of the small pure or self-contained packages a bare GPU machine may lack (no network there), for Python
# 3.12 on x86-64 Linux, into .whl/ (ignored by git; scripts/gpu_check.sh installs them). About 20 MB.
# Usage: bash scripts/gpu_wheels.sh [PYTHON_VERSION]      (default 3.12)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
version="${1:-3.12}"
mkdir -p "$root/.whl"
platforms=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64; do
  platforms+=(--platform "$tag")
done
python3 -m pip download --no-deps --only-binary=:all: --python-version "$version" --implementation cp \
  "${platforms[@]}" -d "$root/.whl" "imagecodecs>=2024.12.30"
du -sh "$root/.whl"
