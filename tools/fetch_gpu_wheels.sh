#!/usr/bin/env bash
# Download the pure-Python wheels tools/gpu_check.sh installs on the GPU machine (Python 3.12,
# its own torch/torchvision/numpy/matplotlib/pytest/hypothesis, no network), into .whl/ (or $1).
# .whl/ is git-ignored: copy it to the GPU machine with the checkout.
#
#   bash tools/fetch_gpu_wheels.sh [DEST]
#
# Versions are those of the pinned development stack (requirements/stack.txt, .venv).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
DEST="${1:-.whl}"
PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
# mmengine and the requirements the GPU image lacks (it has numpy, pyyaml, rich, matplotlib,
# opencv-python-headless, pytest, hypothesis, torchvision). tomli is only needed below 3.11.
PKGS=(mmengine==0.10.7 addict==2.4.0 termcolor==3.3.0 yapf==0.43.0 platformdirs==4.14.8)
mkdir -p "$DEST"
rm -f "$DEST"/*.whl
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform any -d "$DEST" "${PKGS[@]}"
echo "wheels in $DEST:"
ls -l "$DEST"
du -sh "$DEST"
