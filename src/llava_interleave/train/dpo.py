"""Video/image DPO: `llava-interleave dpo CONFIG.yaml`.

Data: a JSON list or JSONL of `{"id", "prompt", "chosen", "rejected", "video" | "image"}`. Each pair becomes
two ordinary samples (prompt + chosen, prompt + rejected) through the SFT data path, so media, templates
and truncation behave exactly as in SFT. Chosen and rejected go through the model in one concatenated
forward pass; the reference is a frozen copy of the starting model, another checkpoint, or log-probs
precomputed in a JSONL (`{"id", "chosen", "rejected"}`).
"""

from __future__ import annotations

import copy
import json
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from ..data.batch import Encoded
from ..data.collate import pad_collate
from ..data.dataset import Skipped
from ..data.m4 import to_sample
from ..data.processor import IGNORE_INDEX, Processor
from ..data.records import DataError, JsonSource, Record, entry_id, parse_record
from ..data.templates import get_template
from ..errors import InterleaveError
from ..model.checkpoint import load_model
from .config import ConfigError, TrainConfig
from .dpo_loss import dpo_loss, dpo_objective, sequence_logprobs, split_concatenated
from .sft import TOKENIZER_TEXTS, forward_batch, resolver_for, supervised
from .trainer import Trainer

FIELDS = ("prompt", "chosen", "rejected")


@dataclass(frozen=True)
class Pair:
    id: str
    chosen: Encoded
    rejected: Encoded
    reference: tuple[float, float] | None = None  # precomputed (chosen, rejected) reference log-probs


def parse_pair(obj: Any, source: str, line: int) -> tuple[Record, Record]:
    """One preference entry -> (prompt + chosen, prompt + rejected) records; a wrong shape names its line."""
    if not isinstance(obj, dict):
        raise DataError("a preference entry must be an object", source, line)
    missing = [k for k in ("id", *FIELDS) if not isinstance(obj.get(k), str)]
    if missing:
        raise DataError(f"needs string fields id, prompt, chosen, rejected (missing or not text: {', '.join(missing)})", source, line)
    def record(answer: str) -> Record:  # an M4 entry of one round, checked by the same rules as SFT data
        turns = [{"from": "human", "value": obj["prompt"]}, {"from": "gpt", "value": obj[answer]}]
        entry = {"id": obj["id"], "image": obj.get("image"), "video": obj.get("video"), "conversations": turns}
        return parse_record(entry, source, 0, line)

    return record("chosen"), record("rejected")


def read_reference(path: str) -> dict[str, tuple[float, float]]:
    out = {}
    for number, text in enumerate(Path(path).read_text().splitlines(), 1):
        if text.strip():
            try:
                row = json.loads(text)
                out[str(row["id"])] = (float(row["chosen"]), float(row["rejected"]))
            except (ValueError, KeyError, TypeError) as err:
                raise DataError(f"bad reference log-prob line ({err})", path, number) from err
    return out


class DPOObjective:
    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self.source = JsonSource(config.data.path)
        self.resolver = resolver_for(config.data)
        raws = [self._raw(i) for i in range(len(self.source))]
        self.modalities = ["video" if isinstance(r, dict) and r.get("video") else "image" for r in raws]
        self.lengths = [len(json.dumps(r)) // 4 for r in raws]  # characters / 4: a cheap proxy for grouping
        spec = config.dpo
        self.precomputed = read_reference(spec.reference_logprobs) if spec.reference_logprobs else None

    def _raw(self, index: int) -> Any:
        try:
            return self.source.raw(index)
        except DataError:
            return None  # reported (and skipped) when the pair is used

    def texts(self) -> Iterator[str]:
        for i in range(min(len(self.source), TOKENIZER_TEXTS)):
            raw = self._raw(i)
            yield from (str(raw.get(k, "")) for k in FIELDS) if isinstance(raw, dict) else ()

    def prepare(self, trainer: Trainer) -> None:
        self.processor = Processor(trainer.tokenizer, trainer.net.config, get_template(self.config.model.template))
        self.pad_id = trainer.net.config.pad_token_id
        self.reference: torch.nn.Module | None = None
        if self.precomputed is None:
            source = self.config.dpo.reference
            net = load_model(source, device="cpu", dtype=torch.float32)[0] if source else copy.deepcopy(trainer.net)
            self.reference = net.to(trainer.device).eval().requires_grad_(False)

    def get(self, index: int) -> Pair | Skipped:
        try:
            chosen, rejected = parse_pair(self.source.raw(index), str(self.source.path), self.source.line(index))
            encoded = [self.encode(r) for r in (chosen, rejected)]
            reference = None
            if self.precomputed is not None:
                if chosen.id not in self.precomputed:
                    raise DataError(f"no precomputed reference log-probs for id {chosen.id!r}")
                reference = self.precomputed[chosen.id]
        except InterleaveError as err:
            return Skipped(index, entry_id(self.source, index), str(self.source.path), self.source.line(index),
                           err.reason, f"pair {index}: {err}")
        return Pair(chosen.id, encoded[0], encoded[1], reference)

    def encode(self, record: Record) -> Encoded:
        sample = to_sample(record, self.resolver, num_frames=self.config.data.num_frames,
                           anyres=self.processor.config.processor.uses_anyres)
        encoded = self.processor.encode(sample, add_generation_prompt=False)
        if len(encoded) > self.config.data.max_length:
            raise DataError(f"{len(encoded)} tokens > data.max_length {self.config.data.max_length}")
        return encoded

    def weight(self, items: Sequence[Pair]) -> int:
        return len(items)

    def logprobs(self, model: torch.nn.Module, items: Sequence[Pair]) -> tuple[torch.Tensor, int]:
        """Summed answer log-probs of chosen then rejected, from one forward pass."""
        batch = pad_collate([p.chosen for p in items] + [p.rejected for p in items], self.pad_id)
        logits = forward_batch(model, batch)
        return sequence_logprobs(logits, batch.labels.to(logits.device)), batch.num_tokens

    def loss(self, model: torch.nn.Module, items: Sequence[Pair]) -> tuple[torch.Tensor, dict[str, float]]:
        if not items:  # this rank's pairs were all broken: join the collectives with a zero loss
            empty = Encoded([self.pad_id], [IGNORE_INDEX], ())
            return forward_batch(model, pad_collate([empty], self.pad_id)).sum() * 0.0, {}
        policy, tokens = self.logprobs(model, items)
        if self.reference is not None:
            with torch.no_grad():
                reference = self.logprobs(self.reference, items)[0]
        else:
            pairs = [p.reference for p in items if p.reference is not None]
            reference = torch.tensor([c for c, _ in pairs] + [r for _, r in pairs], device=policy.device)
        chosen, rejected = split_concatenated(policy)
        ref_chosen, ref_rejected = split_concatenated(reference)
        spec = self.config.dpo
        out = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, spec.beta)
        answer_tokens = torch.tensor([max(1, supervised(p.chosen)) for p in items], device=chosen.device)
        total = dpo_objective(out, (-chosen / answer_tokens).mean(), spec.alpha, spec.gamma) * len(items)
        n = len(items)
        return total, {
            "reward_accuracy": float(out.reward_accuracy) * n, "margin": float(out.margin) * n,
            "chosen_reward": float(out.chosen_rewards.sum()), "rejected_reward": float(out.rejected_rewards.sum()),
            "tokens": float(tokens),
        }


def train(config: TrainConfig, resume: bool = False, allow_config_change: bool = False) -> Path:
    """Run DPO; returns the final model directory (`OUT_DIR/final`). `allow_config_change`: resume although
    the config differs from the checkpoint's (train/resume.py)."""
    return Trainer(config, DPOObjective, resume, allow_config_change).run()


def write_reference(config: TrainConfig, out: str | Path) -> int:
    """Score every pair with the reference model once and write `{id, chosen, rejected}` lines: training with
    `dpo.reference_logprobs` then needs no second model in memory. Returns the number of pairs written."""
    trainer = Trainer(replace(config, dpo=replace(config.dpo, reference_logprobs=None)), DPOObjective)
    if trainer.dist.world > 1:
        raise ConfigError("--write-reference runs in one process (not under torchrun)")
    objective: DPOObjective = trainer.objective  # type: ignore[assignment]
    written, skipped = 0, Counter[str]()
    with open(out, "w") as f, torch.no_grad(), trainer.autocast():
        for index in range(len(objective.source)):
            pair = objective.get(index)
            if isinstance(pair, Skipped):
                skipped[pair.reason] += 1
                continue
            chosen, rejected = split_concatenated(objective.logprobs(objective.reference, [pair])[0])
            f.write(json.dumps({"id": pair.id, "chosen": float(chosen), "rejected": float(rejected)}) + "\n")
            written += 1
    print(f"wrote reference log-probs of {written} pairs to {out}; skipped: {dict(skipped) or 'none'}")
    return written
