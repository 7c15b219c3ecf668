#!/usr/bin/env bash
# README quick start, command 2: set up if needed, then run the whole test suite.
# Extra args go to pytest (e.g. `-m "not slow"`, `-k kernels`, `tests/engine`).
# Tests that need a GPU carry the `cuda` marker and are reported as skipped without one.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/tools/setup_env.sh"
cd "$ROOT"
exec "${ACTNN_MM_VENV:-$ROOT/.venv}/bin/python" -m pytest -ra "$@"
