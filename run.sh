#!/usr/bin/env bash
# Set up (first time only) and run llava-interleave. With no arguments: answer a question about the
# example images with the default model.
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup.sh >&2
. .venv/bin/activate
if [ "$#" -eq 0 ]; then
  model=.cache/tiny-random
  [ -f "$model/config.json" ] || python -m llava_interleave.testing "$model" >&2
  set -- generate --model "$model" --image examples/images/left.png --image examples/images/right.png \
    --prompt "What is different between <image> and <image>?" --max-new-tokens 24
fi
exec llava-interleave "$@"
