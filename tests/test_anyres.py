"""Anyres arithmetic against values worked out by hand for the released settings (384 px, patch 14, 27x27)."""

from __future__ import annotations

import pytest

from llava_interleave.config import DEFAULT_PINPOINTS
from llava_interleave.data.image_processing import anyres_pictures
from llava_interleave.model.anyres import (
    anyres_token_count,
    fitted_size,
    grid_shape,
    select_best_resolution,
    unpadded_shape,
)

from .conftest import random_image

# (width, height) -> best pinpoint, (rows, cols), fitted size, un-padded feature grid, tokens
# 1000x500: (768,384) ties (768,768) and (1152,384) on effective area 294912 but wastes nothing.
# 300x200: every pinpoint keeps all 60000 px; (384,768) and (768,384) waste the least, the first wins.
# 640x480: scale 54/640 -> 40.5 rows kept -> int 40, padding 7 rows each side.
CASES = [
    ((1000, 500), (768, 384), (1, 2), (768, 384), (27, 54), 729 + 27 * 55),
    ((500, 1000), (384, 768), (2, 1), (384, 768), (54, 27), 729 + 54 * 28),
    ((300, 200), (384, 768), (2, 1), (384, 256), (18, 27), 729 + 18 * 28),
    ((1000, 1000), (768, 768), (2, 2), (768, 768), (54, 54), 729 + 54 * 55),
    ((640, 480), (768, 768), (2, 2), (768, 576), (40, 54), 729 + 40 * 55),
]


@pytest.mark.parametrize("size, best, grid, fitted, unpadded, tokens", CASES)
def test_anyres_by_hand(size, best, grid, fitted, unpadded, tokens):
    assert select_best_resolution(size, DEFAULT_PINPOINTS) == best
    assert grid_shape(size, DEFAULT_PINPOINTS, 384) == grid
    assert fitted_size(size, best) == fitted
    assert unpadded_shape(size, (grid[0] * 27, grid[1] * 27)) == unpadded
    assert anyres_token_count(size, DEFAULT_PINPOINTS, 384, 27) == tokens


@pytest.mark.parametrize("size, best, grid", [(c[0], c[1], c[2]) for c in CASES])
def test_anyres_crops(size, best, grid):
    """Base image plus rows*cols crops, all at the tower's size; the crop grid covers the pinpoint."""
    pictures = anyres_pictures(random_image(0, size), DEFAULT_PINPOINTS, 384)
    assert len(pictures) == 1 + grid[0] * grid[1]
    assert all(p.size == (384, 384) for p in pictures)


def test_padding_is_centred_and_black():
    """A wide image fitted to a tall pinpoint: the crops above and below the picture are padding."""
    image = random_image(3, (300, 200)).point(lambda v: max(v, 40))  # no black pixels in the picture itself
    base, top, bottom = anyres_pictures(image, DEFAULT_PINPOINTS, 384)
    # fitted 384x256 centred in 384x768: rows 256..511 hold the picture
    assert top.getpixel((10, 10)) == (0, 0, 0) and top.getpixel((10, 300)) != (0, 0, 0)
    assert bottom.getpixel((10, 383)) == (0, 0, 0) and bottom.getpixel((10, 50)) != (0, 0, 0)
