"""Training samples from raw records: load media, render, tokenise with labels, truncate.

A bad sample (missing or corrupt media, a slot count that does not match, nothing left after
truncation) is skipped and counted, never fatal; `SkipBudget` stops a run whose data is mostly broken.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..errors import InterleaveError
from .batch import Encoded
from .m4 import MediaResolver, Record, to_sample
from .placement import mix_placement
from .processor import Processor
from .truncate import TruncationPolicy, truncate


class TooManyBadSamples(InterleaveError):
    """More than the allowed fraction of samples was skipped."""


@dataclass
class SkipBudget:
    """Counts skipped samples by reason; raises once more than `max_ratio` of those seen were bad."""

    max_ratio: float = 0.2
    min_seen: int = 50  # do not judge on the first few samples
    seen: int = 0
    skipped: Counter = field(default_factory=Counter)  # reason -> count
    examples: dict[str, str] = field(default_factory=dict)  # reason -> first message seen

    def record(self, skip: tuple[str, str] | None) -> None:
        """Count one sample; `skip` is (reason, message) when it was skipped."""
        self.seen += 1
        if skip is None:
            return
        reason, message = skip
        self.skipped[reason] += 1
        self.examples.setdefault(reason, message)
        bad = sum(self.skipped.values())
        if self.seen >= self.min_seen and bad > self.max_ratio * self.seen:
            raise TooManyBadSamples(
                f"{bad} of {self.seen} samples were bad (over {self.max_ratio:.0%}); e.g. {self.examples}"
            )


@dataclass(frozen=True)
class DataConfig:
    max_length: int = 32768
    truncation: TruncationPolicy = "trailing_turns"
    num_frames: int = 16
    front_fraction: float = 0.0  # share of samples whose images move in front of the text (paper: mixed)
    max_skip_ratio: float = 0.2
    seed: int = 0


class SFTDataset:
    """Index -> `Encoded` or None (skipped). Deterministic: sample i always gets the same placement choice."""

    def __init__(self, records: Sequence[Record], resolver: MediaResolver, processor: Processor, config: DataConfig) -> None:
        self.records, self.resolver, self.processor, self.config = records, resolver, processor, config
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
            sample = to_sample(self.records[index], self.resolver, self.config.num_frames)
            rng = random.Random(self.config.seed * 1_000_003 + index)
            encoded = self.processor.encode(mix_placement(sample, rng, self.config.front_fraction), add_generation_prompt=False)
        except InterleaveError as err:
            return None, (type(err).__name__, f"sample {index}: {err}")
        shortened = truncate(encoded, self.config.max_length, self.config.truncation)
        if shortened is None:
            return None, ("too long", f"sample {index}: {len(encoded)} tokens > {self.config.max_length} ({self.config.truncation})")
        return shortened, None
