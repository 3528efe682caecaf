"""Frozen configs whose defaults are the released LLaVA-NeXT-Interleave 0.5B model.

Each component gets its own small dataclass and never sees the others; `InterleaveConfig` composes
them. Derived numbers (tokens per image = (384 // 14)^2 = 729) are properties, never stored.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal

ImageAspect = Literal["squash", "pad", "anyres"]
PatchMerge = Literal["flat", "spatial_unpad"]
VideoPooling = Literal["none", "average", "bilinear"]

DEFAULT_PINPOINTS: tuple[tuple[int, int], ...] = ((384, 768), (768, 384), (768, 768), (1152, 384), (384, 1152))


@dataclass(frozen=True)
class VisionConfig:
    """SigLIP so400m as used by the released models: 27 pretrained layers, the last one dropped."""

    image_size: int = 384
    patch_size: int = 14
    hidden_size: int = 1152
    intermediate_size: int = 4304
    num_layers: int = 26
    num_heads: int = 16
    layer_norm_eps: float = 1e-6
    hidden_act: str = "gelu_pytorch_tanh"

    @property
    def grid(self) -> int:
        """Patches per side: 384 // 14 = 27."""
        return self.image_size // self.patch_size

    @property
    def tokens_per_image(self) -> int:
        return self.grid**2


@dataclass(frozen=True)
class TextConfig:
    """Qwen1.5-0.5B-Chat, the language model of the 0.5B release."""

    vocab_size: int = 151936
    hidden_size: int = 1024
    intermediate_size: int = 2816
    num_layers: int = 24
    num_heads: int = 16
    num_kv_heads: int = 16
    rope_theta: float = 1_000_000.0
    max_position_embeddings: int = 32768
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = True


@dataclass(frozen=True)
class ProcessorConfig:
    """How pixels and visual tokens are prepared; together these choose the checkpoint's "layout".

    image_aspect: "squash" (resize to the tower's square size), "pad" (pad to square with the mean colour
        first), "anyres" (a lone image is cut into crops chosen from `grid_pinpoints`).
    patch_merge: "flat" (729 tokens per image) or "spatial_unpad" (a learned newline after each image,
        and after each row of an anyres grid).
    """

    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_aspect: ImageAspect = "anyres"
    patch_merge: PatchMerge = "spatial_unpad"
    grid_pinpoints: tuple[tuple[int, int], ...] = DEFAULT_PINPOINTS
    video_pooling: VideoPooling = "none"
    num_frames: int = 16

    @property
    def uses_newline(self) -> bool:
        return self.patch_merge == "spatial_unpad"


@dataclass(frozen=True)
class InterleaveConfig:
    """The whole model. `layout` names the on-disk checkpoint layout it was loaded from or is saved as."""

    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    processor: ProcessorConfig = field(default_factory=ProcessorConfig)
    image_token_id: int = 151646
    eos_token_id: int = 151645
    pad_token_id: int = 151643
    max_length: int = 32768
    layout: Literal["hf", "original"] = "original"

    def with_overrides(self, **processor_overrides: Any) -> InterleaveConfig:
        """A copy with processor settings replaced (e.g. video_pooling="average")."""
        return replace(self, processor=replace(self.processor, **processor_overrides))


def dataclass_from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Build a frozen config from a dict, ignoring unknown keys and turning lists into tuples."""
    known = {f.name for f in fields(cls)}

    def freeze(value: Any) -> Any:
        return tuple(freeze(v) for v in value) if isinstance(value, list) else value

    return cls(**{k: freeze(v) for k, v in data.items() if k in known})
