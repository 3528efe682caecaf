#!/usr/bin/env bash
# Set up (first time only) and run llava-interleave. With no arguments: the demo, the bundled model
# answering held-out examples of all four scenarios, each answer next to the true one.
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup.sh >&2
. .venv/bin/activate
if [ "$#" -eq 0 ]; then
  set -- demo
fi
exec llava-interleave "$@"
