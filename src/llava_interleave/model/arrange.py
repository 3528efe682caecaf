"""Turn one visual item's projected features into its token sequence, and count those tokens.

`visual_token_count` (used by the processor to expand a slot) and `arrange` (used by the model) must
agree exactly; the tests check both on every modality.
  IMAGE / VIEW  : 729 tokens, + 1 learned newline in spatial_unpad (730).
  VIDEO         : per frame 729 / 169 (average) / 196 (bilinear), + 1 newline per frame in spatial_unpad.
  PATCHES       : spatial_unpad: base 729 + un-padded crop grid with a newline after every row;
                  flat: every crop's 729 tokens, base first.
"""

from __future__ import annotations

import torch

from ..config import ProcessorConfig, VisionConfig
from .anyres import anyres_token_count, grid_shape, unpad
from .inputs import Modality, VisualInput
from .pooling import pool_frames, pooled_grid


def visual_token_count(
    modality: Modality, num_frames: int, image_size: tuple[int, int], vision: VisionConfig, proc: ProcessorConfig
) -> int:
    newline = int(proc.uses_newline)
    grid = vision.grid
    if modality == Modality.VIDEO:
        return num_frames * (pooled_grid(grid, proc.video_pooling) ** 2 + newline)
    if modality == Modality.PATCHES:
        if proc.uses_newline:
            return anyres_token_count(image_size, proc.grid_pinpoints, vision.image_size, grid)
        rows, cols = grid_shape(image_size, proc.grid_pinpoints, vision.image_size)
        return (1 + rows * cols) * grid * grid
    return grid * grid + newline


def arrange(features: torch.Tensor, visual: VisualInput, newline: torch.Tensor | None, grid: int) -> torch.Tensor:
    """(n, grid*grid, H) projected features of one visual -> (num_tokens, H)."""
    hidden = features.shape[-1]

    def with_newline(rows: torch.Tensor) -> torch.Tensor:  # (R, T, H) -> (R, T + 1, H)
        if newline is None:
            return rows
        return torch.cat([rows, newline.to(rows.dtype).expand(rows.shape[0], 1, hidden)], dim=1)

    if visual.modality == Modality.VIDEO:
        frames = pool_frames(features, grid, visual.pooling)  # (F, g*g, H)
        return with_newline(frames).reshape(-1, hidden)
    if visual.modality == Modality.PATCHES and newline is not None:
        assert visual.grid is not None, "anyres visual without a crop grid"
        rows, cols = visual.grid
        base, crops = features[0], features[1:]
        maps = crops.view(rows, cols, grid, grid, hidden).permute(4, 0, 2, 1, 3)  # (H, rows, g, cols, g)
        maps = unpad(maps.reshape(hidden, rows * grid, cols * grid), visual.image_size)  # (H, h, w)
        lines = with_newline(maps.permute(1, 2, 0))  # (h, w + 1, H)
        return torch.cat([base, lines.reshape(-1, hidden)], dim=0)
    if visual.modality == Modality.PATCHES:
        return features.reshape(-1, hidden)
    return with_newline(features[:1]).reshape(-1, hidden)
