"""Frozen configs whose defaults are the released LLaVA-NeXT-Interleave 0.5B model.

Each component gets its own small dataclass and never sees the others; `InterleaveConfig` composes
them. Derived numbers (tokens per image = (384 // 14)^2 = 729) are properties, never stored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal

ImageAspect = Literal["squash", "pad", "anyres"]
MultiAspect = Literal["pad", "squash"]
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

    def __post_init__(self) -> None:
        _check("vision", self, sizes=("image_size", "patch_size", "hidden_size", "intermediate_size", "num_heads"),
               counts=("num_layers",), positives=("layer_norm_eps",))
        _require("vision", [
            (self.hidden_size % self.num_heads == 0, f"num_heads {self.num_heads} does not divide hidden_size {self.hidden_size}"),
            (self.patch_size <= self.image_size, f"patch_size {self.patch_size} is larger than image_size {self.image_size}"),
        ])

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

    def __post_init__(self) -> None:
        _check("text", self, sizes=("vocab_size", "hidden_size", "intermediate_size", "num_heads", "num_kv_heads",
                                    "max_position_embeddings"), counts=("num_layers",), positives=("rope_theta", "rms_norm_eps"))
        heads, kv, width = self.num_heads, self.num_kv_heads, self.hidden_size
        _require("text", [
            (width % heads == 0 and width // heads % 2 == 0,
             f"hidden_size {width} / num_heads {heads} must be a whole, even head size (rotary embeddings)"),
            (heads % kv == 0, f"num_kv_heads {kv} does not divide num_heads {heads}"),
        ])


@dataclass(frozen=True)
class ProcessorConfig:
    """How pixels and visual tokens are prepared; together these choose the checkpoint's "layout".

    image_aspect: "squash" (resize to the tower's square size), "pad" (pad to square with the mean colour
        first), "anyres" (a lone image is cut into crops chosen from `grid_pinpoints`).
    multi_aspect: with "anyres", how every image that is not cut into crops (one of several images, a
        video frame, a view) is made square: "pad", as the released checkpoints were trained and are
        evaluated, or "squash", as the bundled model was trained.
    patch_merge: "flat" (729 tokens per image) or "spatial_unpad" (a learned newline after each image,
        and after each row of an anyres grid).
    """

    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_aspect: ImageAspect = "anyres"
    multi_aspect: MultiAspect = "pad"
    patch_merge: PatchMerge = "spatial_unpad"
    grid_pinpoints: tuple[tuple[int, int], ...] = DEFAULT_PINPOINTS
    video_pooling: VideoPooling = "none"
    num_frames: int = 16

    def __post_init__(self) -> None:
        _check("processor", self, sizes=("num_frames",))

    @property
    def uses_newline(self) -> bool:
        return self.patch_merge == "spatial_unpad"

    @property
    def whole_image_aspect(self) -> MultiAspect:
        """How an image that is not cut into crops is made square: by `image_aspect`, or with anyres by
        `multi_aspect`."""
        return self.multi_aspect if self.image_aspect == "anyres" else self.image_aspect

    @property
    def uses_anyres(self) -> bool:
        """Whether a lone image is cut into crops (the multi-patch scenario) rather than taken whole."""
        return self.image_aspect == "anyres"


@dataclass(frozen=True)
class InterleaveConfig:
    """The whole model. `layout` names the on-disk checkpoint layout it was loaded from or is saved as."""

    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    processor: ProcessorConfig = field(default_factory=ProcessorConfig)
    image_token_id: int = 151646
    eos_token_id: int = 151645
    pad_token_id: int = 151643
    # generation_config.json's eos_token_id: more ids that end an answer ([151645, 151643] in the original releases)
    stop_token_ids: tuple[int, ...] = ()
    max_length: int = 32768
    layout: Literal["hf", "original"] = "original"

    def __post_init__(self) -> None:
        _check("model", self, sizes=("max_length",))

    def with_overrides(self, **processor_overrides: Any) -> InterleaveConfig:
        """A copy with processor settings replaced (e.g. video_pooling="average")."""
        return replace(self, processor=replace(self.processor, **processor_overrides))


def _check(section: str, config: Any, sizes: tuple[str, ...] = (), counts: tuple[str, ...] = (),
           positives: tuple[str, ...] = ()) -> None:
    """`sizes` are whole numbers >= 1, `counts` (layers) whole numbers >= 0, `positives` (epsilons, rope
    theta) finite numbers > 0.

    Checked as a config is built, so a checkpoint's config.json with a negative size is refused in one line
    instead of failing deep inside torch when the first tensor is allocated."""
    v = {name: getattr(config, name) for name in (*sizes, *counts, *positives)}
    _require(section, [
        *[(_whole(v[n], 1), f"{n} must be a whole number >= 1, got {v[n]!r}") for n in sizes],
        *[(_whole(v[n], 0), f"{n} must be a whole number >= 0, got {v[n]!r}") for n in counts],
        *[(_positive(v[n]), f"{n} must be a number > 0, got {v[n]!r}") for n in positives],
    ])


def _require(section: str, rules: list[tuple[bool, str]]) -> None:
    broken = [text for ok, text in rules if not ok]
    if broken:
        raise ValueError(f"impossible {section} config: {'; '.join(broken)}")


def _whole(value: Any, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def dataclass_from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Build a frozen config from a dict, ignoring unknown keys and turning lists into tuples."""
    known = {f.name for f in fields(cls)}

    def freeze(value: Any) -> Any:
        return tuple(freeze(v) for v in value) if isinstance(value, list) else value

    return cls(**{k: freeze(v) for k, v in data.items() if k in known})
