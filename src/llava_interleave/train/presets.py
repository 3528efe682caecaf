"""Named component sizes for models trained from scratch.

The structure is the released one (SigLIP-style tower, mlp2x_gelu projector, Qwen2-style LLM, ChatML);
only the sizes shrink, so everything that works on a preset works on the 0.5B/7B checkpoints too.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from ..config import (
    InterleaveConfig,
    ProcessorConfig,
    TextConfig,
    VisionConfig,
    dataclass_from_dict,
)
from ..model.layouts import ORIGINAL_IMAGE_TOKEN
from .config import ConfigError, Preset

VISION: dict[Preset, VisionConfig] = {
    # 28 px, 7 px patches: 16 tokens per image; milliseconds per step, for tests
    "tiny": VisionConfig(image_size=28, patch_size=7, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2),
    # 64 px, 8 px patches: 64 tokens per image; the bundled model
    "nano": VisionConfig(image_size=64, patch_size=8, hidden_size=128, intermediate_size=256, num_layers=4, num_heads=4),
}
TEXT: dict[Preset, dict[str, int]] = {
    "tiny": {"hidden_size": 64, "intermediate_size": 128, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2},
    "nano": {"hidden_size": 256, "intermediate_size": 704, "num_layers": 6, "num_heads": 8, "num_kv_heads": 4},
}
CONTEXT: dict[Preset, int] = {"tiny": 4096, "nano": 4096}


def preset_config(name: Preset, tokenizer: Any, processor: dict[str, Any]) -> InterleaveConfig:
    """A new model's config: sizes from the preset, vocabulary from the tokenizer, anyres pinpoints scaled
    to the tower's crop size (the released 1x2, 2x1, 2x2, 3x1, 1x3 grids)."""
    if name not in VISION:
        raise ConfigError(f"unknown model.preset {name!r}; choose from {', '.join(VISION)}")
    vision = VISION[name]
    text = TextConfig(vocab_size=len(tokenizer), max_position_embeddings=CONTEXT[name], tie_word_embeddings=True,
                      **TEXT[name])
    side = vision.image_size
    pinpoints = tuple((w * side, h * side) for w, h in ((1, 2), (2, 1), (2, 2), (3, 1), (1, 3)))
    token = tokenizer.convert_tokens_to_ids
    return InterleaveConfig(
        vision=vision, text=text, processor=processor_config({"grid_pinpoints": pinpoints, **processor}),
        image_token_id=ORIGINAL_IMAGE_TOKEN,
        eos_token_id=token("<|im_end|>"), pad_token_id=token("<|endoftext|>"), max_length=CONTEXT[name], layout="original",
    )


def processor_config(settings: dict[str, Any], base: ProcessorConfig | None = None) -> ProcessorConfig:
    """`model.processor` overrides -> ProcessorConfig; an unknown key is an error, not a silent no-op."""
    known = {f.name for f in fields(ProcessorConfig)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ConfigError(f"unknown key model.processor.{unknown[0]}; valid keys: {', '.join(sorted(known))}")
    current = {f.name: getattr(base or ProcessorConfig(), f.name) for f in fields(ProcessorConfig)}
    return dataclass_from_dict(ProcessorConfig, {**current, **settings})
