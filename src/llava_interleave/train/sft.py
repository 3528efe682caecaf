"""Supervised fine-tuning on M4-Instruct-style data: next-token cross-entropy on the assistant turns.

`llava-interleave train CONFIG.yaml [key=value ...]`. Broken samples are skipped and counted (a run stops
only when more than `data.max_skip_ratio` of them are broken); packing puts each micro-batch's samples
into fewer rows, by default none longer than its longest sample (so attention never gets wider than
with padding, and the pad tokens go), with a block-diagonal mask so no sample sees another.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

from ..data.batch import Encoded
from ..data.collate import Batch, pack_collate, pack_greedy, pad_collate
from ..data.config import DataConfig
from ..data.dataset import SFTDataset, Skipped
from ..data.m4 import MediaResolver, record_scenario
from ..data.processor import IGNORE_INDEX, Processor
from ..data.records import Record, open_records, try_record
from ..data.stats import TokenCounter
from ..data.templates import get_template
from .config import TrainConfig
from .trainer import Trainer

TOKENIZER_TEXTS = 20_000  # records read to train a new model's tokenizer


def resolver_for(data: DataConfig) -> MediaResolver:
    """Media paths are relative to `data.image_root`, else to the data file's folder."""
    def path(value: str | None) -> Path | None:
        return Path(value) if value else None

    return MediaResolver(path(data.image_root) or Path(data.path).parent, path(data.video_root), path(data.video_map))


def record_texts(records: Sequence[Record]) -> Iterator[str]:
    """The turns' text of the first readable records, to train a new model's tokenizer on."""
    for index in range(min(TOKENIZER_TEXTS, len(records))):
        record = try_record(records, index)
        yield from (text for _, text in record.turns) if record else ()


def supervised(encoded: Encoded) -> int:
    """Tokens the loss is taken on (labels shifted by one, as the loss sees them)."""
    return sum(label != IGNORE_INDEX for label in encoded.labels[1:])


def token_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed next-token cross-entropy over supervised positions (fp32 softmax)."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten().to(logits.device),
                           ignore_index=IGNORE_INDEX, reduction="sum")


def sample_loss(logits: torch.Tensor, labels: torch.Tensor, segment_ids: torch.Tensor) -> torch.Tensor:
    """Each sample's mean next-token cross-entropy, summed over the samples (packed rows included).

    Why: averaged over tokens, a one-letter answer batched with 16-token captions gets a twentieth of the
    gradient; averaged per sample, a multi-choice question weighs as much as a caption."""
    target = labels[:, 1:].to(logits.device)
    per_token = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), target.flatten(), ignore_index=IGNORE_INDEX,
                                reduction="none").view_as(target)
    mask = target != IGNORE_INDEX
    segments = segment_ids[:, 1:].to(logits.device) + 1  # the sample of the row each predicted token belongs to
    stride = int(segments.max()) + 1  # one id per (row, sample)
    ids = (torch.arange(target.shape[0], device=logits.device).unsqueeze(1) * stride + segments)[mask]
    sums = torch.zeros(target.shape[0] * stride, device=logits.device).index_add(0, ids, per_token[mask])
    counts = torch.bincount(ids, minlength=sums.shape[0])
    return (sums[counts > 0] / counts[counts > 0]).sum()


def forward_batch(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    return model(batch.input_ids, batch.visuals, batch.attention_mask, batch.position_ids).logits


class SFTObjective:
    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self.records = open_records(config.data.path, config.seed)
        self.resolver = resolver_for(config.data)

    def texts(self) -> Iterator[str]:
        return record_texts(self.records)

    def prepare(self, trainer: Trainer) -> None:
        data, model_config = self.config.data, trainer.net.config
        template = get_template(self.config.model.template)
        self.pad_id = model_config.pad_token_id
        self.max_length = min(data.max_length, model_config.max_length)
        processor = Processor(trainer.tokenizer, model_config, template)
        self.dataset = SFTDataset(self.records, self.resolver, processor, replace(data, max_length=self.max_length))
        anyres = model_config.processor.uses_anyres
        if data.group_by_length:
            counter = TokenCounter(trainer.tokenizer, model_config, template)
            self.lengths, self.modalities = [], []
            for index in range(len(self.records)):  # one record at a time: nothing parsed is kept
                record = try_record(self.records, index)
                self.lengths.append(counter.count(record, self.resolver) if record else 0)
                self.modalities.append(record_scenario(record, self.resolver, anyres=anyres).value if record else "broken")
        else:
            self.lengths = [0] * len(self.records)
            self.modalities = ["any"] * len(self.records)
        self.empty = Encoded([self.pad_id], [IGNORE_INDEX], ())

    def get(self, index: int) -> Encoded | Skipped:
        encoded, skip = self.dataset.encode(index)
        return self.dataset.skipped(index, skip) if skip is not None else encoded

    def weight(self, items: Sequence[Encoded]) -> int:
        """What the summed loss is divided by: supervised tokens, or samples with any (`optim.loss_average`)."""
        if self.config.optim.loss_average == "sample":
            return sum(supervised(e) > 0 for e in items)
        return sum(map(supervised, items))

    def collate(self, items: Sequence[Encoded]) -> Batch:
        if self.config.data.packing:
            lengths = [len(e) for e in items]
            rows = pack_greedy(lengths, self.config.data.pack_tokens or max(lengths))
            return pack_collate([[items[i] for i in row] for row in rows], self.pad_id)
        return pad_collate(items, self.pad_id)

    def loss(self, model: torch.nn.Module, items: Sequence[Encoded]) -> tuple[torch.Tensor, dict[str, float]]:
        batch = self.collate(items or [self.empty])  # a rank with no good sample still joins the collectives
        logits = forward_batch(model, batch)
        if self.config.optim.loss_average == "sample":
            loss = sample_loss(logits, batch.labels, batch.segment_ids)
        else:
            loss = token_loss(logits, batch.labels)
        return loss, {"tokens": float(batch.num_tokens if items else 0)}


def train(config: TrainConfig, resume: bool = False, allow_config_change: bool = False) -> Path:
    """Run SFT; returns the final model directory (`OUT_DIR/final`). `allow_config_change`: resume although
    the config differs from the checkpoint's (train/resume.py)."""
    return Trainer(config, SFTObjective, resume, allow_config_change).run()
