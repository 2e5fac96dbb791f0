#!/usr/bin/env bash
# Sets up a fresh machine and runs the whole test suite (the README's test command; CI runs it too).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup_env.sh
export DS_ACCELERATOR=cpu
bash tools/setup_multinode.sh
exec python3 -m pytest tests -q --durations=15 "$@"
