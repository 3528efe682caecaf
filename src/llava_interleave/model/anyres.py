"""Anyres: one image cut into crops on a grid chosen from `grid_pinpoints`, as LLaVA-NeXT does it.

Sizes are (width, height) like PIL's, and pinpoints are (width, height) pairs. The pixel side
(resize-and-pad, crops) lives in `data/image_processing.py`; this module holds the arithmetic that
both the processor (token counts) and the model (un-padding features) must agree on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

Size = tuple[int, int]  # (width, height)


def select_best_resolution(image_size: Size, pinpoints: Sequence[Size]) -> Size:
    """The pinpoint that keeps the most of the image's resolution; ties go to the least wasted area."""
    width, height = image_size
    best, best_effective, best_wasted = pinpoints[0], -1, math.inf
    for target_w, target_h in pinpoints:
        scale = min(target_w / width, target_h / height)
        effective = min(int(width * scale) * int(height * scale), width * height)
        wasted = target_w * target_h - effective
        if effective > best_effective or (effective == best_effective and wasted < best_wasted):
            best, best_effective, best_wasted = (target_w, target_h), effective, wasted
    return best


def fitted_size(image_size: Size, target: Size) -> Size:
    """Size of the image resized, keeping its aspect ratio, to fit inside `target` (before centred padding)."""
    width, height = image_size
    target_w, target_h = target
    scale_w, scale_h = target_w / width, target_h / height
    if scale_w < scale_h:
        return target_w, min(math.ceil(height * scale_w), target_h)
    return min(math.ceil(width * scale_h), target_w), target_h


def grid_shape(image_size: Size, pinpoints: Sequence[Size], crop_size: int) -> tuple[int, int]:
    """(rows, cols) of crops for an image."""
    target_w, target_h = select_best_resolution(image_size, pinpoints)
    return target_h // crop_size, target_w // crop_size


def unpadded_shape(image_size: Size, padded_hw: tuple[int, int]) -> tuple[int, int]:
    """(rows, cols) of a feature map of shape `padded_hw` left after removing the centred padding.

    Reproduces LLaVA-NeXT's `unpad_image`: padding = (current - new) // 2 removed from both sides.
    """
    width, height = image_size
    cur_h, cur_w = padded_hw
    if width / height > cur_w / cur_h:
        new_h = int(round(height * (cur_w / width), 7))
        pad = (cur_h - new_h) // 2
        return cur_h - 2 * pad, cur_w
    new_w = int(round(width * (cur_h / height), 7))
    pad = (cur_w - new_w) // 2
    return cur_h, cur_w - 2 * pad


def unpad(features: torch.Tensor, image_size: Size) -> torch.Tensor:
    """(C, H, W) grid features -> (C, h, w) with the padding rows or columns cut away."""
    cur_h, cur_w = features.shape[1:]
    rows, cols = unpadded_shape(image_size, (cur_h, cur_w))
    top, left = (cur_h - rows) // 2, (cur_w - cols) // 2
    return features[:, top : top + rows, left : left + cols]


def anyres_token_count(image_size: Size, pinpoints: Sequence[Size], crop_size: int, grid: int) -> int:
    """Base image (grid^2) + un-padded crop grid with a newline after every row."""
    rows, cols = grid_shape(image_size, pinpoints, crop_size)
    h, w = unpadded_shape(image_size, (rows * grid, cols * grid))
    return grid * grid + h * (w + 1)
