#!/usr/bin/env bash
# Re-make the bundled model from nothing: its data, both training stages, and its held-out scores.
#   scripts/train_bundled.sh [WORK_DIR] [train overrides...]
# WORK_DIR (default .) receives synth-align/, synth/, runs/nano-align/, runs/nano/ and heldout/; the model
# is WORK_DIR/runs/nano/final (copy it to src/llava_interleave/assets/nano to ship it). Overrides go to both
# stages; N_ALIGN, N_TASKS and N_HELDOUT shrink the data (the recipe test runs a few steps on a little).
# About 35 minutes on 2 CPU cores.
set -euo pipefail
work=$(realpath -m "${1:-.}")
shift || true
cd "$(dirname "$0")/.."
tasks=SynthImageColour,SynthColourChange,SynthSceneSide,SynthDetail,SynthName
llava-interleave data synth --out "$work/synth-align" --n "${N_ALIGN:-4800}" --seed 2 --bench-n 60 --tasks SynthName
llava-interleave train recipes/nano-align.yaml data.path="$work/synth-align/train.json" out_dir="$work/runs/nano-align" "$@"
llava-interleave data synth --out "$work/synth" --n "${N_TASKS:-4000}" --seed 0 --bench-n 150 --tasks "$tasks"
llava-interleave train recipes/nano.yaml model.checkpoint="$work/runs/nano-align/final" data.path="$work/synth/train.json" \
  out_dir="$work/runs/nano" "$@"
# held out: a seed no stage trained on, both scoring protocols
llava-interleave data synth --out "$work/heldout" --n 0 --seed 4242 --bench-n "${N_HELDOUT:-500}" --tasks "$tasks"
for protocol in paper harness; do
  llava-interleave eval --model "$work/runs/nano/final" --bench "$work/heldout/bench.json" --out "$work/heldout/$protocol" \
    --protocol "$protocol" --batch-size 16
done
