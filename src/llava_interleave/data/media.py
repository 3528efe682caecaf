"""Loading images and videos, with one-line errors naming the file and the cause.

Videos are decoded with PyAV and sampled uniformly (first and last frame included) or by rate; a video
shorter than the requested count gives all of its frames. A folder of frame images counts as a video.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import MediaError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"}
VIDEO_EXTENSIONS = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpeg", ".mpg", ".gif"}


def load_image(source: str | os.PathLike | Image.Image) -> Image.Image:
    """An RGB image, fully decoded now so that a truncated file fails here and not inside the model."""
    if isinstance(source, Image.Image):
        return source.convert("RGB")
    path = Path(source)
    if not path.is_file():
        raise MediaError(f"image not found: {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.load()
                return image.convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise MediaError(f"image too large (decompression bomb guard): {path}: {err}") from err
    except (OSError, ValueError, SyntaxError) as err:
        raise MediaError(f"cannot read image {path}: {err}") from err


def is_video_path(path: str | os.PathLike) -> bool:
    path = Path(path)
    return path.is_dir() or path.suffix.lower() in VIDEO_EXTENSIONS


def sample_indices(total: int, num_frames: int) -> list[int]:
    """`num_frames` indices spread evenly over `total` frames; all frames when there are not more."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be at least 1, got {num_frames}")
    if total <= num_frames:
        return list(range(total))
    return [int(round(x)) for x in np.linspace(0, total - 1, num_frames)]


def load_video(path: str | os.PathLike, num_frames: int = 16, fps: float | None = None) -> list[Image.Image]:
    """Frames of a video file or a frame folder, in temporal order, as RGB images."""
    path = Path(path)
    if path.is_dir():
        return _load_frame_folder(path, num_frames)
    if not path.is_file():
        raise MediaError(f"video not found: {path}")
    import av

    try:
        frames = _decode(path, num_frames, fps, av)
    except (av.FFmpegError, OSError, ValueError, IndexError) as err:
        raise MediaError(f"cannot decode video {path}: {err}") from err
    if not frames:
        raise MediaError(f"video has no decodable frames: {path}")
    return frames


def _decode(path: Path, num_frames: int, fps: float | None, av) -> list[Image.Image]:  # noqa: ANN001
    """Pass 1 picks the frame indices (from the header's count, or by counting); pass 2 keeps only those."""
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise MediaError(f"not a video (no video stream): {path}")
        stream = container.streams.video[0]
        if fps is not None:
            times = [float(f.time or 0.0) for f in container.decode(stream)]
            wanted = _by_rate(times, fps)
            wanted = [wanted[i] for i in sample_indices(len(wanted), num_frames)]
        else:
            total = stream.frames or sum(1 for _ in container.decode(stream))
            wanted = sample_indices(total, num_frames)
    keep = set(wanted)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return [f.to_image().convert("RGB") for i, f in enumerate(container.decode(stream)) if i in keep]


def _by_rate(times: list[float], fps: float) -> list[int]:
    """Index of the frame closest to each tick 0, 1/fps, 2/fps ... up to the last frame's time."""
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    if not times:
        return []
    ticks = np.arange(0.0, times[-1] + 1e-9, 1.0 / fps)
    stamps = np.asarray(times)
    return sorted({int(np.abs(stamps - t).argmin()) for t in ticks})


def _natural_key(path: Path) -> list[int | str]:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


def _load_frame_folder(folder: Path, num_frames: int) -> list[Image.Image]:
    files = sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS), key=_natural_key)
    if not files:
        raise MediaError(f"frame folder has no images: {folder}")
    return [load_image(files[i]) for i in sample_indices(len(files), num_frames)]
