"""Read and write checkpoint directories in either layout; fetch a hub id when there is a network.

A directory fully describes a model: config.json (names the layout), safetensors weights (one file or
an index of shards), the tokenizer, and the image processor settings.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from huggingface_hub.errors import StrictDataclassError
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from transformers import AutoTokenizer, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from ..config import InterleaveConfig
from ..errors import CheckpointError, one_line
from . import layouts
from .device import resolve_device
from .llava import LlavaInterleave

# The dtypes a user may name (CLI --dtype, eval settings, a training config's dtype), written once so every
# parser offers the same.
DType = Literal["float32", "bfloat16", "float16"]
DTYPES: dict[DType, torch.dtype] = {name: getattr(torch, name) for name in get_args(DType)}
IMAGE_TOKEN = "<image>"
# The -hf checkpoints' chat format: per message, its images first, then "\n" + each text part.
HUB_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ '\\n' + content['text'] }}{% endfor %}"
    "{{ '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def resolve(model: str | os.PathLike) -> Path:
    """A local checkpoint directory, downloading a hub id (e.g. lmms-lab/llava-next-interleave-qwen-0.5b) if needed."""
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise CheckpointError(f"{path} is not a checkpoint: it has no config.json")
        return path
    if path.exists() or str(model).count("/") != 1:
        raise CheckpointError(f"{model} is neither a checkpoint directory nor a hub id like 'owner/name'")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(model), allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja"]))
    except Exception as err:  # offline, unknown id, no access: one clear line
        raise CheckpointError(
            f"{model} is not a local directory and could not be fetched from the hub "
            f"(no network or no such model?): {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        ) from err


def _read_json(path: Path) -> dict[str, Any]:
    """A checkpoint's JSON file, which is always one object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"cannot read {path}: {one_line(err)}") from err
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object, not a {type(data).__name__}")
    return data


def read_config(path: Path) -> InterleaveConfig:
    """The model config of a checkpoint; impossible values (a negative size, heads that do not divide the
    width) are refused here, naming the file, before a tensor is allocated."""
    raw = _read_json(path / "config.json")
    layout = layouts.detect_layout(raw)
    try:
        if layout == "original":
            return layouts.config_from_original(raw)
        return layouts.config_from_hf(raw, _hf_image_processor(path))
    except (ValueError, TypeError, StrictDataclassError) as err:  # the last: transformers' checks of its config
        raise CheckpointError(f"{path / 'config.json'}: {one_line(err)}") from err


def _hf_image_processor(path: Path) -> dict[str, Any]:
    """Older repos keep it in preprocessor_config.json, newer ones inside processor_config.json."""
    if (path / "preprocessor_config.json").is_file():
        return _read_json(path / "preprocessor_config.json")
    if (path / "processor_config.json").is_file():
        return _read_json(path / "processor_config.json").get("image_processor", {})
    return {}


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the checkpoint; a truncated or corrupt file is a `CheckpointError` naming it."""
    state: dict[str, torch.Tensor] = {}
    for name in _weight_files(path):
        if not (path / name).is_file():
            raise CheckpointError(f"{path} has no weights file {name} (only safetensors are read)")
        try:
            with safe_open(path / name, framework="pt") as f:
                state.update({key: f.get_tensor(key) for key in f.keys()})
        except (SafetensorError, OSError) as err:
            raise CheckpointError(f"cannot read weights {path / name} (truncated or corrupt?): {one_line(err)}") from err
    return state


def _weight_files(path: Path) -> list[str]:
    """The safetensors files: those the shard index names, else the one `model.safetensors`."""
    index = path / "model.safetensors.index.json"
    if not index.is_file():
        return ["model.safetensors"]
    weight_map = _read_json(index).get("weight_map")
    if not isinstance(weight_map, dict) or not all(isinstance(name, str) for name in weight_map.values()):
        raise CheckpointError(f"{index} has no weight_map from tensor names to file names")
    return sorted(set(weight_map.values()))


def load_tokenizer(path: Path) -> PreTrainedTokenizerBase:
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # it peeks at config.json and warns that llava_qwen is unknown to it
    try:
        return AutoTokenizer.from_pretrained(path)
    except Exception as err:
        raise CheckpointError(f"cannot load the tokenizer in {path}: {err}") from err
    finally:
        hf_logging.set_verbosity(verbosity)


def load_model(
    model: str | os.PathLike, device: str | torch.device | None = None, dtype: torch.dtype | None = None
) -> tuple[LlavaInterleave, PreTrainedTokenizerBase]:
    """Build the model from a checkpoint of either layout. fp32 on CPU and bf16 on CUDA unless `dtype` is given."""
    device = resolve_device(device)
    path = resolve(model)
    config = read_config(path)
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    state = layouts.to_internal(read_weights(path), config.layout, config.vision.num_layers)
    if "lm_head.weight" not in state and not config.text.tie_word_embeddings:
        config = replace(config, text=replace(config.text, tie_word_embeddings=True))  # as saved by tied models
    with torch.device("meta"):
        net = LlavaInterleave(config)
    _check_weights(net, state, path)
    net.load_state_dict(state, strict=False, assign=True)
    if config.text.tie_word_embeddings:
        net.lm_head.weight = net.language_model.embed_tokens.weight
    net.language_model.rotary_emb = type(net.language_model.rotary_emb)(net.language_model.config)
    net.vision_tower.embeddings.position_ids = torch.arange(config.vision.tokens_per_image).unsqueeze(0)
    left = [name for name, t in [*net.named_parameters(), *net.named_buffers()] if t.is_meta]
    assert not left, f"tensors left unmaterialised: {left[:3]}"
    return net.to(device=device, dtype=dtype).eval(), load_tokenizer(path)


def _check_weights(net: LlavaInterleave, state: dict[str, torch.Tensor], path: Path) -> None:
    """The file must hold exactly the tensors, of exactly the shapes, that config.json describes: a config
    edited by hand would otherwise fail inside `load_state_dict` with a page of size mismatches."""
    expected = {name: tensor.shape for name, tensor in net.state_dict().items()}
    if net.config.text.tie_word_embeddings:
        expected.pop("lm_head.weight", None)
        state.pop("lm_head.weight", None)
    missing, unexpected = sorted(expected.keys() - state.keys()), sorted(state.keys() - expected.keys())
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not match config.json (missing {missing[:3]}, unexpected {unexpected[:3]})")
    wrong = [f"{name} {tuple(state[name].shape)} vs {tuple(shape)}" for name, shape in expected.items()
             if state[name].shape != shape]
    if wrong:
        raise CheckpointError(f"{path}: weight shapes differ from config.json (file vs config: {', '.join(wrong[:3])})")


def save_checkpoint(
    net: LlavaInterleave, tokenizer: PreTrainedTokenizerBase, out: str | os.PathLike, layout: str | None = None
) -> Path:
    """Write `net` in `layout` ("hf" or "original"; default: the one it was loaded from).

    hf has no image_newline and no anyres; writing it drops both (the caller is told by `convert`).
    """
    layout = layout or net.config.layout
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = replace(net.config, layout=layout)
    state = {k: v.detach().to("cpu").contiguous() for k, v in net.state_dict().items()}
    if config.text.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    if layout == "hf":
        tokenizer = _with_image_token(tokenizer)
        image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        state = _fit_vocab(state, image_token_id)
        config = replace(config, text=replace(config.text, vocab_size=state["language_model.embed_tokens.weight"].shape[0]))
        config_json = layouts.config_to_hf(config, image_token_id)
        _write_json(out / "preprocessor_config.json", _preprocessor_json(config))
        _write_json(out / "processor_config.json", _processor_json(config))
        (out / "chat_template.jinja").write_text(HUB_CHAT_TEMPLATE)
    else:
        config_json = layouts.config_to_original(config)
    save_file(layouts.from_internal(state, layout, config), out / "model.safetensors", metadata={"format": "pt"})
    _write_json(out / "config.json", config_json)
    tokenizer.save_pretrained(out)
    return out


def _with_image_token(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]}, replace_extra_special_tokens=False)
    return tokenizer


def _fit_vocab(state: dict[str, torch.Tensor], token_id: int) -> dict[str, torch.Tensor]:
    """Grow the embedding (and untied head) with zero rows when the new image token lies past the vocabulary."""
    rows = state["language_model.embed_tokens.weight"].shape[0]
    if token_id < rows:
        return state
    extra = token_id + 1 - rows
    for key in ("language_model.embed_tokens.weight", "lm_head.weight"):
        if key in state:
            state[key] = torch.cat([state[key], state[key].new_zeros(extra, state[key].shape[1])])
    return state


def _preprocessor_json(config: InterleaveConfig) -> dict[str, Any]:
    size = config.vision.image_size
    return {
        "image_processor_type": "SiglipImageProcessor",
        "processor_class": "LlavaProcessor",
        "do_convert_rgb": True,
        "do_resize": True,
        "size": {"height": size, "width": size},
        "resample": 3,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(config.processor.image_mean),
        "image_std": list(config.processor.image_std),
    }


def _processor_json(config: InterleaveConfig) -> dict[str, Any]:
    return {
        "processor_class": "LlavaProcessor",
        "image_token": IMAGE_TOKEN,
        "patch_size": config.vision.patch_size,
        "vision_feature_select_strategy": "full",
        "num_additional_image_tokens": 0,
    }


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")
