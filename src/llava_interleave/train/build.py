"""The model being trained: loaded or built new, its tunable parts, LoRA adapters and optimiser groups."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from ..data.tokenizer import train_tokenizer
from ..errors import import_extra
from ..model.checkpoint import load_model, load_tokenizer
from ..model.llava import LlavaInterleave
from .config import PARTS, ConfigError, LoraSpec, ModelSpec, OptimSpec
from .presets import preset_config, processor_config

PREFIXES = {"vision_tower": ("vision_tower.",), "projector": ("projector.", "image_newline"),
            "llm": ("language_model.", "lm_head.")}


def build_model(spec: ModelSpec, texts: Callable[[], Iterable[str]], tokenizer_dir: Path | None = None) -> tuple[LlavaInterleave, Any]:
    """fp32 on CPU, in train mode. A new model gets a BPE trained on `texts()` unless a tokenizer is given
    (`tokenizer_dir`: the one a resumed run saved, so it never changes between restarts)."""
    if spec.checkpoint is not None:
        net, tokenizer = load_model(spec.checkpoint, device="cpu", dtype=torch.float32)
        if spec.processor:
            processor = processor_config(spec.processor, net.config.processor)
            if processor.uses_newline != net.config.processor.uses_newline:
                raise ConfigError("model.processor cannot change patch_merge of a checkpoint: that changes its weights")
            net.config = replace(net.config, processor=processor)
        return net.train(), tokenizer
    source = tokenizer_dir or (Path(spec.tokenizer) if spec.tokenizer else None)
    tokenizer = load_tokenizer(source) if source else train_tokenizer(texts(), spec.vocab_size)
    net = LlavaInterleave(preset_config(spec.preset or "", tokenizer, spec.processor))
    return init_new_weights(net).train(), tokenizer


def init_new_weights(net: LlavaInterleave) -> LlavaInterleave:
    """ViT-style initialisation of a new tower and projector (transformers' Qwen2Model initialises itself).

    PyTorch's default Embedding init (std 1) would make the tower's position embeddings drown out the
    pixels (a 7x7 patch projects to std ~0.3), so a new model could not tell one image from another."""
    with torch.no_grad():
        for module in [*net.vision_tower.modules(), *net.projector.modules()]:
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=0.02)
    return net


def part_of(name: str) -> str:
    """Which tunable part a parameter belongs to (LoRA adapters inside the LLM belong to "llm")."""
    for part, prefixes in PREFIXES.items():
        if name.startswith(prefixes):
            return part
    raise ValueError(f"parameter {name} belongs to no part")


def set_trainable(net: nn.Module, tune: Iterable[str], lora: bool) -> dict[str, int]:
    """Freeze all but the tuned parts; with LoRA only the adapters of the LLM train. Returns counts per part."""
    tune = set(tune)
    counts = dict.fromkeys(PARTS, 0)
    for name, param in net.named_parameters():
        part = part_of(name)
        param.requires_grad = part in tune and (not lora or part != "llm" or "lora_" in name)
        counts[part] += param.numel() if param.requires_grad else 0
    return counts


def param_groups(net: nn.Module, optim: OptimSpec) -> list[dict[str, Any]]:
    """One AdamW group per part and decay kind: each part its own learning rate; no decay on norms and biases."""
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for name, param in net.named_parameters():
        if param.requires_grad:
            groups.setdefault((part_of(name), param.ndim >= 2), []).append(param)
    return [
        {"params": params, "lr": optim.lr_of(part), "weight_decay": optim.weight_decay if decay else 0.0, "part": part}
        for (part, decay), params in sorted(groups.items())
    ]


def _peft(module: str) -> ModuleType:
    """peft is the `lora` extra: imported only by a run with lora.enabled, with a one-line error without it."""
    return import_extra(module, "LoRA (lora.enabled=true)", "lora")


def add_lora(net: LlavaInterleave, spec: LoraSpec) -> None:
    """Insert peft LoRA layers into the LLM in place (names gain `.base_layer` and `.lora_A/B`)."""
    peft = _peft("peft")
    config = peft.LoraConfig(r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout,
                             target_modules=list(spec.target_modules))
    peft.inject_adapter_in_model(config, net.language_model)


def merge_lora(net: nn.Module) -> nn.Module:
    """Fold the adapters into their base weights and put the plain layers back: an ordinary checkpoint."""
    lora = _peft("peft.tuners.lora")
    for name, module in list(net.named_modules()):
        if isinstance(module, lora.LoraLayer):
            module.merge()
            parent, _, child = name.rpartition(".")
            setattr(net.get_submodule(parent), child, module.get_base_layer())
    return net
