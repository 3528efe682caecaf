"""Training configs: small frozen dataclasses, read from YAML and `section.key=value` overrides.

Defaults follow the released interleave recipe (projector + LLM tuned, vision tower frozen, cosine
schedule with 3% warmup, 1e-5, clipping at 1.0). Unknown keys, and values outside a `Literal` field's
choices, are errors that list the valid ones, so a typo in a long run's config fails when it is read
instead of being silently ignored or failing hours later.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from ..config import ProcessorConfig
from ..data.config import DataConfig
from ..data.templates import TemplateName
from ..errors import InterleaveError
from ..model.checkpoint import DType
from .distributed import Strategy
from .schedule import Schedule

Part = Literal["vision_tower", "projector", "llm"]
PARTS: tuple[Part, ...] = typing.get_args(Part)
Preset = Literal["tiny", "nano"]  # see train/presets.py
LossAverage = Literal["token", "sample"]


class ConfigError(InterleaveError):
    """A training config that cannot be used as written."""


@dataclass(frozen=True)
class ModelSpec:
    checkpoint: str | None = None  # start from this checkpoint (either layout) ...
    preset: Preset | None = None  # ... or build a new model
    tokenizer: str | None = None  # new models: a tokenizer directory; none = train a BPE on the data's text
    vocab_size: int = 1024  # size of that trained BPE
    template: TemplateName = "qwen_1_5"
    processor: dict[str, Any] = field(default_factory=dict)  # overrides, e.g. {image_aspect: pad}


@dataclass(frozen=True)
class OptimSpec:
    tune: tuple[Part, ...] = ("projector", "llm")
    lr: float = 1e-5
    vision_tower_lr: float | None = None  # per-part learning rates; None = lr
    projector_lr: float | None = None
    llm_lr: float | None = None
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    schedule: Schedule = "cosine"
    warmup_ratio: float = 0.03
    max_grad_norm: float = 1.0
    loss_average: LossAverage = "token"  # SFT: every supervised token counts the same (as LLaVA), or every sample
    max_loss: float | None = None  # a step with a loss over this is exploding (train/guard.py); None: no ceiling
    loss_spike: float | None = None  # ... or with a loss over this many times the median of recent steps
    skip_bad_steps: bool = False  # skip (and count) a non-finite or exploding step instead of stopping the run

    def lr_of(self, part: Part) -> float:
        value = getattr(self, f"{part}_lr")
        return self.lr if value is None else value


@dataclass(frozen=True)
class LoraSpec:
    enabled: bool = False  # LoRA adapters on the LLM's linear layers (peft); the base LLM stays frozen
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class DPOSpec:
    beta: float = 0.1
    alpha: float = 1.0  # weight of the sigmoid DPO term
    gamma: float = 0.0  # weight of the cross-entropy on the chosen answer
    reference: str | None = None  # frozen reference checkpoint; none = a frozen copy of the starting model
    reference_logprobs: str | None = None  # or a JSONL of precomputed {id, chosen, rejected} log-probs


@dataclass(frozen=True)
class TrainConfig:
    model: ModelSpec = field(default_factory=ModelSpec)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimSpec = field(default_factory=OptimSpec)
    lora: LoraSpec = field(default_factory=LoraSpec)
    dpo: DPOSpec = field(default_factory=DPOSpec)
    out_dir: str = "runs/train"
    batch_size: int = 1  # samples per micro-batch on each process
    grad_accum: int = 1  # micro-batches per optimiser step
    epochs: float = 1.0
    max_steps: int = 0  # > 0 caps the run (and sets the schedule's length)
    seed: int = 0
    device: str | None = None  # default: cuda when available
    dtype: DType | None = None  # default float32 on CPU, bfloat16 autocast on GPU
    grad_checkpointing: bool = False
    distributed: Strategy = "fsdp"  # under torchrun
    save_every: int = 200  # steps between checkpoints (and one at the end)
    keep_last: int = 3
    log_every: int = 1
    progress: bool = True  # a progress bar on stderr (rank 0)
    tensorboard: bool = False


def _convert(kind: Any, value: Any, name: str) -> Any:
    """Check and convert one YAML value to the field's declared type."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        return _convert(next(a for a in args if a is not type(None)), value, name)
    if is_dataclass(kind):
        if not isinstance(value, dict):
            raise ConfigError(f"{name} must be a mapping, got {value!r}")
        return build(kind, value, name + ".")
    if origin is tuple:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise ConfigError(f"{name} must be a list, got {value!r}")
        inner = args[0] if args else Any
        return tuple(_convert(inner, v, name) for v in items)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{name} must be one of {', '.join(map(str, args))}, got {value!r}")
        return value
    if origin is dict or kind is Any:
        return value
    if kind is float:
        return _to_float(value, name)
    if kind in (int, str, bool) and not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{name} must be {kind.__name__}, got {value!r}")
    return value


def _to_float(value: Any, name: str) -> float:
    """YAML reads `1e-5` (no dot) as a string; accept it as the number everyone means."""
    try:
        if isinstance(value, bool):
            raise ValueError
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number, got {value!r}") from None


def build(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """A config dataclass from a (nested) dict; unknown keys raise with the list of known ones."""
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"unknown key {prefix}{unknown[0]}; valid keys here: {', '.join(known)}")
    values = {k: _convert(hints[k], v, prefix + k) for k, v in data.items()}
    for name, f in known.items():
        if name not in values and f.default is MISSING and f.default_factory is MISSING:
            raise ConfigError(f"missing key {prefix}{name}")
    return cls(**values)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """`optim.lr=2e-5`, `optim.tune=[projector]`: the value is parsed as YAML."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not KEY=VALUE (e.g. optim.lr=2e-5)")
        node = data
        *path, last = key.split(".")
        for part in path:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part} is not a section")
        node[last] = yaml.safe_load(raw) if raw else None
    return data


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> TrainConfig:
    """YAML file (optional) + overrides -> frozen config. Paths written in the YAML are relative to the YAML's
    folder (a recipe works from any directory); paths given as overrides are relative to where you are."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise ConfigError(f"cannot read config {path}: {err}") from err
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
        _anchor_paths(data, Path(path).resolve().parent)
    data = apply_overrides(data, list(overrides))
    _placement_seed(data)
    return validate(build(TrainConfig, data))


def _anchor_paths(data: dict[str, Any], base: Path) -> None:
    """Data paths always; a checkpoint or reference only when it exists there (else it may be a hub id)."""
    sections = {"data": ("path", "image_root", "video_root", "video_map"), "model": ("checkpoint", "tokenizer"),
                "dpo": ("reference", "reference_logprobs")}
    for section, keys in sections.items():
        node = data.get(section)
        for key in keys if isinstance(node, dict) else ():
            value = node.get(key)
            relative = isinstance(value, str) and value and not Path(value).is_absolute()
            if relative and (section == "data" or (base / value).exists()):
                node[key] = str(base / value)


def _placement_seed(data: dict[str, Any]) -> None:
    """`data.seed` (which samples get their images in front) follows the run's `seed` unless it is given, so
    one seed still decides a whole run."""
    section = data.setdefault("data", {})
    if isinstance(section, dict) and "seed" not in section:
        section["seed"] = data.get("seed", TrainConfig.seed)


def validate(config: TrainConfig) -> TrainConfig:
    """Rules across keys; each key's own type and choices were checked when it was read."""
    if (config.model.checkpoint is None) == (config.model.preset is None):
        raise ConfigError("give exactly one of model.checkpoint (start from weights) and model.preset (a new model)")
    if not config.data.path:
        raise ConfigError("data.path is required: a .json/.jsonl file or a mixture .yaml")
    build(ProcessorConfig, config.model.processor, "model.processor.")  # its keys and choices, before any weights load
    if min(config.batch_size, config.grad_accum, config.save_every, config.keep_last, config.log_every) < 1:
        raise ConfigError("batch_size, grad_accum, save_every, keep_last and log_every must be at least 1")
    if config.optim.loss_spike is not None and config.optim.loss_spike <= 1:
        raise ConfigError(f"optim.loss_spike must be over 1 (a factor over the median loss), got {config.optim.loss_spike}")
    return config


def to_dict(config: Any) -> dict[str, Any]:
    """Plain data for YAML/JSON (tuples as lists), e.g. the copy saved in the run directory."""

    def plain(value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(asdict(config))
