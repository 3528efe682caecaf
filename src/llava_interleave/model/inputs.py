"""What the model is given for each visual item, and the modality that decides how it is arranged.

These types belong to the model: the data side (`data/`) builds them, the model only reads them, so
`model/` never imports `data/`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import torch

from ..config import VideoPooling


class Modality(str, Enum):
    IMAGE = "image"  # one of several images (multi-image scenario)
    VIDEO = "video"  # the frames of one clip, in one slot (multi-frame scenario)
    VIEW = "view"  # one view of a 3D scene (multi-view scenario)
    PATCHES = "patches"  # a lone image cut into anyres crops (multi-patch scenario)


@dataclass(frozen=True, kw_only=True)
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
