#!/usr/bin/env bash
# Set up (first time only) and run llava-interleave. With no arguments: the demo, a model answering one
# shipped held-out example of each synthetic task (until the bundled trained model lands, a tiny random
# checkpoint built on the spot, so the answers are noise).
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup.sh >&2
. .venv/bin/activate
if [ "$#" -eq 0 ]; then
  model=.cache/tiny-random
  [ -f "$model/config.json" ] || python -m llava_interleave.testing "$model" >&2
  set -- demo --model "$model" --max-new-tokens 24
fi
exec llava-interleave "$@"
