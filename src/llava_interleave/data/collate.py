"""Batches for training: dynamic right padding, or packing several samples into one row.

Packing keeps every sample's own positions (0, 1, 2, ... from its first token) and a block-diagonal
causal mask, so no token attends across a sample boundary: a packed row computes exactly what the
samples would compute alone, without the padding. Either the collator builds the (B, 1, L, L) boolean
mask (`block_mask=True`, for SDPA/eager), or it leaves `attention_mask` None and transformers finds the
sample boundaries from the restarting position ids: with flash attention installed and chosen that is the
variable-length kernel path, with no L x L mask anywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from ..model.inputs import VisualInput
from .batch import Encoded
from .processor import IGNORE_INDEX


@dataclass(frozen=True, kw_only=True)
class Batch:
    input_ids: torch.Tensor  # (B, L)
    labels: torch.Tensor  # (B, L), IGNORE_INDEX where not supervised
    attention_mask: torch.Tensor | None  # (B, L) padding mask; packed: (B, 1, L, L) block mask, or None
    position_ids: torch.Tensor  # (B, L), restarting at 0 for every packed sample
    visuals: tuple[VisualInput, ...]  # in slot order, row by row
    segment_ids: torch.Tensor  # (B, L): which sample of the row a token belongs to, -1 for padding

    @property
    def num_tokens(self) -> int:
        return int((self.segment_ids >= 0).sum())


def pad_collate(samples: Sequence[Encoded], pad_token_id: int) -> Batch:
    """One sample per row, right-padded to the longest."""
    return _collate([[s] for s in samples], pad_token_id, packed=False)


def pack_collate(rows: Sequence[Sequence[Encoded]], pad_token_id: int, block_mask: bool = True) -> Batch:
    """Several samples per row (as grouped by `pack_greedy`), right-padded to the longest row.

    block_mask=False leaves the mask to transformers, which derives it from the position ids."""
    batch = _collate(rows, pad_token_id, packed=True)
    return batch if block_mask else replace(batch, attention_mask=None)


def pack_greedy(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Group sample indices into rows of at most `max_tokens` (first-fit decreasing); a longer sample gets its own row."""
    rows: list[list[int]] = []
    room: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        fit = next((r for r, free in enumerate(room) if lengths[index] <= free), None)
        if fit is None:
            rows.append([index])
            room.append(max_tokens - lengths[index])
        else:
            rows[fit].append(index)
            room[fit] -= lengths[index]
    return rows


def _collate(rows: Sequence[Sequence[Encoded]], pad_token_id: int, packed: bool) -> Batch:
    width = max(sum(len(s) for s in row) for row in rows)
    shape = (len(rows), width)
    ids = torch.full(shape, pad_token_id, dtype=torch.long)
    labels = torch.full(shape, IGNORE_INDEX, dtype=torch.long)
    positions = torch.zeros(shape, dtype=torch.long)
    segments = torch.full(shape, -1, dtype=torch.long)
    visuals: list[VisualInput] = []
    for r, row in enumerate(rows):
        start = 0
        for k, sample in enumerate(row):
            end = start + len(sample)
            ids[r, start:end] = torch.tensor(sample.input_ids)
            labels[r, start:end] = torch.tensor(sample.labels)
            positions[r, start:end] = torch.arange(len(sample))
            segments[r, start:end] = k
            visuals.extend(sample.visuals)
            start = end
    mask = block_causal_mask(segments) if packed else (segments >= 0).long()
    return Batch(input_ids=ids, labels=labels, attention_mask=mask, position_ids=positions, visuals=tuple(visuals),
                 segment_ids=segments)


def block_causal_mask(segments: torch.Tensor) -> torch.Tensor:
    """(B, L) segment ids -> (B, 1, L, L) bool: attend to earlier tokens of the same sample (padding to itself)."""
    length = segments.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    same = segments[:, :, None] == segments[:, None, :]
    real = (segments >= 0)[:, None, :]
    self_only = torch.eye(length, dtype=torch.bool)  # padding rows attend to themselves: no all-masked rows
    return ((same & real & causal) | self_only)[:, None]
