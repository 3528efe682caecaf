"""The two on-disk checkpoint layouts, as pure translations of configs and state dicts.

hf       : `model_type: llava` (LlavaForConditionalGeneration). Weights `vision_tower.*`,
           `multi_modal_projector.linear_1/2`, `language_model.*`, `lm_head`; legacy files nest the LM as
           `language_model.model.*` and the tower as `vision_tower.vision_model.*`, newer ones prefix `model.`.
           Always flat: 729 tokens per image, no newline, no anyres.
original : `model_type: llava_qwen`. A Qwen2 config plus `mm_*` keys; weights `model.layers.*`,
           `model.mm_projector.0/2`, `model.vision_tower.vision_tower.vision_model.*`, `model.image_newline`.
           The tower is stored as pretrained (27 layers for so400m) or already cut; we keep all but the last.
Internal names are those of `LlavaInterleave.state_dict()`.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from transformers import Qwen2Config, SiglipVisionConfig

from ..config import InterleaveConfig, ProcessorConfig, TextConfig, VisionConfig, dataclass_from_dict
from ..errors import CheckpointError

StateDict = dict[str, torch.Tensor]
ORIGINAL_IMAGE_TOKEN = -200  # the original code's IMAGE_TOKEN_INDEX: never a real vocabulary id
EXTRA_KEY = "llava_interleave"  # our settings that neither layout has a key for (video pooling, frames)
# The original code's image_aspect_ratio for squashing: its training default; any value but anyres, pad, highres
# and crop_split goes straight to the image processor, which squashes. (An absent key is no option: its
# `process_images` then fails on `"anyres_max" in None`.)
ORIGINAL_SQUASH = "square"

_HF_READ = [
    (r"^model\.(vision_tower|multi_modal_projector|language_model)\.", r"\1."),
    (r"^language_model\.model\.", "language_model."),
    (r"^language_model\.lm_head\.", "lm_head."),
    (r"^vision_tower\.vision_model\.", "vision_tower."),
    (r"^multi_modal_projector\.", "projector."),
]
_ORIGINAL_READ = [
    (r"^model\.vision_tower\.vision_tower\.vision_model\.", "vision_tower."),
    (r"^model\.mm_projector\.0\.", "projector.linear_1."),
    (r"^model\.mm_projector\.2\.", "projector.linear_2."),
    (r"^model\.image_newline$", "image_newline"),
    (r"^model\.", "language_model."),
]
_HF_WRITE = [
    (r"^vision_tower\.", "vision_tower.vision_model."),
    (r"^projector\.", "multi_modal_projector."),
    (r"^language_model\.", "language_model.model."),
    (r"^lm_head\.", "language_model.lm_head."),
]
_ORIGINAL_WRITE = [
    (r"^vision_tower\.", "model.vision_tower.vision_tower.vision_model."),
    (r"^projector\.linear_1\.", "model.mm_projector.0."),
    (r"^projector\.linear_2\.", "model.mm_projector.2."),
    (r"^image_newline$", "model.image_newline"),
    (r"^language_model\.", "model."),
]
_LAYER = re.compile(r"^vision_tower\.encoder\.layers\.(\d+)\.")


def detect_layout(config_json: dict[str, Any]) -> str:
    model_type = config_json.get("model_type")
    if model_type == "llava":
        return "hf"
    if model_type == "llava_qwen" or "mm_projector_type" in config_json:
        return "original"
    raise CheckpointError(f"config.json has model_type {model_type!r}: neither 'llava' (hf) nor 'llava_qwen' (original)")


def _rename(name: str, rules: list[tuple[str, str]]) -> str:
    for pattern, replacement in rules:
        name, hits = re.subn(pattern, replacement, name)
        if hits and rules is not _HF_READ:
            return name
    return name


def _keep_tensor(name: str, kept_layers: int) -> bool:
    if not name.startswith("vision_tower."):
        return True
    if name.startswith(("vision_tower.post_layernorm.", "vision_tower.head.")):
        return False  # the feature is taken before them
    layer = _LAYER.match(name)
    return layer is None or int(layer.group(1)) < kept_layers


def to_internal(state: StateDict, layout: str, kept_layers: int) -> StateDict:
    rules = _HF_READ if layout == "hf" else _ORIGINAL_READ
    renamed = {_rename(k, rules): v for k, v in state.items()}
    return {k: v for k, v in renamed.items() if _keep_tensor(k, kept_layers)}


def from_internal(state: StateDict, layout: str, config: InterleaveConfig) -> StateDict:
    """Internal weights -> the layout's names. hf gets an identity post-layernorm so loaders find one."""
    if layout == "hf":
        out = {_rename(k, _HF_WRITE): v for k, v in state.items() if k != "image_newline"}
        width, dtype = config.vision.hidden_size, state["vision_tower.embeddings.patch_embedding.weight"].dtype
        out["vision_tower.vision_model.post_layernorm.weight"] = torch.ones(width, dtype=dtype)
        out["vision_tower.vision_model.post_layernorm.bias"] = torch.zeros(width, dtype=dtype)
        return out
    return {_rename(k, _ORIGINAL_WRITE): v for k, v in state.items()}


# ----------------------------------------------------------------------------------------------- configs


def _text_config(d: dict[str, Any]) -> TextConfig:
    """Missing keys take Qwen2Config's defaults, as transformers would (older files store only non-defaults)."""
    known = Qwen2Config().to_dict()
    hf = Qwen2Config(**{k: v for k, v in d.items() if k in known or k == "rope_theta"})
    rope = getattr(hf, "rope_parameters", None) or {}
    return TextConfig(
        vocab_size=hf.vocab_size,
        hidden_size=hf.hidden_size,
        intermediate_size=hf.intermediate_size,
        num_layers=hf.num_hidden_layers,
        num_heads=hf.num_attention_heads,
        num_kv_heads=hf.num_key_value_heads or hf.num_attention_heads,
        rope_theta=float(d.get("rope_theta") or rope.get("rope_theta") or getattr(hf, "rope_theta", 1_000_000.0)),
        max_position_embeddings=hf.max_position_embeddings,
        rms_norm_eps=hf.rms_norm_eps,
        tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
    )


def _vision_config(d: dict[str, Any], kept_layers: int) -> VisionConfig:
    return VisionConfig(
        image_size=d["image_size"],
        patch_size=d["patch_size"],
        hidden_size=d["hidden_size"],
        intermediate_size=d["intermediate_size"],
        num_layers=kept_layers,
        num_heads=d["num_attention_heads"],
        layer_norm_eps=d["layer_norm_eps"],
        hidden_act=d["hidden_act"],
    )


# Released original-layout files name the tower (so400m) but carry no vision config.
SO400M = {"image_size": 384, "patch_size": 14, "hidden_size": 1152, "intermediate_size": 4304,
          "num_hidden_layers": 27, "num_attention_heads": 16, "layer_norm_eps": 1e-6, "hidden_act": "gelu_pytorch_tanh"}


def _extra(d: dict[str, Any]) -> dict[str, Any]:
    return dict(d.get(EXTRA_KEY) or {})


def config_from_hf(d: dict[str, Any], image_processor: dict[str, Any]) -> InterleaveConfig:
    if d.get("vision_feature_select_strategy", "default") != "full":
        raise CheckpointError("only vision_feature_select_strategy 'full' is supported (SigLIP has no CLS token)")
    layer = d.get("vision_feature_layer", -1)
    if not isinstance(layer, int):
        raise CheckpointError(f"vision_feature_layer {layer!r}: only a single layer is supported")
    vision_json = {**SiglipVisionConfig().to_dict(), **(d.get("vision_config") or {})}
    total = vision_json["num_hidden_layers"]
    kept = total + 1 + layer if layer < 0 else layer
    text = {"tie_word_embeddings": d.get("tie_word_embeddings", False), **d.get("text_config", {})}
    size = image_processor.get("size") or {}
    processor = dataclass_from_dict(
        ProcessorConfig,
        {
            "image_mean": image_processor.get("image_mean", [0.5] * 3),
            "image_std": image_processor.get("image_std", [0.5] * 3),
            "image_aspect": "squash",
            "patch_merge": "flat",
            **_extra(d),
        },
    )
    if size and size.get("height", vision_json["image_size"]) != vision_json["image_size"]:
        raise CheckpointError(f"image processor size {size} differs from the vision tower's image_size")
    return InterleaveConfig(
        vision=_vision_config(vision_json, kept),
        text=_text_config(text),
        processor=processor,
        image_token_id=d.get("image_token_index", 151646),
        eos_token_id=_first(text.get("eos_token_id"), 151645),
        pad_token_id=_first(d.get("pad_token_id", text.get("pad_token_id")), 151643),
        max_length=text.get("max_position_embeddings", 32768),
        layout="hf",
    )


def config_from_original(d: dict[str, Any]) -> InterleaveConfig:
    if d.get("mm_projector_type", "mlp2x_gelu") != "mlp2x_gelu":
        raise CheckpointError(f"mm_projector_type {d['mm_projector_type']!r} is not supported (only mlp2x_gelu)")
    vision_json = {**SO400M, **(d.get("mm_vision_config") or {})}
    kept = vision_json["num_hidden_layers"] - 1
    pinpoints = d.get("image_grid_pinpoints") or ProcessorConfig().grid_pinpoints
    if not isinstance(pinpoints, (list, tuple)):
        raise CheckpointError(f"image_grid_pinpoints {pinpoints!r}: only an explicit list of [width, height] is supported")
    aspect = d.get("image_aspect_ratio", "pad")
    merge = d.get("mm_patch_merge_type", "flat")
    processor = dataclass_from_dict(
        ProcessorConfig,
        {
            "image_mean": vision_json.get("image_mean", [0.5] * 3),
            "image_std": vision_json.get("image_std", [0.5] * 3),
            "image_aspect": "anyres" if str(aspect).startswith("anyres") else ("pad" if aspect == "pad" else "squash"),
            "patch_merge": "spatial_unpad" if "unpad" in str(merge) else "flat",
            "grid_pinpoints": pinpoints,
            **_extra(d),
        },
    )
    return InterleaveConfig(
        vision=_vision_config(vision_json, kept),
        text=_text_config(d),
        processor=processor,
        image_token_id=ORIGINAL_IMAGE_TOKEN,
        eos_token_id=_first(d.get("eos_token_id"), 151645),
        pad_token_id=_first(d.get("pad_token_id"), 151643),
        max_length=d.get("tokenizer_model_max_length") or d.get("max_position_embeddings", 32768),
        layout="original",
    )


def _first(value: Any, default: int) -> int:
    if isinstance(value, list):
        value = value[0] if value else None
    return default if value is None else int(value)


def _text_json(t: TextConfig) -> dict[str, Any]:
    return {
        "vocab_size": t.vocab_size,
        "hidden_size": t.hidden_size,
        "intermediate_size": t.intermediate_size,
        "num_hidden_layers": t.num_layers,
        "num_attention_heads": t.num_heads,
        "num_key_value_heads": t.num_kv_heads,
        "rope_theta": t.rope_theta,
        "max_position_embeddings": t.max_position_embeddings,
        "rms_norm_eps": t.rms_norm_eps,
        "tie_word_embeddings": t.tie_word_embeddings,
        "hidden_act": "silu",
        "use_sliding_window": False,
    }


def _vision_json(v: VisionConfig, total_layers: int) -> dict[str, Any]:
    return {
        "model_type": "siglip_vision_model",
        "hidden_size": v.hidden_size,
        "intermediate_size": v.intermediate_size,
        "num_hidden_layers": total_layers,
        "num_attention_heads": v.num_heads,
        "image_size": v.image_size,
        "patch_size": v.patch_size,
        "layer_norm_eps": v.layer_norm_eps,
        "hidden_act": v.hidden_act,
        "vision_use_head": False,
    }


def _extra_json(p: ProcessorConfig, cuts: bool) -> dict[str, Any]:
    """Our settings that the layout's own keys cannot say, only those that differ from the defaults (so a
    released model converted comes out without the key): video pooling, frames, and, where the layout cuts
    a lone image into crops, how the images it does not cut are made square."""
    names = ["video_pooling", "num_frames", *(["multi_aspect"] if cuts else [])]
    default = ProcessorConfig()
    extra = {name: getattr(p, name) for name in names if getattr(p, name) != getattr(default, name)}
    return {EXTRA_KEY: extra} if extra else {}


def config_to_hf(c: InterleaveConfig, image_token_id: int) -> dict[str, Any]:
    text = {**_text_json(c.text), "model_type": "qwen2", "eos_token_id": c.eos_token_id}
    return {
        "architectures": ["LlavaForConditionalGeneration"],
        "model_type": "llava",
        "image_token_index": image_token_id,
        "projector_hidden_act": "gelu",
        "vision_feature_layer": -1,
        "vision_feature_select_strategy": "full",
        "image_seq_length": c.vision.tokens_per_image,
        "multimodal_projector_bias": True,
        "tie_word_embeddings": c.text.tie_word_embeddings,
        "pad_token_id": c.pad_token_id,
        "text_config": text,
        "vision_config": _vision_json(c.vision, c.vision.num_layers),
        **_extra_json(c.processor, cuts=False),
    }


def _mm_vision_config(c: InterleaveConfig) -> dict[str, Any]:
    """The tower's config, written only for a tower other than so400m with mean = std = 0.5: the releases
    carry none (their tower is named by mm_vision_tower), and readers take so400m when it is absent."""
    p = c.processor
    vision = {**_vision_json(c.vision, c.vision.num_layers + 1), "image_mean": list(p.image_mean), "image_std": list(p.image_std)}
    released = {**SO400M, "image_mean": [0.5] * 3, "image_std": [0.5] * 3}
    return {} if all(vision[k] == v for k, v in released.items()) else {"mm_vision_config": vision}


def config_to_original(c: InterleaveConfig) -> dict[str, Any]:
    p = c.processor
    return {
        "architectures": ["LlavaQwenForCausalLM"],
        "model_type": "llava_qwen",
        **_text_json(c.text),
        "eos_token_id": c.eos_token_id,
        "pad_token_id": c.pad_token_id,
        "mm_vision_tower": "google/siglip-so400m-patch14-384",
        "mm_projector_type": "mlp2x_gelu",
        "mm_hidden_size": c.vision.hidden_size,
        "mm_vision_select_layer": -2,  # as the releases write it; the SigLIP tower drops its last layer itself
        "image_aspect_ratio": ORIGINAL_SQUASH if p.image_aspect == "squash" else p.image_aspect,
        "mm_patch_merge_type": p.patch_merge,
        "image_grid_pinpoints": [list(x) for x in p.grid_pinpoints],
        "tokenizer_model_max_length": c.max_length,
        "tokenizer_padding_side": "right",
        **_mm_vision_config(c),
        **_extra_json(p, cuts=p.uses_anyres),
    }
