#!/usr/bin/env bash
# Create .venv and install the project. Without an NVIDIA GPU, install the CPU build of PyTorch first so
# that pip does not pull a multi-GB CUDA build; with one, pip's default (CUDA) torch is used.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
. .venv/bin/activate
if ! python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
    pip install -q "torch>=2.4"
  else
    pip install -q torch==2.13.0 || pip install -q torch --index-url https://download.pytorch.org/whl/cpu
  fi
fi
stamp=".venv/.installed${extras}"
want="$(sha256sum < pyproject.toml)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  pip install -q -e ".${extras}"
  echo "$want" > "$stamp"
fi
