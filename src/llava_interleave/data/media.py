"""Loading images and videos, with one-line errors naming the file and the cause.

Videos are decoded with PyAV and sampled uniformly (first and last frame included) or by rate; a video
shorter than the requested count gives all of its frames. A folder of frame images counts as a video.
Errors are `MediaError` so the CLI can print them without a traceback, instead of failing deep in the model.
`load_media` is the one loader every source goes through (see data/conversation.py).
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np
from PIL import Image

from ..errors import MediaError
from .defects import IMAGE_TOO_LARGE, MAX_IMAGE_PIXELS, MISSING_MEDIA

FRAME_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
VIDEO_EXTENSIONS = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".gif", ".m4v", ".mpeg", ".mpg"}


def _cause(err: BaseException) -> str:
    """The library's message squeezed to one line, so every error stays a single line."""
    return " ".join(str(err).split()) or type(err).__name__


def check_pixels(size: tuple[int, int], name: str) -> None:
    """Refuse a picture whose header claims more than `MAX_IMAGE_PIXELS`, before a byte of it is decoded."""
    width, height = size
    if width < 1 or height < 1 or width * height > MAX_IMAGE_PIXELS:
        raise MediaError(f"{name}: {width}x{height} pixels, over the limit of {MAX_IMAGE_PIXELS:,}", reason=IMAGE_TOO_LARGE)


def load_image(source: str | os.PathLike | Image.Image) -> Image.Image:
    """An RGB image, fully decoded now so that a truncated file fails here and not inside the model."""
    if isinstance(source, Image.Image):
        check_pixels(source.size, "image")
        return source if source.mode == "RGB" else source.convert("RGB")  # no copy of a big RGB picture
    path = Path(source)
    if not path.is_file():
        raise MediaError(f"image not found: {path}" if not path.exists() else f"not an image file: {path}",
                         reason=MISSING_MEDIA)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                check_pixels(image.size, str(path))
                image.load()
                return image if image.mode == "RGB" else image.convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise MediaError(f"image too large (decompression bomb guard): {path}: {_cause(err)}", reason=IMAGE_TOO_LARGE) from err
    except (OSError, ValueError, SyntaxError, EOFError) as err:
        raise MediaError(f"cannot read image {path}: {_cause(err)}") from err


def is_video_path(path: str | os.PathLike) -> bool:
    """Whether a path is meant as a video (a frame folder or a video file), judged without opening it."""
    path = Path(path)
    return path.is_dir() or path.suffix.lower() in VIDEO_EXTENSIONS


def sample_indices(total: int, num_frames: int) -> list[int]:
    """`num_frames` indices spread evenly over `total` frames, first and last included; all frames when
    there are not more, so a short video never crashes."""
    if num_frames < 1:
        raise MediaError(f"the number of frames to sample must be at least 1, got {num_frames}")
    if total <= num_frames:
        return list(range(total))
    return np.linspace(0, total - 1, num_frames).round().astype(int).tolist()


def load_video(path: str | os.PathLike, num_frames: int = 16, fps: float | None = None) -> list[Image.Image]:
    """At most `num_frames` RGB frames of a video file or a frame folder, in temporal order.

    With `fps`, frames are first picked one every 1/fps seconds by timestamp (fps is ignored for folders).
    """
    if num_frames < 1:
        raise MediaError(f"the number of frames to sample must be at least 1, got {num_frames}")
    if fps is not None and fps <= 0:
        raise MediaError(f"fps must be a number > 0, got {fps}")
    path = Path(path)
    if path.is_dir():
        return _load_frame_folder(path, num_frames)
    if not path.is_file():
        raise MediaError(f"video not found: {path}" if not path.exists() else f"not a video file: {path}",
                         reason=MISSING_MEDIA)
    try:
        frames = _keep_frames(path, _pick_frames(path, num_frames, fps))
    except (av.FFmpegError, OSError, ValueError, EOFError) as err:
        raise MediaError(f"cannot decode video (corrupt or unsupported) {path}: {_cause(err)}") from err
    if not frames:
        raise MediaError(f"video has no decodable frames: {path}")
    return frames


def _pick_frames(path: Path, num_frames: int, fps: float | None) -> list[int]:
    """The indices to keep: from the header's frame count, or else by a counting pass (which holds no frames)."""
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise MediaError(f"not a video (no video stream): {path}")
        stream = container.streams.video[0]
        check_pixels((stream.codec_context.width or 1, stream.codec_context.height or 1), f"video {path}")
        stream.thread_type = "AUTO"
        if fps is not None:
            ticks = _by_rate([float(f.time or 0.0) for f in container.decode(stream)], fps)
            return [ticks[i] for i in sample_indices(len(ticks), num_frames)]
        return sample_indices(stream.frames or sum(1 for _ in container.decode(stream)), num_frames)


def _keep_frames(path: Path, wanted: list[int]) -> list[Image.Image]:
    """One decoding pass that converts only the wanted frames and stops after the last of them."""
    keep, frames = set(wanted), []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for index, frame in enumerate(container.decode(stream)):
            if index in keep:
                frames.append(frame.to_image())
                if len(frames) == len(keep):
                    break
    return frames


def _by_rate(times: list[float], fps: float) -> list[int]:
    """Index of the frame closest in time to each tick 0, 1/fps, 2/fps ... up to the last frame."""
    if not times:
        return []
    ticks = np.arange(0.0, times[-1] + 1e-9, 1.0 / fps)
    nearest = np.interp(ticks, times, np.arange(len(times))).round().astype(int)
    return np.unique(nearest).tolist()


def _natural_key(path: Path) -> list[int | str]:
    """Sort key under which frame_2 comes before frame_10."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


def _load_frame_folder(folder: Path, num_frames: int) -> list[Image.Image]:
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in FRAME_EXTENSIONS]
    if not files:
        raise MediaError(f"frame folder has no images ({', '.join(sorted(FRAME_EXTENSIONS))}): {folder}")
    files.sort(key=_natural_key)
    return [load_image(files[i]) for i in sample_indices(len(files), num_frames)]


@dataclass(frozen=True)
class Loaded:
    frames: tuple[Image.Image, ...]
    is_video: bool
    name: str  # where it came from, for error messages ("" for a picture given in memory)


def load_media(source: Any, *, video: bool, num_frames: int, fps: float | None = None) -> Loaded:
    """Decode one medium: a picture in memory, an image path, a video file or frame folder (sampled to
    `num_frames`), a tuple of frames (paths or pictures), or an object whose `open()` gives one of those.

    A path is a video when `video` says so or when it names a video file or a folder of frames."""
    if hasattr(source, "open") and not isinstance(source, (Image.Image, str, os.PathLike)):
        source = source.open()
    if isinstance(source, Image.Image):
        return Loaded((load_image(source),), video, "")
    if isinstance(source, tuple):
        return Loaded(tuple(load_image(frame) for frame in source), True, "")
    if video or is_video_path(source):
        return Loaded(tuple(load_video(source, num_frames, fps)), True, str(source))
    return Loaded((load_image(source),), False, str(source))


def write_mp4(path: Path, frames: Sequence[Image.Image], fps: int = 8) -> Path:
    """A small mpeg4/yuv420p clip at a high bit rate, so colours survive the compression."""
    path.parent.mkdir(parents=True, exist_ok=True)
    width, height = (v - v % 2 for v in frames[0].size)  # yuv420p needs even sides
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.bit_rate = 2_000_000
        for frame in frames:
            array = np.asarray(frame.convert("RGB"))[:height, :width]
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format="rgb24")))
        container.mux(stream.encode(None))
    return path
