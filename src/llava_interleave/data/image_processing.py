"""Pixels as the released models expect them: RGB, bicubic squash to the tower's size, rescale, normalise.

`pad` pads to a square with the mean colour first (the multi-image training recipe); anyres resizes a
lone image keeping its aspect ratio, pads it (centred, black) to the chosen pinpoint and cuts crops.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch
from PIL import Image

from ..model.anyres import fitted_size, select_best_resolution


@lru_cache(maxsize=16)
def _normalise_table(mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """(3, 256) float32: every uint8 value already rescaled by 1/255 and normalised, per channel."""
    values = torch.arange(256, dtype=torch.float32).expand(3, 256).clone()
    return values.mul_(1 / 255).sub_(torch.tensor(mean).view(3, 1)).div_(torch.tensor(std).view(3, 1)).numpy()


def to_tensor(image: Image.Image, size: int, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """PIL image -> (3, size, size) float32, squash-resized with bicubic; x * (1/255), then (x - mean) / std.

    The arithmetic is a table lookup per channel: the same float32 values, one pass over the pixels.
    """
    image = image.convert("RGB")
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BICUBIC)
    pixels = np.asarray(image)  # (S, S, 3) uint8
    table = _normalise_table(tuple(mean), tuple(std))
    out = np.empty((3, *pixels.shape[:2]), dtype=np.float32)
    for channel in range(3):
        np.take(table[channel], pixels[:, :, channel], out=out[channel])
    return torch.from_numpy(out)


def pad_to_square(image: Image.Image, mean: Sequence[float]) -> Image.Image:
    """Centre the image on a square canvas of the mean colour, e.g. (127, 127, 127) for mean 0.5."""
    image = image.convert("RGB")
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    canvas = Image.new("RGB", (side, side), tuple(int(m * 255) for m in mean))
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    return canvas


def anyres_pictures(image: Image.Image, pinpoints: Sequence[tuple[int, int]], size: int) -> list[Image.Image]:
    """[base image] + row-major size x size crops of the image fitted and padded to the best pinpoint."""
    image = image.convert("RGB")
    target_w, target_h = select_best_resolution(image.size, pinpoints)
    fit_w, fit_h = fitted_size(image.size, (target_w, target_h))
    canvas = Image.new("RGB", (target_w, target_h), (0, 0, 0))
    canvas.paste(image.resize((fit_w, fit_h), Image.Resampling.BICUBIC), ((target_w - fit_w) // 2, (target_h - fit_h) // 2))
    crops = [
        canvas.crop((left, top, left + size, top + size))
        for top in range(0, target_h, size)
        for left in range(0, target_w, size)
    ]
    return [image.resize((size, size), Image.Resampling.BICUBIC), *crops]
