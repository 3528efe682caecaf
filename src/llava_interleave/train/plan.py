"""Which samples every optimiser step uses, as a pure function of (seed, step).

Each epoch has its own seeded order, grouped by modality and length in steps of `global_batch` samples
(sorted by length inside). A step takes the next `global_batch` samples of that order and cuts them into
micro-steps of `batch_size * world` samples; process r takes every world-th sample of each
micro-step. So the data position of a run is just its step number (resuming needs nothing else), and
two processes with batch b see, step by step, exactly the samples one process with batch 2b sees.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..data.sampler import LengthGroupedBatches


class StepPlan:
    def __init__(
        self,
        lengths: Sequence[int],
        modalities: Sequence[str],
        batch_size: int,
        grad_accum: int,
        world: int = 1,
        seed: int = 0,
        group_by_length: bool = True,
    ) -> None:
        self.unit = batch_size * world  # samples per micro-step over all processes
        self.global_batch = self.unit * grad_accum
        self.batch_size, self.grad_accum, self.world = batch_size, grad_accum, world
        if len(lengths) < self.global_batch:
            raise ValueError(f"{len(lengths)} samples cannot fill one step of {self.global_batch} (batch_size x processes x grad_accum)")
        # Each step is one length group (or a random draw): the order depends on the global batch only, so
        # accumulation and process count change how a step is split, never which samples it holds.
        self.grouping = LengthGroupedBatches(
            lengths if group_by_length else [0] * len(lengths),
            modalities if group_by_length else ["any"] * len(lengths),
            self.global_batch,
            seed,
            group=8 if group_by_length else 1,
        )
        self.steps_per_epoch = len(lengths) // self.global_batch
        self._order: tuple[int, tuple[int, ...]] = (-1, ())

    def epoch_order(self, epoch: int) -> tuple[int, ...]:
        if self._order[0] != epoch:  # kept for the current epoch only
            self.grouping.epoch = epoch
            self._order = (epoch, tuple(i for batch in self.grouping.batches() for i in batch))
        return self._order[1]

    def step_indices(self, step: int) -> list[int]:
        """The global batch of optimiser step `step` (0-based), in micro-step order."""
        epoch, offset = divmod(step, self.steps_per_epoch)
        start = offset * self.global_batch
        return list(self.epoch_order(epoch)[start : start + self.global_batch])

    def micro_batches(self, step: int, rank: int) -> list[list[int]]:
        """This process's `grad_accum` micro-batches for `step` (each of batch_size samples)."""
        indices = self.step_indices(step)
        units = [indices[i : i + self.unit] for i in range(0, len(indices), self.unit)]
        return [unit[rank :: self.world] for unit in units]
