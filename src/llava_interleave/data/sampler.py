"""Length-grouped batching by modality: batches of samples with the same modality and similar length.

Similar lengths waste little padding; one modality per batch keeps the vision work uniform (a batch of
16-frame videos is not slowed by, nor slows, a batch of single images). Seeded and deterministic.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterator, Sequence


class LengthGroupedBatches:
    """Yields lists of sample indices. Within a modality, indices are shuffled, cut into mega-batches of
    `batch_size * group` samples, sorted by length inside each, and split into batches; the batch order
    is shuffled across modalities. A new `epoch` reshuffles."""

    def __init__(self, lengths: Sequence[int], modalities: Sequence[str], batch_size: int, seed: int = 0, group: int = 8) -> None:
        if len(lengths) != len(modalities):
            raise ValueError("lengths and modalities differ in size")
        self.lengths, self.modalities = lengths, modalities
        self.batch_size, self.seed, self.group = batch_size, seed, group
        self.epoch = 0

    def batches(self) -> list[list[int]]:
        rng = random.Random(self.seed * 1_000_003 + self.epoch)
        by_modality: dict[str, list[int]] = defaultdict(list)
        for index, modality in enumerate(self.modalities):
            by_modality[modality].append(index)
        batches: list[list[int]] = []
        for modality in sorted(by_modality):
            indices = by_modality[modality]
            rng.shuffle(indices)
            mega = self.batch_size * self.group
            for start in range(0, len(indices), mega):
                chunk = sorted(indices[start : start + mega], key=lambda i: self.lengths[i])
                batches += [chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        rng.shuffle(batches)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches())

    def __len__(self) -> int:
        counts: dict[str, int] = defaultdict(int)
        for modality in self.modalities:
            counts[modality] += 1
        mega = self.batch_size * self.group
        return sum(
            (n // mega) * self.group + -(-(n % mega) // self.batch_size) for n in counts.values()
        )
