"""Read and write checkpoint directories in either layout; fetch a hub id when there is a network.

A directory fully describes a model: config.json (names the layout), safetensors weights (one file or
an index of shards), the tokenizer, the image processor settings, and generation_config.json (stop ids).
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args

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
STORED_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}  # safetensors' names
IMAGE_TOKEN = "<image>"
GENERATION_CONFIG = "generation_config.json"
T = TypeVar("T")
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
            config = layouts.config_from_original(raw)
        else:
            config = layouts.config_from_hf(raw, _hf_image_processor(path))
    except (ValueError, TypeError, StrictDataclassError) as err:  # the last: transformers' checks of its config
        raise CheckpointError(f"{path / 'config.json'}: {one_line(err)}") from err
    return replace(config, stop_token_ids=_generation_stop_ids(path))


def _generation_stop_ids(path: Path) -> tuple[int, ...]:
    """generation_config.json's eos_token_id, one id or a list: the original releases stop on
    [151645, 151643] (<|im_end|>, <|endoftext|>), which config.json's single eos_token_id cannot say."""
    file = path / GENERATION_CONFIG
    if not file.is_file():
        return ()
    value = _read_json(file).get("eos_token_id")
    ids = value if isinstance(value, list) else [] if value is None else [value]
    if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
        raise CheckpointError(f"{file}: eos_token_id must be a token id or a list of them, got {value!r}")
    return tuple(ids)


def stop_ids(config: InterleaveConfig, tokenizer: PreTrainedTokenizerBase) -> tuple[int, ...]:
    """The ids the checkpoint says end an answer: config.json's eos, generation_config.json's, the tokenizer's eos."""
    candidates = (config.eos_token_id, *config.stop_token_ids, tokenizer.eos_token_id)
    return tuple(dict.fromkeys(i for i in candidates if isinstance(i, int)))


def _hf_image_processor(path: Path) -> dict[str, Any]:
    """Older repos keep it in preprocessor_config.json, newer ones inside processor_config.json."""
    if (path / "preprocessor_config.json").is_file():
        return _read_json(path / "preprocessor_config.json")
    if (path / "processor_config.json").is_file():
        return _read_json(path / "processor_config.json").get("image_processor", {})
    return {}


def read_weights(path: Path, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Every tensor of the checkpoint, its floating ones cast to `dtype` one by one as they are read from the
    memory-mapped file (None: as stored). No in-memory copy of the whole checkpoint is made beside the
    result: a tensor already in `dtype` stays mapped from the file (read on first use), one in another dtype
    is converted alone and its source dropped."""

    def read(f: Any) -> dict[str, torch.Tensor]:
        return {key: _cast(f.get_tensor(key), dtype) for key in f.keys()}

    return {key: tensor for part in _each_weight_file(path, read) for key, tensor in part.items()}


def _cast(tensor: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """A floating tensor in `dtype` (None: as it is); integer tensors (position ids) keep theirs."""
    return tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor


def stored_dtype(model: str | os.PathLike) -> torch.dtype:
    """The floating dtype holding most of a checkpoint's weights (bf16 for the releases), read from the file
    headers without loading a tensor, so `convert` can keep it."""

    def count(f: Any) -> Counter[torch.dtype]:
        sizes: Counter[torch.dtype] = Counter()
        for tensor in [f.get_slice(key) for key in f.keys()]:
            if tensor.get_dtype() in STORED_DTYPES:
                sizes[STORED_DTYPES[tensor.get_dtype()]] += math.prod(tensor.get_shape())
        return sizes

    total = sum(_each_weight_file(resolve(model), count), Counter())
    return total.most_common(1)[0][0] if total else torch.float32


def _each_weight_file(path: Path, read: Callable[[Any], T]) -> list[T]:
    """`read` applied to each opened safetensors file; a missing, truncated or corrupt file is a
    `CheckpointError` naming it."""
    results = []
    for name in _weight_files(path):
        if not (path / name).is_file():
            raise CheckpointError(f"{path} has no weights file {name} (only safetensors are read)")
        try:
            with safe_open(path / name, framework="pt") as f:
                results.append(read(f))
        except (SafetensorError, OSError) as err:
            raise CheckpointError(f"cannot read weights {path / name} (truncated or corrupt?): {one_line(err)}") from err
    return results


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
    """Build the model from a checkpoint of either layout, in `dtype` (default: fp32 on CPU, bf16 on CUDA).

    The model is built on the meta device and given the file's tensors, each cast to `dtype` as it is read
    (`read_weights`): the model is never materialised in another dtype first, so a bf16 0.5B loaded as bf16
    takes ~1.7 GB, not 3.5."""
    device = resolve_device(device)
    path = resolve(model)
    config = read_config(path)
    dtype = dtype or default_dtype(device)
    state = layouts.to_internal(read_weights(path, dtype), config.layout, config.vision.num_layers)
    if "lm_head.weight" not in state and not config.text.tie_word_embeddings:
        config = replace(config, text=replace(config.text, tie_word_embeddings=True))  # as saved by tied models
    with torch.device("meta"):
        net = LlavaInterleave(config)
    _check_weights(net, state, path)
    net.load_state_dict(state, strict=False, assign=True)
    if config.text.tie_word_embeddings:
        net.lm_head.weight = net.language_model.embed_tokens.weight
    # Rotary frequencies stay fp32 whatever the weights' dtype, as transformers keeps them: bf16 ones would
    # shift every position's angle.
    net.language_model.rotary_emb = type(net.language_model.rotary_emb)(net.language_model.config)
    net.vision_tower.embeddings.position_ids = torch.arange(config.vision.tokens_per_image).unsqueeze(0)
    left = [name for name, t in [*net.named_parameters(), *net.named_buffers()] if t.is_meta]
    assert not left, f"tensors left unmaterialised: {left[:3]}"
    return net.to(device=device).eval(), load_tokenizer(path)


def default_dtype(device: torch.device) -> torch.dtype:
    """bf16 on CUDA; fp32 on CPU, where bf16 measured slower on CPUs without native bf16 instructions (see
    benchmarks/cpu_dtype.py and the README's Speed section)."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


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
    """Write `net` in `layout` ("hf" or "original"; default: the one it was loaded from), in its own dtype.

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
    _write_json(out / "config.json", {**config_json, "torch_dtype": str(net.dtype).removeprefix("torch.")})
    _write_json(out / GENERATION_CONFIG, _generation_json(config, tokenizer))
    _save_tokenizer(tokenizer, out)
    return out


def _generation_json(config: InterleaveConfig, tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
    """The stop ids (one id, as the -hf releases write it, or a list, as the original ones do) and the pad id.
    No sampling settings: a loader then decodes greedily, as we do."""
    ids = stop_ids(config, tokenizer)
    return {"eos_token_id": ids[0] if len(ids) == 1 else list(ids), "pad_token_id": config.pad_token_id}


def _save_tokenizer(tokenizer: PreTrainedTokenizerBase, out: Path) -> None:
    """The tokenizer, its added tokens also listed in tokenizer_config.json's `added_tokens_decoder` with their
    special flags, as the published files list them: transformers 5 keeps them only in tokenizer.json, where
    loaders before it (those the serving engines pin) also look here to learn that `<image>` is special."""
    tokenizer.save_pretrained(out)
    path = out / "tokenizer_config.json"
    added = {str(i): {"content": t.content, "lstrip": t.lstrip, "normalized": t.normalized, "rstrip": t.rstrip,
                      "single_word": t.single_word, "special": t.special}
             for i, t in sorted(tokenizer.added_tokens_decoder.items())}
    _write_json(path, {**_read_json(path), "added_tokens_decoder": added})


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
