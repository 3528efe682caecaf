"""The training loop shared by SFT and DPO: build, shard, step, log, checkpoint, resume, export.

An `Objective` says what a sample is and how a micro-batch is scored; everything else lives here. The loss
of a step is a sum over the whole global batch divided by its size (supervised tokens for SFT, pairs for
DPO), counted over all processes before any backward pass: so gradient accumulation and the number of
processes change the arithmetic order only, never the objective.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
import yaml

from ..model.checkpoint import save_checkpoint as save_model
from ..model.llava import LlavaInterleave
from .build import add_lora, build_model, merge_lora, param_groups, set_trainable
from .checkpointing import (
    latest_checkpoint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from .config import ConfigError, TrainConfig, to_dict
from .distributed import (
    Dist,
    full_model_state,
    full_optimizer_state,
    init_distributed,
    load_full_state,
    shutdown,
    wrap,
)
from .plan import StepPlan
from .runlog import RunLog
from .schedule import make_scheduler


class Objective(Protocol):
    lengths: Sequence[int]
    modalities: Sequence[str]

    def texts(self) -> Any:
        """The data's text, for training a new model's tokenizer."""

    def prepare(self, trainer: Trainer) -> None:
        """Called once the model and tokenizer exist (before adapters and sharding): build the processor,
        count lengths, copy a reference model."""

    def get(self, index: int) -> Any | None:
        """The prepared sample, or None when it is broken (skipped and counted)."""

    def weight(self, items: Sequence[Any]) -> int:
        """This micro-batch's share of the step's denominator."""

    def loss(self, model: torch.nn.Module, items: Sequence[Any]) -> tuple[torch.Tensor, dict[str, float]]:
        """(summed loss with grad, summed metrics); called with an empty list on a rank whose samples were all bad."""

    def skipped(self) -> dict[str, int]: ...


def pick_device(config: TrainConfig) -> torch.device:
    return torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))


class Trainer:
    def __init__(self, config: TrainConfig, make_objective: Any, resume: bool = False) -> None:
        self.config = config
        device = pick_device(config)
        self.dist: Dist = init_distributed(device)
        self.device = torch.device("cuda", self.dist.local_rank) if device.type == "cuda" else device
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.run_dir = Path(config.out_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        checkpoint = latest_checkpoint(self.run_dir) if resume else None
        if resume and checkpoint is None and self.dist.main:
            print(f"no checkpoint in {self.run_dir}: starting from step 0")
        torch.manual_seed(config.seed)
        self.objective: Objective = make_objective(config)
        self.net, self.tokenizer = self.load_base()
        self.objective.prepare(self)
        self._build(checkpoint)

    # ------------------------------------------------------------------ set-up
    def load_base(self) -> tuple[LlavaInterleave, Any]:
        saved = self.run_dir / "tokenizer"
        return build_model(self.config.model, lambda: self.objective.texts(), saved if saved.is_dir() else None)

    def _build(self, checkpoint: Path | None) -> None:
        config = self.config
        if config.lora.enabled:
            add_lora(self.net, config.lora)
        counts = set_trainable(self.net, config.optim.tune, config.lora.enabled)
        if not any(counts.values()):
            raise ConfigError(f"nothing to train: optim.tune={list(config.optim.tune)}")
        if config.grad_checkpointing:
            lm = self.net.language_model  # transformers >= 5.2x renamed the method; accept both releases
            enable = getattr(lm, "activation_checkpointing_enable", None) or lm.gradient_checkpointing_enable
            enable({"use_reentrant": False})
        self.net.to(self.device)
        self.model = wrap(self.net, self.dist, config.distributed)
        self.optimizer = torch.optim.AdamW(param_groups(self.net, config.optim), betas=config.optim.betas, foreach=False)
        self.plan = StepPlan(self.objective.lengths, self.objective.modalities, config.batch_size, config.grad_accum,
                             self.dist.world, config.seed, config.data.group_by_length)
        epochs_steps = int(config.epochs * self.plan.steps_per_epoch)
        self.total = config.max_steps or max(1, epochs_steps)
        self.start = 0
        self._base_rates()
        if checkpoint is not None:
            state = load_checkpoint(checkpoint)
            load_full_state(self.model, self.optimizer, state["model"], state["optimizer"])
            set_rng_state(state["rng"])
            self.start = state["step"]
            self._base_rates()  # the config's rates, also when a resumed run changed them
        self.scheduler = make_scheduler(self.optimizer, self.total, config.optim.warmup_ratio, config.optim.schedule,
                                        self.start)
        if self.dist.main:
            self._describe(counts, checkpoint)

    def _base_rates(self) -> None:
        for group in self.optimizer.param_groups:
            group["initial_lr"] = self.config.optim.lr_of(group["part"])

    def _describe(self, counts: dict[str, int], checkpoint: Path | None) -> None:
        (self.run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(self.config), sort_keys=False))
        if self.config.model.preset and not (self.run_dir / "tokenizer").is_dir():
            self.tokenizer.save_pretrained(self.run_dir / "tokenizer")
        trained = ", ".join(f"{part} {n:,}" for part, n in counts.items() if n)
        where = f"resuming from {checkpoint.name}" if checkpoint else "starting"
        print(f"{where}: {self.total} steps of {self.plan.global_batch} samples on {self.dist.world} process(es), "
              f"device {self.device}; trained parameters: {trained}")

    def autocast(self) -> contextlib.AbstractContextManager:
        dtype = self.config.dtype or ("bfloat16" if self.device.type == "cuda" else "float32")
        if dtype == "float32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=getattr(torch, dtype))

    # ------------------------------------------------------------------ the loop
    def run(self) -> Path:
        """Train to the end (or on from the last checkpoint); returns the exported model directory."""
        log = RunLog(self.run_dir, self.total, self.start, self.config.progress and self.dist.main, self.config.tensorboard) \
            if self.dist.main else None
        try:
            for step in range(self.start, self.total):
                record = self.step(step)
                if log is not None and (record["step"] % self.config.log_every == 0 or record["step"] == self.total):
                    log.step(record)
                if record["step"] % self.config.save_every == 0 or record["step"] == self.total:
                    self.save(record["step"])
            return self.export()
        finally:
            if log is not None:
                log.close()
            shutdown(self.dist)

    def step(self, step: int) -> dict[str, Any]:
        started = time.perf_counter()
        micro = [[item for item in map(self.objective.get, indices) if item is not None]
                 for indices in self.plan.micro_batches(step, self.dist.rank)]
        weight = self.dist.all_sum(torch.tensor(float(sum(self.objective.weight(items) for items in micro))))
        scale = self.dist.world / max(float(weight), 1.0)
        totals: dict[str, float] = {}
        for k, items in enumerate(micro):
            sync = k == len(micro) - 1 or not hasattr(self.model, "no_sync")
            with contextlib.nullcontext() if sync else self.model.no_sync(), self.autocast():
                loss_sum, metrics = self.objective.loss(self.model, items)
                (loss_sum * scale).backward()
            for key, value in {"loss": float(loss_sum.detach()), **metrics}.items():
                totals[key] = totals.get(key, 0.0) + value
        trainable = [p for p in self.net.parameters() if p.requires_grad]
        norm = torch.nn.utils.clip_grad_norm_(trainable, self.config.optim.max_grad_norm)
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        keys = sorted(totals)
        summed = self.dist.all_sum(torch.tensor([totals[k] for k in keys], dtype=torch.float64))
        means = {k: float(v) / max(float(weight), 1.0) for k, v in zip(keys, summed) if k != "tokens"}
        tokens = float(summed[keys.index("tokens")]) if "tokens" in totals else 0.0
        norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
        return {"step": step + 1, **means, "lr": lr, "grad_norm": float(norm), "tokens": int(tokens),
                "tokens_per_s": tokens / (time.perf_counter() - started), "skipped": self.objective.skipped()}

    # ------------------------------------------------------------------ saving
    def trained_names(self) -> set[str]:
        """A new model's checkpoints hold everything (its frozen parts are random, not on disk anywhere
        else); a fine-tune's hold only what changes, so a 7B LoRA checkpoint stays small."""
        if self.config.model.preset:
            return set(self.net.state_dict())
        return {name for name, p in self.net.named_parameters() if p.requires_grad}

    def save(self, step: int) -> None:
        model = full_model_state(self.model)  # collectives: every rank takes part
        optim = full_optimizer_state(self.model, self.optimizer)
        if self.dist.main:
            keep = self.trained_names()
            state = {"step": step, "model": {k: v for k, v in model.items() if k in keep}, "optimizer": optim,
                     "rng": rng_state(), "config": to_dict(self.config)}
            save_checkpoint(self.run_dir, step, state, self.config.keep_last)
        self.dist.barrier()

    def export(self) -> Path:
        """The final weights as an ordinary checkpoint directory (LoRA merged) in the starting layout."""
        state = full_model_state(self.model)
        out = self.run_dir / "final"
        if self.dist.main:
            plain = LlavaInterleave(self.net.config)
            if self.config.lora.enabled:
                add_lora(plain, self.config.lora)
            plain.load_state_dict(state, strict=False)
            save_model(merge_lora(plain).eval(), self.tokenizer, out, self.net.config.layout)
            print(f"final model: {out}")
        self.dist.barrier()
        return out
