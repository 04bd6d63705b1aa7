#!/usr/bin/env bash
# Creates .venv and installs latentlens with everything its demo and tests need.
# Idempotent: a second run only checks. Usage: bash scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
PY=.venv/bin/python
"$PY" -m pip install --quiet --upgrade pip >/dev/null
# torch: on a machine without an NVIDIA GPU take the CPU build (a plain "torch" pulls a multi-GB CUDA build).
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
    if command -v nvidia-smi >/dev/null 2>&1; then
        "$PY" -m pip install --quiet torch
    else
        "$PY" -m pip install --quiet "torch==2.13.0" \
            || "$PY" -m pip install --quiet torch --index-url https://download.pytorch.org/whl/cpu
    fi
fi
"$PY" -m pip install --quiet -c constraints.txt -e ".[test,ray]"

# Chromium + chromedriver for the dashboard's browser tests (Debian packages; never a downloaded browser).
if { [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; } && command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    if [ "$(id -u)" != "0" ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; fi
    { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium chromium-driver >/dev/null; } \
        || echo "setup.sh: could not install chromium/chromium-driver; the dashboard's browser tests will be skipped." >&2
fi
