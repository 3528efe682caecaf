"""Images and videos named by URLs in a request: data URLs always; http(s) and local paths only when enabled.

Everything a client sends is untrusted: the pixel count is read from the header and checked before a
byte is decoded (decompression bombs), local paths are resolved (symlinks included) and must stay under
the configured root, and remote downloads stop at the body-size limit. Every failure is an `ApiError`.
"""

from __future__ import annotations

import base64
import binascii
import io
import tempfile
import urllib.request
import warnings
from pathlib import Path
from urllib.parse import unquote, urlparse

import av
from PIL import Image

from ..data.media import load_video
from ..errors import MediaError
from .errors import ApiError, bad_request
from .settings import ServeSettings

VIDEO_SUFFIXES = {"video/mp4": ".mp4", "video/webm": ".webm", "video/quicktime": ".mov", "video/x-matroska": ".mkv",
                  "image/gif": ".gif", "video/x-msvideo": ".avi"}


def load_image_url(url: str, settings: ServeSettings) -> Image.Image:
    """An RGB image from a data URL, an http(s) URL or a local path, within the pixel limit."""
    source = _source(url, settings)
    data = source.read_bytes() if isinstance(source, Path) else source
    return decode_image(data, settings.limits.max_image_pixels)


def load_video_url(url: str, frames: int, settings: ServeSettings) -> list[Image.Image]:
    """`frames` frames sampled uniformly from a video given as a data URL, an http(s) URL or a local path."""
    source = _source(url, settings)
    if isinstance(source, Path):
        return _decode_video(source, frames, settings.limits.max_image_pixels)
    mime = url[5 : url.find(";")].lower() if url.startswith("data:") else ""
    with tempfile.TemporaryDirectory() as folder:  # PyAV wants a file it can seek in
        path = Path(folder) / ("upload" + VIDEO_SUFFIXES.get(mime, ".mp4"))
        path.write_bytes(source)
        return _decode_video(path, frames, settings.limits.max_image_pixels)


def decode_image(data: bytes, max_pixels: int) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                _check_pixels(image.size, max_pixels)
                image.load()
                return image.convert("RGB")
    except ApiError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ApiError(400, f"image too large: over {max_pixels} pixels", "image_too_large") from None
    except (OSError, ValueError, SyntaxError) as err:
        raise bad_request(f"cannot decode image: {' '.join(str(err).split())}", "invalid_image") from None


def _check_pixels(size: tuple[int, int], max_pixels: int) -> None:
    if size[0] * size[1] > max_pixels:
        raise ApiError(400, f"image too large: {size[0]}x{size[1]} is over the limit of {max_pixels} pixels", "image_too_large")


def _decode_video(path: Path, frames: int, max_pixels: int) -> list[Image.Image]:
    try:
        if path.is_file():
            with av.open(str(path)) as container:
                if not container.streams.video:
                    raise bad_request("the video has no video stream", "invalid_video")
                codec = container.streams.video[0].codec_context
                _check_pixels((codec.width, codec.height), max_pixels)
        return load_video(path, frames)
    except (MediaError, av.FFmpegError, OSError) as err:
        raise bad_request(f"cannot decode video: {' '.join(str(err).split())}", "invalid_video") from None


def _source(url: str, settings: ServeSettings) -> bytes | Path:
    """The bytes of a data or http(s) URL, or the checked path of a local file."""
    if not isinstance(url, str) or not url:
        raise bad_request("a media URL must be a non-empty string", "invalid_url")
    if url.startswith("data:"):
        return _data_url(url)
    scheme = urlparse(url).scheme.lower()
    if scheme in ("http", "https"):
        if not settings.allow_remote_urls:
            raise bad_request("remote URLs are disabled on this server (start it with --allow-remote-urls)", "remote_urls_disabled")
        return _download(url, settings.limits.max_body_bytes)
    if scheme not in ("", "file"):
        raise bad_request(f"unsupported URL scheme {scheme!r}: use a data URL", "invalid_url")
    return local_path(unquote(urlparse(url).path) if scheme == "file" else url, settings.file_root)


def _data_url(url: str) -> bytes:
    header, comma, payload = url.partition(",")
    if not comma or not header.endswith(";base64"):
        raise bad_request("a data URL must look like data:<type>;base64,<data>", "invalid_url")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise bad_request("the data URL is not valid base64", "invalid_base64") from None


def _download(url: str, max_bytes: int) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - scheme checked above
            data = response.read(max_bytes + 1)
    except (OSError, ValueError) as err:
        raise bad_request(f"cannot fetch {url}: {err}", "fetch_failed") from None
    if len(data) > max_bytes:
        raise ApiError(413, f"the file at {url} is over {max_bytes} bytes", "file_too_large")
    return data


def local_path(path: str, root: Path | None) -> Path:
    """`path` (relative to `root`, or absolute) resolved with symlinks; it must exist and lie inside `root`."""
    if root is None:
        raise bad_request("local file paths are disabled on this server (start it with --file-root DIR)", "local_files_disabled")
    base = root.resolve()
    try:
        resolved = (base / path).resolve(strict=True)
    except (OSError, RuntimeError):
        raise bad_request(f"file not found under the file root: {path}", "file_not_found") from None
    if not resolved.is_relative_to(base):
        raise ApiError(403, f"path is outside the file root: {path}", "path_outside_root", "permission_error")
    return resolved
