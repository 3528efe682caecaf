"""Shared fixtures: a tiny tokenizer, tiny random checkpoints in both layouts, small images on disk; and the
`fast` marker on every test that no heavier tier (slow, subprocess, browser, gpu) claims."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from llava_interleave.assets.tiny import make_checkpoint, make_tokenizer, tiny_config
from llava_interleave.config import ProcessorConfig

HEAVY_TIERS = ("slow", "subprocess", "browser", "gpu")
# The released 0.5B checkpoints' published configuration files (sources in the folder's README)
RELEASED_HF = Path(__file__).parent / "fixtures" / "released" / "llava-hf__llava-interleave-qwen-0.5b-hf"
RELEASED_ORIGINAL = Path(__file__).parent / "fixtures" / "released" / "lmms-lab__llava-next-interleave-qwen-0.5b"


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects, so `-m fast` sees the marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if not any(item.get_closest_marker(tier) for tier in HEAVY_TIERS):
            item.add_marker(pytest.mark.fast)


@pytest.fixture(scope="session")
def tokenizer():
    return make_tokenizer()


@pytest.fixture(scope="session")
def hf_checkpoint(tmp_path_factory, tokenizer) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("hf"), tiny_config(tokenizer, "hf"), tokenizer)


@pytest.fixture(scope="session")
def original_checkpoint(tmp_path_factory, tokenizer) -> Path:
    """spatial_unpad + anyres, like the released original-layout 0.5B."""
    return make_checkpoint(tmp_path_factory.mktemp("orig"), tiny_config(tokenizer, "original"), tokenizer, seed=1)


@pytest.fixture(scope="session")
def original_flat_checkpoint(tmp_path_factory, tokenizer) -> Path:
    config = tiny_config(tokenizer, "original", ProcessorConfig(image_aspect="squash", patch_merge="flat"))
    return make_checkpoint(tmp_path_factory.mktemp("orig_flat"), config, tokenizer, seed=2)


def random_image(seed: int, size: tuple[int, int] = (40, 30)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


@pytest.fixture(scope="session")
def image_files(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("images")
    paths = []
    for i in range(6):
        path = folder / f"img{i}.png"
        random_image(i, (30 + 7 * i, 50 - 4 * i)).save(path)
        paths.append(path)
    return paths


def write_clip(path: Path, frames: int = 24, size: tuple[int, int] = (64, 48)) -> Path:
    """An mp4 whose frame i is a flat grey of level 8 * i, so sampled frames can be identified."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=12)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for i in range(frames):
            array = np.full((size[1], size[0], 3), 8 * i, dtype=np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")))
        container.mux(stream.encode(None))
    return path
