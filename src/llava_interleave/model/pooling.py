"""2x2 spatial pooling of video frame features: "average" (27x27 -> 13x13 = 169) or "bilinear" (-> 14x14 = 196)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..config import VideoPooling


def pooled_grid(grid: int, mode: VideoPooling) -> int:
    if mode == "none":
        return grid
    if mode == "average":
        return grid // 2
    if mode == "bilinear":
        return math.ceil(grid / 2)
    raise ValueError(f"unknown video pooling {mode!r}; expected none, average or bilinear")


def pool_frames(features: torch.Tensor, grid: int, mode: VideoPooling) -> torch.Tensor:
    """(F, grid*grid, C) -> (F, g*g, C) with g = pooled_grid(grid, mode)."""
    if mode == "none":
        return features
    frames, _, channels = features.shape
    maps = features.view(frames, grid, grid, channels).permute(0, 3, 1, 2)  # (F, C, 27, 27)
    if mode == "average":
        maps = F.avg_pool2d(maps, kernel_size=2, stride=2)
    else:
        size = pooled_grid(grid, mode)
        maps = F.interpolate(maps, size=(size, size), mode="bilinear")
    return maps.flatten(2).transpose(1, 2)  # (F, g*g, C)
