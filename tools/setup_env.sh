#!/usr/bin/env bash
# Installs what megatron-ds needs into the current python, from nothing. Safe to run again (a no-op then).
# On a machine without torch it installs the CPU build pinned below, so that no CUDA wheels are pulled;
# on a GPU cluster install the torch build matching your CUDA first and this script keeps it.
set -euo pipefail
export PIP_ROOT_USER_ACTION=ignore
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
CPU_TORCH=${CPU_TORCH:-torch==2.13.0}

if ! "$PYTHON" -c "import torch" 2>/dev/null; then
  "$PYTHON" -m pip install --quiet "$CPU_TORCH"
fi
"$PYTHON" -m pip install --quiet -r requirements.txt
"$PYTHON" -m pip install --quiet --no-deps --no-build-isolation -e .
