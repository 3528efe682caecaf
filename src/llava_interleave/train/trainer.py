"""The training loop shared by SFT and DPO: build, shard, step, log, checkpoint, resume, export.

An `Objective` says what a sample is and how a micro-batch is scored; everything else lives here. The loss
of a step is a sum over the whole global batch divided by its size (supervised tokens for SFT, pairs for
DPO), counted over all processes before any backward pass: so gradient accumulation and the number of
processes change the arithmetic order only, never the objective.

Nothing a run meets may end it silently or be lost: a skipped sample is listed in skipped.jsonl (gathered
from every process) and counted against one `SkipBudget` saved in each checkpoint; a step whose loss is
not finite or explodes never reaches the weights (train/guard.py); non-finite weights are never written;
`--resume` takes the newest checkpoint that matches its manifest and refuses a changed config unless
asked (train/resume.py).
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import torch

from ..data.dataset import SkipBudget, Skipped
from ..model.checkpoint import DTYPES
from ..model.checkpoint import save_checkpoint as save_model
from ..model.device import resolve_device
from ..model.llava import LlavaInterleave
from .build import add_lora, build_model, merge_lora, param_groups, set_trainable
from .checkpointing import latest_checkpoint, resume_point, rng_state, save_checkpoint, set_rng_state
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
from .guard import LossGuard, TrainingDiverged, nonfinite
from .plan import StepPlan
from .resume import check_resume, record_config
from .runlog import RunLog
from .schedule import make_scheduler
from .skips import SkipFile, summary


class Objective(Protocol):
    lengths: Sequence[int]
    modalities: Sequence[str]

    def texts(self) -> Any:
        """The data's text, for training a new model's tokenizer."""

    def prepare(self, trainer: Trainer) -> None:
        """Called once the model and tokenizer exist (before adapters and sharding): build the processor,
        count lengths, copy a reference model."""

    def get(self, index: int) -> Any | Skipped:
        """The prepared sample, or where it is and why it was skipped when it is broken."""

    def weight(self, items: Sequence[Any]) -> int:
        """This micro-batch's share of the step's denominator."""

    def loss(self, model: torch.nn.Module, items: Sequence[Any]) -> tuple[torch.Tensor, dict[str, float]]:
        """(summed loss with grad, summed metrics); called with an empty list on a rank whose samples were all bad."""


class Trainer:
    def __init__(self, config: TrainConfig, make_objective: Any, resume: bool = False,
                 allow_config_change: bool = False) -> None:
        self.config = config
        device = resolve_device(config.device)  # a device the machine lacks: one line, before any work
        self.dist: Dist = init_distributed(device)
        self.device = torch.device("cuda", self.dist.local_rank) if device.type == "cuda" else device
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.run_dir = Path(config.out_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log: RunLog | None = None  # rank 0's, while `run` runs
        self.skip_file: SkipFile | None = None
        found = resume_point(self.run_dir, self.warn) if resume else None
        if resume and found is None and self.dist.main:
            print(f"no checkpoint in {self.run_dir}: starting from step 0")
        # before the model and data are built: a refused resume costs nothing
        self.changes = check_resume(found[1], found[0], config, self.dist.world, allow_config_change) if found else {}
        torch.manual_seed(config.seed)
        self.objective: Objective = make_objective(config)
        self.net, self.tokenizer = self.load_base()
        self.objective.prepare(self)
        self._build(found)

    # ------------------------------------------------------------------ set-up
    def load_base(self) -> tuple[LlavaInterleave, Any]:
        saved = self.run_dir / "tokenizer"
        return build_model(self.config.model, lambda: self.objective.texts(), saved if saved.is_dir() else None)

    def _build(self, found: tuple[Path, dict[str, Any]] | None) -> None:
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
            self.net.vision_tower.gradient_checkpointing = True  # matters when optim.tune trains the tower
        self.net.to(self.device)
        self.model = wrap(self.net, self.dist, config.distributed)
        self.optimizer = torch.optim.AdamW(param_groups(self.net, config.optim), betas=config.optim.betas, foreach=False)
        self.plan = StepPlan(self.objective.lengths, self.objective.modalities, config.batch_size, config.grad_accum,
                             self.dist.world, config.seed, config.data.group_by_length)
        epochs_steps = int(config.epochs * self.plan.steps_per_epoch)
        self.total = config.max_steps or max(1, epochs_steps)
        self.start = 0
        self.budget = SkipBudget(config.data.max_skip_ratio)
        self.guard = LossGuard(config.optim.max_loss, config.optim.loss_spike)
        self._base_rates()
        if found is not None:
            self._restore(found[1])
        self.scheduler = make_scheduler(self.optimizer, self.total, config.optim.warmup_ratio, config.optim.schedule,
                                        self.start)
        if self.dist.main:
            self._describe(counts, found[0] if found else None)

    def _restore(self, state: dict[str, Any]) -> None:
        load_full_state(self.model, self.optimizer, state["model"], state["optimizer"])
        set_rng_state(state["rng"])
        self.start = state["step"]
        self.budget.load_state_dict(state["skips"])
        self.guard.load_state_dict(state["guard"])
        self._base_rates()  # the config's rates, also when a resumed run changed them

    def _base_rates(self) -> None:
        for group in self.optimizer.param_groups:
            group["initial_lr"] = self.config.optim.lr_of(group["part"])

    def _describe(self, counts: dict[str, int], checkpoint: Path | None) -> None:
        record_config(self.run_dir, self.config, self.start, self.changes)
        if self.config.model.preset and not (self.run_dir / "tokenizer").is_dir():
            self.tokenizer.save_pretrained(self.run_dir / "tokenizer")
        trained = ", ".join(f"{part} {n:,}" for part, n in counts.items() if n)
        where = f"resuming from {checkpoint.name}" if checkpoint else "starting"
        print(f"{where}: {self.total} steps of {self.plan.global_batch} samples on {self.dist.world} process(es), "
              f"device {self.device}; trained parameters: {trained}")

    def warn(self, text: str) -> None:
        """One line on stderr from rank 0 (every rank meets the same events), without breaking the bar."""
        if self.log is not None:
            self.log.message(text)
        elif self.dist.main:
            print(text, file=sys.stderr, flush=True)

    def autocast(self) -> contextlib.AbstractContextManager:
        dtype = self.config.dtype or ("bfloat16" if self.device.type == "cuda" else "float32")
        if dtype == "float32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=DTYPES[dtype])

    # ------------------------------------------------------------------ the loop
    def run(self) -> Path:
        """Train to the end (or on from the last checkpoint); returns the exported model directory."""
        if self.dist.main:
            self.log = RunLog(self.run_dir, self.total, self.start, self.config.progress, self.config.tensorboard)
            self.skip_file = SkipFile(self.run_dir, fresh=self.start == 0)
        reported = sum(self.budget.skipped.values())
        try:
            for step in range(self.start, self.total):
                record = self.step(step)
                if self.log is not None and (record["step"] % self.config.log_every == 0 or record["step"] == self.total):
                    self.log.step(record)
                    reported = self._report_skips(reported)
                if record["step"] % self.config.save_every == 0 or record["step"] == self.total:
                    self.save(record["step"])
            return self.export()
        finally:
            for opened in (self.log, self.skip_file):
                if opened is not None:
                    opened.close()
            shutdown(self.dist)

    def _report_skips(self, reported: int) -> int:
        """A summary line when samples were skipped since the last one; returns the count reported."""
        total = sum(self.budget.skipped.values())
        if total > reported and self.skip_file is not None:
            self.warn(summary(self.budget.skipped, self.skip_file.path))
        return total

    def step(self, step: int) -> dict[str, Any]:
        started = time.perf_counter()
        micro, weight = self._take(step)
        totals = self._backward(micro, self.dist.world / max(weight, 1.0))
        keys = sorted(totals)
        summed = self.dist.all_sum(torch.tensor([totals[k] for k in keys], dtype=torch.float64))
        means = {k: float(v) / max(weight, 1.0) for k, v in zip(keys, summed) if k != "tokens"}
        tokens = float(summed[keys.index("tokens")]) if "tokens" in totals else 0.0
        trainable = [p for p in self.net.parameters() if p.requires_grad]
        norm = torch.nn.utils.clip_grad_norm_(trainable, self.config.optim.max_grad_norm)
        norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
        lr = self.scheduler.get_last_lr()[0]
        self._apply(step + 1, means["loss"], norm)
        return {"step": step + 1, **means, "lr": lr, "grad_norm": norm, "tokens": int(tokens),
                "tokens_per_s": tokens / (time.perf_counter() - started), "skipped": dict(self.budget.skipped),
                "bad_steps": self.guard.bad_steps}

    def _take(self, step: int) -> tuple[list[list[Any]], float]:
        """This rank's good items of `step` by micro-batch, and the step's weight over all ranks. The skipped
        samples of every rank are gathered (only on a step where some rank skipped one), listed in
        skipped.jsonl by rank 0, and counted against the budget, the same on every rank."""
        got = [[self.objective.get(i) for i in indices] for indices in self.plan.micro_batches(step, self.dist.rank)]
        micro = [[item for item in items if not isinstance(item, Skipped)] for items in got]
        skips = [item for items in got for item in items if isinstance(item, Skipped)]
        local = [sum(self.objective.weight(items) for items in micro), sum(map(len, got)), len(skips)]
        weight, seen, skipped = self.dist.all_sum(torch.tensor(local, dtype=torch.float64)).tolist()
        if skipped and self.dist.world > 1:
            skips = [skip for part in self.dist.gather(skips) for skip in part]
        if self.skip_file is not None:
            self.skip_file.write(skips, step + 1)
        self.budget.add(int(seen), [(skip.reason, skip.message) for skip in skips])
        return micro, weight

    def _backward(self, micro: list[list[Any]], scale: float) -> dict[str, float]:
        """Forward and backward over this rank's micro-batches; the summed loss and metrics."""
        totals: dict[str, float] = {}
        for k, items in enumerate(micro):
            sync = k == len(micro) - 1 or not hasattr(self.model, "no_sync")
            with contextlib.nullcontext() if sync else self.model.no_sync(), self.autocast():
                loss_sum, metrics = self.objective.loss(self.model, items)
                (loss_sum * scale).backward()
            for key, value in {"loss": float(loss_sum.detach()), **metrics}.items():
                totals[key] = totals.get(key, 0.0) + value
        return totals

    def _apply(self, number: int, loss: float, grad_norm: float) -> None:
        """The optimiser step, unless the guard finds step `number` bad: then the run stops with the weights
        of the last checkpoint on disk or, under optim.skip_bad_steps, the step is skipped and counted."""
        problem = self.guard.problem(loss, grad_norm)
        if problem is None:
            self.optimizer.step()
            self.guard.accept(loss)
        elif self.config.optim.skip_bad_steps:
            self.guard.bad_steps += 1
            self.warn(f"step {number} skipped: {problem} ({self.guard.bad_steps} skipped so far)")
        else:
            last = latest_checkpoint(self.run_dir)
            raise TrainingDiverged(
                f"step {number}: {problem}; the run stopped without applying it (last checkpoint: {last or 'none'}). "
                "Lower optim.lr or set optim.skip_bad_steps=true, then resume with --resume --allow-config-change")
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

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
        keep = self.trained_names()
        model = {k: v for k, v in model.items() if k in keep}
        self.require_finite(model, f"the weights of step {step}")
        if self.dist.main:
            state = {"step": step, "model": model, "optimizer": optim, "rng": rng_state(), "config": to_dict(self.config),
                     "world": self.dist.world, "skips": self.budget.state_dict(), "guard": self.guard.state_dict()}
            save_checkpoint(self.run_dir, step, state, self.config.keep_last)
        self.dist.barrier()

    def require_finite(self, state: dict[str, torch.Tensor], what: str) -> None:
        """Refuse to write weights holding NaN or inf; rank 0, which holds the full state, decides for all."""
        bad = nonfinite(state) if self.dist.main else []
        if float(self.dist.all_sum(torch.tensor(float(len(bad))))) > 0:
            names = ", ".join(bad[:3]) + (", ..." if len(bad) > 3 else "")
            raise TrainingDiverged(f"{what} hold NaN or infinite values ({names or 'found on rank 0'}): not written")

    def export(self) -> Path:
        """The final weights as an ordinary checkpoint directory (LoRA merged) in the starting layout."""
        state = full_model_state(self.model)
        self.require_finite(state, "the final weights")
        out = self.run_dir / "final"
        if self.dist.main:
            plain = LlavaInterleave(self.net.config)
            lora = self.config.lora.enabled  # only then is peft needed: a plain run must export without it
            if lora:
                add_lora(plain, self.config.lora)
            plain.load_state_dict(state, strict=False)
            save_model((merge_lora(plain) if lora else plain).eval(), self.tokenizer, out, self.net.config.layout)
            print(f"final model: {out}")
        self.dist.barrier()
        return out
