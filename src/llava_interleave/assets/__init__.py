"""Files shipped inside the package: the bundled model and the demo's example inputs.

They live in the package (not beside it) so that `demo`, and every other command run without `--model`,
works from any folder and from an installed wheel, with no download.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import CheckpointError

HERE = Path(__file__).resolve().parent
BUNDLED_MODEL = HERE / "nano"
DEMO_BENCH = HERE / "demo" / "bench.json"
MODEL_HELP = "checkpoint directory (either layout) or hub id; default: the bundled model"  # every --model option


def bundled_model() -> Path:
    """The bundled model's directory, or a clear error when this copy of the package lacks it."""
    if not (BUNDLED_MODEL / "config.json").is_file():
        raise CheckpointError(f"the bundled model is missing from {BUNDLED_MODEL}; pass --model DIR")
    return BUNDLED_MODEL
