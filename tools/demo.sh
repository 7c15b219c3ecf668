#!/usr/bin/env bash
# README quick start, command 1: set up if needed, then run the embedded demo (tools/demo.py):
# synthetic COCO data -> ActNN Faster R-CNN R50-FPN trained a few iterations on CPU -> bbox mAP
# and the bytes of saved activations that compression removed. Extra args go to tools/demo.py.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/tools/setup_env.sh"
cd "$ROOT"
exec "${ACTNN_MM_VENV:-$ROOT/.venv}/bin/python" tools/demo.py "$@"
