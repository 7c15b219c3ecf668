#!/usr/bin/env bash
# Set up (idempotently) the pinned OpenMMLab stack and actnn_mm in a virtual env inside the repo.
#
#   bash tools/setup_env.sh            # creates .venv/ if needed, then installs what is missing
#
# Environment:
#   ACTNN_MM_VENV      where the virtual env lives           (default: <repo>/.venv)
#   ACTNN_MM_CACHE     cache outside the repo for built wheels (default: ~/.cache/actnn_mm)
#   ACTNN_MM_PYTHON    interpreter for a new venv            (default: python3.11, else python3)
#   ACTNN_MM_WITH_CUDA build the CUDA kernels of actnn_mm (and mmcv's CUDA ops) too (default: 0)
#
# mmcv 2.1.0 is the newest mmcv that mmdet 3.3 / mmseg 1.2 accept and PyPI has only its source.
# It does not build against torch 2.14 as published: its setup.py imports pkg_resources (needs
# setuptools < 81) and forces -std=c++17 while torch 2.14's headers need C++20. We build it once with
# both fixed and keep the wheel in $ACTNN_MM_CACHE, keyed by mmcv/torch/python versions and CUDA-ness.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${ACTNN_MM_VENV:-$ROOT/.venv}"
CACHE="${ACTNN_MM_CACHE:-$HOME/.cache/actnn_mm}"
STAMP="$VENV/.actnn_mm_setup_done"
log() { printf '[setup %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

# The stamp records what the finished set-up was made from; any change to the pins redoes it.
pins_hash() {
  cat "$ROOT/requirements/stack.txt" "$ROOT/requirements/mmcv.txt" "$ROOT/requirements/dev.txt" \
      "$ROOT/setup.py" "$ROOT/pyproject.toml" "$ROOT/tools/setup_env.sh" | sha256sum | cut -c1-16
}
want="$(pins_hash)"
# The compiled extension is rebuilt whenever its sources change (cheap check: a hash of csrc/).
ext_hash() { find "$ROOT/csrc" -type f \( -name '*.cpp' -o -name '*.cu' -o -name '*.h' -o -name '*.cuh' \) \
  -print0 2>/dev/null | sort -z | xargs -0 cat 2>/dev/null | sha256sum | cut -c1-16; }
build_ext() {
  (cd "$ROOT" && FORCE_CUDA="${ACTNN_MM_WITH_CUDA:-0}" \
     ACTNN_MM_NO_CUDA="$([[ ${ACTNN_MM_WITH_CUDA:-0} == 1 ]] && echo 0 || echo 1)" \
     "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-build-isolation \
     --no-deps -e .)
  ext_hash > "$VENV/.actnn_mm_ext_hash"
}
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
  # Finished before: rebuild the extension only if csrc/ changed or it does not import.
  if [[ "$(cat "$VENV/.actnn_mm_ext_hash" 2>/dev/null)" == "$(ext_hash)" ]] && \
     "$VENV/bin/python" -c 'import actnn_mm._ext_loader as l; assert l.is_built()' >/dev/null 2>&1; then
    log "environment ready ($VENV)"
    exit 0
  fi
  log "csrc/ changed or extension missing: rebuilding actnn_mm's extension"
  build_ext
  log "environment ready ($VENV)"
  exit 0
fi

# --- 1. the virtual env -------------------------------------------------------------------
if [[ ! -x "$VENV/bin/python" ]]; then
  PY="${ACTNN_MM_PYTHON:-}"
  if [[ -z "$PY" ]]; then PY="$(command -v python3.11 || command -v python3)"; fi
  log "creating virtual env $VENV with $PY"
  "$PY" -m venv "$VENV"
fi
PYV="$VENV/bin/python"
# This machine's pip config names local index folders that may be absent: drop those warnings.
pip_quiet() { "$PYV" -m pip --disable-pip-version-check "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }
PIP=(pip_quiet)
log "python: $("$PYV" --version)"

# --- 2. torch and the build tools ---------------------------------------------------------
pin() { grep -E "^$1==" "$ROOT/requirements/stack.txt" | head -1; }
log "installing build tools and torch ($(pin torch), $(pin torchvision))"
"${PIP[@]}" install -q "pip>=23.2" "setuptools>=77,<81" wheel "$(pin ninja)" \
  "$(grep -E '^numpy' "$ROOT/requirements/stack.txt")"
"${PIP[@]}" install -q "$(pin torch)" "$(pin torchvision)"
# opencv headless first: mmcv's setup.py then records the headless variant in its wheel.
"${PIP[@]}" install -q "$(pin opencv-python-headless)"

# --- 3. mmcv with ops, from source, cached outside the repo -------------------------------
MMCV_REQ="$(grep -E '^mmcv==' "$ROOT/requirements/mmcv.txt")"
MMCV_VER="${MMCV_REQ#mmcv==}"
TORCH_VER="$("$PYV" -c 'import torch; print(torch.__version__.split("+")[0])')"
PY_TAG="$("$PYV" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')"
# mmcv gets CUDA ops when our kernels do (a GPU machine), unless MMCV_WITH_CUDA says otherwise.
MMCV_CUDA="${MMCV_WITH_CUDA:-${ACTNN_MM_WITH_CUDA:-0}}"
KEY="mmcv-${MMCV_VER}_torch-${TORCH_VER}_${PY_TAG}_$([[ $MMCV_CUDA == 1 ]] && echo cuda || echo cpu)"
WHEEL_DIR="$CACHE/wheels/$KEY"
if "$PYV" -c "import mmcv, mmcv.ops; assert mmcv.__version__ == '$MMCV_VER'" >/dev/null 2>&1; then
  log "mmcv $MMCV_VER with ops already installed"
else
  if ! ls "$WHEEL_DIR"/mmcv-*.whl >/dev/null 2>&1; then
    log "no cached mmcv wheel in $WHEEL_DIR: building mmcv $MMCV_VER with ops (about 22 min on 2 cores)"
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' EXIT
    # pip runs mmcv's setup.py for metadata, which imports torch: reuse this env (no isolation).
    "${PIP[@]}" download -q --no-deps --no-binary mmcv --no-build-isolation -d "$work" "$MMCV_REQ"
    tar -xzf "$work"/mmcv-"$MMCV_VER".tar.gz -C "$work"
    src="$work/mmcv-$MMCV_VER"
    # torch >= 2.5 headers need C++20; mmcv hard-codes C++17 for its extension.
    sed -i 's/-std=c++17/-std=c++20/g; s/std=c++14/std=c++20/g' "$src/setup.py"
    grep -q 'c++20' "$src/setup.py" || { echo "setup: mmcv's setup.py changed; C++ flag not found" >&2; exit 1; }
    jobs="${MAX_JOBS:-$(nproc)}"
    (
      cd "$src"
      export MMCV_WITH_OPS=1 MAX_JOBS="$jobs" FORCE_CUDA="$MMCV_CUDA"
      [[ $MMCV_CUDA == 1 ]] || export CUDA_VISIBLE_DEVICES=""
      # Progress: ninja prints [k/N] per object; show one line in ~30s so nobody thinks it hung.
      "$PYV" setup.py -q bdist_wheel -d "$work/dist" 2>&1 | tee "$work/build.log" \
        | grep --line-buffered -E '^\[[0-9]+/[0-9]+\]' | awk '{print "[mmcv build] " $1; fflush()}'
    )
    ls "$work"/dist/mmcv-*.whl >/dev/null 2>&1 || { tail -50 "$work/build.log" >&2; exit 1; }
    mkdir -p "$WHEEL_DIR"
    cp "$work"/dist/mmcv-*.whl "$WHEEL_DIR/"
    log "cached $(ls "$WHEEL_DIR")"
  else
    log "reusing cached mmcv wheel $(ls "$WHEEL_DIR")"
  fi
  "${PIP[@]}" install -q --no-deps "$WHEEL_DIR"/mmcv-*.whl
fi

# --- 4. the rest of the stack and actnn_mm ------------------------------------------------
log "installing the pinned OpenMMLab stack"
# mmcv's own requirements come along here, with mmengine, so pip sees them all at once.
"${PIP[@]}" install -q -r "$ROOT/requirements/stack.txt" addict packaging Pillow pyyaml yapf
log "installing the pinned lint tools (ruff, clang-format)"
"${PIP[@]}" install -q -r "$ROOT/requirements/dev.txt"
log "building actnn_mm (CPU kernels$([[ ${ACTNN_MM_WITH_CUDA:-0} == 1 ]] && echo ' + CUDA'))"
build_ext
"$PYV" -c 'import mmcv.ops, mmdet, mmseg, mmpretrain, actnn_mm; print("stack ok: mmcv", mmcv.__version__)'
echo "$want" > "$STAMP"
log "environment ready ($VENV)"
