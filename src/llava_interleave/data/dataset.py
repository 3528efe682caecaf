"""Training samples from raw records: load media, render, tokenise with labels, truncate.

A bad sample (missing or corrupt media, a slot count that does not match, nothing left after
truncation) is skipped and counted, never fatal; `SkipBudget` stops a run whose data is mostly broken.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import InterleaveError
from .batch import Encoded
from .config import DataConfig
from .defects import TOO_LONG
from .m4 import MediaResolver, SampleReader
from .placement import mix_placement
from .processor import Processor
from .records import JsonSource, Mixture
from .truncate import truncate


class TooManyBadSamples(InterleaveError):
    """More than the allowed fraction of samples was skipped."""


@dataclass(frozen=True)
class Skipped:
    """One skipped sample, located so that a person can find and fix it: a line of a run's skipped.jsonl.
    `file` and `line` are known even when the entry cannot be parsed (they come from the file's index)."""

    index: int  # in the dataset (a mixture's position, or the file's entry)
    sample_id: str  # "" when the entry cannot be read
    file: str
    line: int
    reason: str  # data/defects.py
    message: str


@dataclass
class SkipBudget:
    """Counts skipped samples by reason; raises once more than `max_ratio` of those seen were bad. A training
    run keeps one for all its processes and saves it in each checkpoint, so the budget spans resumes."""

    max_ratio: float = 0.2
    min_seen: int = 50  # do not judge on the first few samples
    seen: int = 0
    skipped: Counter = field(default_factory=Counter)  # reason -> count
    examples: dict[str, str] = field(default_factory=dict)  # reason -> first message seen

    def record(self, skip: tuple[str, str] | None) -> None:
        """Count one sample; `skip` is (reason, message) when it was skipped."""
        self.add(1, [] if skip is None else [skip])

    def add(self, seen: int, skips: Sequence[tuple[str, str]]) -> None:
        """Count `seen` samples of which `skips` ((reason, message) each) were skipped, e.g. a whole step's."""
        self.seen += seen
        for reason, message in skips:
            self.skipped[reason] += 1
            self.examples.setdefault(reason, message)
        bad = sum(self.skipped.values())
        if skips and self.seen >= self.min_seen and bad > self.max_ratio * self.seen:
            raise TooManyBadSamples(
                f"{bad} of {self.seen} samples were bad (over {self.max_ratio:.0%}); e.g. {self.examples}"
            )

    def state_dict(self) -> dict[str, Any]:
        return {"seen": self.seen, "skipped": dict(self.skipped), "examples": dict(self.examples)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seen, self.skipped, self.examples = state["seen"], Counter(state["skipped"]), dict(state["examples"])


class SFTDataset:
    """Index -> `Encoded` or None (skipped). Deterministic: sample i always gets the same placement choice."""

    def __init__(self, records: JsonSource | Mixture, resolver: MediaResolver, processor: Processor, config: DataConfig) -> None:
        self.records, self.processor, self.config = records, processor, config
        self.reader = SampleReader(records, resolver, num_frames=config.num_frames,
                                   anyres=processor.config.processor.uses_anyres)
        self.budget = SkipBudget(config.max_skip_ratio)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Encoded | None:
        encoded, skip = self.encode(index)
        self.budget.record(skip)
        return encoded

    def encode(self, index: int) -> tuple[Encoded | None, tuple[str, str] | None]:
        """The encoded sample, or None and (reason, message) saying why it was skipped."""
        try:
            sample = self.reader.sample(index)
            rng = random.Random(self.config.seed * 1_000_003 + index)
            encoded = self.processor.encode(mix_placement(sample, rng, self.config.front_fraction), add_generation_prompt=False)
        except InterleaveError as err:
            return None, (err.reason, f"sample {index}: {err}")
        shortened = truncate(encoded, self.config.max_length, self.config.truncation)
        if shortened is None:
            return None, (TOO_LONG, f"sample {index}: {len(encoded)} tokens > {self.config.max_length} ({self.config.truncation})")
        return shortened, None

    def skipped(self, index: int, skip: tuple[str, str]) -> Skipped:
        """`encode`'s (reason, message) for sample `index`, with the sample's id, file and line."""
        file, line = self.reader.where(index)
        return Skipped(index, self.reader.sample_id(index), file, line, *skip)
