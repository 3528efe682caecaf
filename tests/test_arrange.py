"""Token counts per modality and layout, and the placement of each visual item's tokens in its slot."""

from __future__ import annotations

import pytest
import torch

from llava_interleave.config import ProcessorConfig, VisionConfig
from llava_interleave.model.arrange import arrange, visual_token_count
from llava_interleave.model.inputs import Modality, VisualInput

SO400M = VisionConfig()


@pytest.mark.parametrize(
    "modality, frames, merge, pooling, expected",
    [
        (Modality.IMAGE, 1, "flat", "none", 729),
        (Modality.IMAGE, 1, "spatial_unpad", "none", 730),
        (Modality.VIEW, 1, "spatial_unpad", "none", 730),
        (Modality.VIDEO, 16, "flat", "none", 16 * 729),
        (Modality.VIDEO, 16, "flat", "average", 16 * 169),
        (Modality.VIDEO, 16, "flat", "bilinear", 16 * 196),
        (Modality.VIDEO, 10, "spatial_unpad", "average", 10 * 170),
        (Modality.PATCHES, 1, "spatial_unpad", "none", 729 + 27 * 55),  # 1000x500, see test_anyres
        (Modality.PATCHES, 1, "flat", "none", 3 * 729),  # base + 1x2 crops, flattened
    ],
)
def test_token_counts_for_released_sizes(modality, frames, merge, pooling, expected):
    proc = ProcessorConfig(patch_merge=merge, video_pooling=pooling)
    assert visual_token_count(modality, frames, (1000, 500), SO400M, proc) == expected


@pytest.mark.parametrize("size", [(100, 40), (40, 100), (30, 20), (64, 48), (50, 50), (20, 90)])
@pytest.mark.parametrize("merge", ["flat", "spatial_unpad"])
def test_arrange_length_equals_count(size, merge):
    vision = VisionConfig(image_size=28, patch_size=7, hidden_size=8, intermediate_size=8, num_layers=1, num_heads=1)
    pinpoints = ((28, 56), (56, 28), (56, 56), (84, 28), (28, 84))
    proc = ProcessorConfig(patch_merge=merge, grid_pinpoints=pinpoints)
    from llava_interleave.model.anyres import grid_shape

    grid = grid_shape(size, pinpoints, 28)
    count = visual_token_count(Modality.PATCHES, 1, size, vision, proc)
    crops = 1 + grid[0] * grid[1]
    visual = VisualInput(pixel_values=torch.zeros(crops, 3, 28, 28), modality=Modality.PATCHES, image_size=size, grid=grid, num_tokens=count)
    newline = torch.ones(5) if merge == "spatial_unpad" else None
    out = arrange(torch.randn(crops, 16, 5), visual, newline, 4)
    assert out.shape == (count, 5)


def test_anyres_arrangement_order():
    """Un-padded grid rows read left to right across crops, a newline closing each row; base first."""
    size = (4, 2)  # a 1 x 2 grid of 2x2-px crops that the image fills exactly: nothing to un-pad
    features = torch.arange(3 * 1 * 1, dtype=torch.float).view(3, 1, 1).expand(3, 1, 1).clone()
    # grid of 1x1 features per crop: base=0, crop0=1, crop1=2
    visual = VisualInput(pixel_values=torch.zeros(3, 3, 2, 2), modality=Modality.PATCHES, image_size=size, grid=(1, 2), num_tokens=0)
    out = arrange(features, visual, torch.tensor([-1.0]), 1)
    assert out.flatten().tolist() == [0.0, 1.0, 2.0, -1.0]


def test_video_pooling_values():
    """Average pooling of a 4x4 map gives the means of its 2x2 blocks; a newline follows each frame."""
    grid = 4
    frame = torch.arange(16, dtype=torch.float).view(16, 1)
    features = torch.stack([frame, frame + 100])  # (2 frames, 16, 1)
    visual = VisualInput(pixel_values=torch.zeros(2, 3, 4, 4), modality=Modality.VIDEO, image_size=(4, 4), grid=None, num_tokens=0, pooling="average")
    out = arrange(features, visual, torch.tensor([-1.0]), grid)
    assert out.flatten().tolist() == [2.5, 4.5, 10.5, 12.5, -1.0, 102.5, 104.5, 110.5, 112.5, -1.0]
