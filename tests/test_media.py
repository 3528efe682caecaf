"""Image and video loading: sampling, order, frame folders, and one clear error per kind of bad file."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from llava_interleave.data.media import is_video_path, load_image, load_video, sample_indices
from llava_interleave.errors import MediaError

from .conftest import random_image, write_clip


def _levels(frames: list[Image.Image]) -> list[int]:
    """Frame i of `write_clip` is grey level 8 * i."""
    return [round(float(np.asarray(f.convert("L")).mean()) / 8) for f in frames]


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_clip(tmp_path_factory.mktemp("media") / "clip.mp4", frames=24)


def test_sample_indices():
    assert sample_indices(24, 4) == [0, 8, 15, 23]
    assert sample_indices(10, 10) == list(range(10))
    assert sample_indices(3, 16) == [0, 1, 2]
    assert sample_indices(100, 1) == [0]
    with pytest.raises(ValueError):
        sample_indices(10, 0)


@pytest.mark.parametrize("count", [8, 16])
def test_uniform_frames_in_order(clip, count):
    frames = load_video(clip, count)
    assert len(frames) == count and all(f.mode == "RGB" and f.size == (64, 48) for f in frames)
    assert _levels(frames) == sample_indices(24, count)


def test_short_video_gives_all_frames(tmp_path):
    frames = load_video(write_clip(tmp_path / "short.mp4", frames=5), 16)
    assert _levels(frames) == [0, 1, 2, 3, 4]


def test_sampling_by_rate(clip):
    """24 frames at 12 fps last 2 s: 2 fps gives ticks 0, 0.5, 1.0, 1.5 s -> frames 0, 6, 12, 18 (and not over 16)."""
    assert _levels(load_video(clip, 16, fps=2)) == [0, 6, 12, 18]
    assert len(load_video(clip, 3, fps=12)) == 3


def test_frame_folder_natural_order(tmp_path):
    for i in range(12):
        Image.new("RGB", (8, 8), (8 * i,) * 3).save(tmp_path / f"frame_{i}.png")
    (tmp_path / "notes.txt").write_text("not a frame")
    assert is_video_path(tmp_path)
    assert _levels(load_video(tmp_path, 4)) == [0, 4, 7, 11]


@pytest.mark.parametrize("name, content, message", [
    ("missing.png", None, "image not found"),
    ("noise.png", b"\x00\x01garbage" * 20, "cannot read image"),
])
def test_bad_images(tmp_path, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(MediaError, match=message) as err:
        load_image(path)
    assert str(path) in str(err.value)


def test_truncated_png_fails_at_load(tmp_path):
    path = tmp_path / "cut.png"
    random_image(0, (64, 64)).save(path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(MediaError, match="cannot read image"):
        load_image(path)


def test_decompression_bomb_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.new("RGB", (300, 300)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(MediaError, match="too large"):
        load_image(path)


def test_bad_videos(tmp_path):
    with pytest.raises(MediaError, match="video not found"):
        load_video(tmp_path / "nope.mp4")
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x13" * 500)
    with pytest.raises(MediaError, match="corrupt.mp4"):
        load_video(corrupt)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MediaError, match="no images"):
        load_video(empty)
