"""Image and video loading: sampling, order, frame folders, and one clear error per kind of bad file."""

from __future__ import annotations

import wave

import av
import numpy as np
import pytest
from PIL import Image

from llava_interleave.data.media import is_video_path, load_image, load_video, sample_indices
from llava_interleave.errors import MediaError

from .conftest import random_image, write_clip

EVERY_8_OF_24 = [0, 3, 7, 10, 13, 16, 20, 23]
EVERY_16_OF_24 = [0, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18, 20, 21, 23]


def _levels(frames: list[Image.Image]) -> list[int]:
    """Frame i of `write_clip` (and of the frame folders below) is a flat grey of level 8 * i."""
    return [round(float(np.asarray(f.convert("L")).mean()) / 8) for f in frames]


def _check_message(err: pytest.ExceptionInfo, path) -> None:
    """A MediaError message names the path and fits on one line."""
    message = str(err.value)
    assert str(path) in message and "\n" not in message, message


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """24 frames at 12 fps (2 s); mp4 stores the frame count in its header."""
    return write_clip(tmp_path_factory.mktemp("media") / "clip.mp4", frames=24)


def test_sample_indices():
    assert sample_indices(24, 4) == [0, 8, 15, 23]
    assert sample_indices(24, 8) == EVERY_8_OF_24
    assert sample_indices(24, 2) == [0, 23]
    assert sample_indices(100, 1) == [0]
    assert sample_indices(10, 10) == list(range(10))
    assert sample_indices(3, 16) == [0, 1, 2]
    assert sample_indices(0, 16) == []
    for bad in (0, -3):
        with pytest.raises(MediaError, match="frames to sample"):
            sample_indices(10, bad)


@pytest.mark.parametrize("count, expected", [(8, EVERY_8_OF_24), (16, EVERY_16_OF_24)])
def test_uniform_frames_in_order(clip, count, expected):
    frames = load_video(clip, count)
    assert len(frames) == count and all(f.mode == "RGB" and f.size == (64, 48) for f in frames)
    assert _levels(frames) == expected


def test_video_without_frame_count_is_counted_first(tmp_path):
    path = write_clip(tmp_path / "clip.mkv", frames=24)
    with av.open(str(path)) as container:
        assert container.streams.video[0].frames == 0  # so the counting pass is what runs
    assert _levels(load_video(path, 8)) == EVERY_8_OF_24


def test_short_video_gives_all_frames(tmp_path):
    frames = load_video(write_clip(tmp_path / "short.mp4", frames=5), 16)
    assert _levels(frames) == [0, 1, 2, 3, 4]


def test_sampling_by_rate(clip):
    """At 12 fps, 2 fps ticks 0, 0.5, 1.0, 1.5 s are frames 0, 6, 12, 18; too many ticks are thinned to num_frames."""
    assert _levels(load_video(clip, 16, fps=2)) == [0, 6, 12, 18]
    assert _levels(load_video(clip, 16, fps=1)) == [0, 12]
    assert _levels(load_video(clip, 8, fps=12)) == EVERY_8_OF_24
    assert _levels(load_video(clip, 32, fps=48)) == list(range(24))  # faster than the video: each frame once


def test_bad_arguments(clip):
    with pytest.raises(MediaError, match="fps"):
        load_video(clip, 8, fps=0)
    with pytest.raises(MediaError, match="frames to sample"):
        load_video(clip, 0)


def test_frame_folder_natural_order(tmp_path):
    for i in reversed(range(12)):
        Image.new("RGB", (8, 8), (8 * i,) * 3).save(tmp_path / f"frame_{i}.png")
    (tmp_path / "notes.txt").write_text("not a frame")
    assert is_video_path(tmp_path)
    assert _levels(load_video(tmp_path, 16)) == list(range(12))  # plain string order would put frame_10 third
    assert _levels(load_video(tmp_path, 4)) == [0, 4, 7, 11]
    assert _levels(load_video(tmp_path, 4, fps=100)) == [0, 4, 7, 11]  # fps does not apply to folders


def test_is_video_path(tmp_path):
    assert is_video_path(tmp_path)
    assert is_video_path("clip.mp4") and is_video_path("CLIP.MOV") and is_video_path("x/y.webm")
    assert not is_video_path(tmp_path / "photo.png")
    assert not is_video_path("notes.txt")


def test_load_image_gives_rgb(tmp_path):
    grey = Image.new("L", (5, 3), 77)
    assert load_image(grey).mode == "RGB" and load_image(grey).getpixel((0, 0)) == (77, 77, 77)
    path = tmp_path / "pic.png"
    original = random_image(3, (20, 10))
    original.convert("RGBA").save(path)
    loaded = load_image(path)
    assert loaded.mode == "RGB" and np.array_equal(np.asarray(loaded), np.asarray(original))


@pytest.mark.parametrize("name, content, message", [
    ("missing.png", None, "image not found"),
    ("noise.png", bytes(np.random.default_rng(0).integers(0, 256, 300, dtype=np.uint8)), "cannot read image"),
])
def test_bad_images(tmp_path, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(MediaError, match=message) as err:
        load_image(path)
    _check_message(err, path)


def test_truncated_png_fails_at_load(tmp_path):
    path = tmp_path / "cut.png"
    random_image(0, (64, 64)).save(path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(MediaError, match="cannot read image") as err:
        load_image(path)
    _check_message(err, path)


@pytest.mark.parametrize("side", [40, 300])  # 1600 pixels warns, 90000 errors, with a limit of 1000
def test_decompression_bomb_is_refused(tmp_path, monkeypatch, side):
    path = tmp_path / "big.png"
    Image.new("RGB", (side, side)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(MediaError, match="too large") as err:
        load_image(path)
    _check_message(err, path)


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


def _empty_avi(path):
    """A valid container with a video stream and not a single frame."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=12)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        container.start_encoding()
    return path


def _audio_only(path):
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(8000)
        out.writeframes(b"\0" * 1600)
    return path


def _empty_folder(path):
    path.mkdir()
    return path


@pytest.mark.parametrize("make, message", [
    (lambda d: d / "nope.mp4", "video not found"),
    (lambda d: _write(d / "corrupt.mp4", b"\x00\x00\x00\x18ftypmp42" + b"\x13" * 500), "cannot decode video"),
    (lambda d: _write(d / "notes.mp4", b"hello"), "cannot decode video"),
    (lambda d: _audio_only(d / "sound.wav"), "not a video"),
    (lambda d: _empty_avi(d / "empty.avi"), "no decodable frames"),
    (lambda d: _empty_folder(d / "frames"), "frame folder has no images"),
])
def test_bad_videos(tmp_path, make, message):
    path = make(tmp_path)
    with pytest.raises(MediaError, match=message) as err:
        load_video(path)
    _check_message(err, path)
