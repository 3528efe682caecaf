"""What the model consumes: token ids with visual slots already expanded, and pixel tensors per visual."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import VideoPooling
from .sample import Modality


@dataclass(frozen=True)
class VisualInput:
    """One visual item ready for the tower.

    pixel_values: (n, 3, S, S): n video frames, or the base image followed by row-major anyres crops.
    image_size: (width, height) of the original picture; anyres un-padding needs it.
    grid: (rows, cols) of anyres crops, else None.
    num_tokens: how many slots it fills in the token sequence; the model checks it.
    pooling: how video frames are pooled; the processor decides, the model follows.
    """

    pixel_values: torch.Tensor
    modality: Modality
    image_size: tuple[int, int]
    grid: tuple[int, int] | None
    num_tokens: int
    pooling: VideoPooling = "none"


@dataclass(frozen=True)
class Encoded:
    """One rendered, tokenised sample. `labels` use -100 for positions that are not supervised."""

    input_ids: list[int]
    labels: list[int]
    visuals: tuple[VisualInput, ...]
    turn_ends: tuple[int, ...] = ()  # token offsets just after each complete turn
    visual_starts: tuple[int, ...] = ()  # token offset of each visual's first slot

    def __len__(self) -> int:
        return len(self.input_ids)
