"""Images and videos named by URLs in a request: data URLs always; http(s) and local paths only when enabled.

Everything a client sends is untrusted, so each step is bounded before it is paid for: an image's or a
frame's pixel count is read from its header before it is decoded, and all of a request's images and
frames share one pixel budget (`MediaLoader`); a video's frame count is checked before its frames are
decoded; decoding stops at the request's deadline. Local paths must resolve (symlinks included) inside
the root and name a regular file, checked on the opened file so that a FIFO or a device never blocks a
thread. Video containers are named from their first bytes rather than probed, so FFmpeg never reads a
playlist or concat script (which would open further files or URLs). Every failure is an `ApiError` that
names the input at fault and holds no server path or library message.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import stat
import urllib.error
import urllib.request
from itertools import islice
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote, urlparse

import av
from PIL import Image

from ..data.media import sample_indices
from .errors import ApiError, Deadline, bad_request
from .settings import ServeSettings

IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")  # none that hands the bytes to another program
# Opening never blocks (a FIFO), and the last component may not be a link swapped in after resolving.
OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0)
CHUNK = 2**16


class MediaLoader:
    """Fetches and decodes one request's media within its limits and its deadline."""

    def __init__(self, settings: ServeSettings, deadline: Deadline) -> None:
        self.settings = settings
        self.limits = settings.limits
        self.deadline = deadline
        self.pixels_left = settings.limits.max_request_pixels

    def image(self, url: str, where: str) -> Image.Image:
        """An RGB image from a data URL, an http(s) URL or a local path."""
        with self._open(url, where) as file:
            return self._decode_image(file, where)

    def video(self, url: str, frames: int, where: str) -> list[Image.Image]:
        """`frames` RGB frames sampled uniformly (first and last included) from a video file."""
        with self._open(url, where) as file:
            container_format = _container_format(file.read(12))
            if container_format is None:
                raise bad_request("not a video this server reads (MP4/MOV, MKV/WebM, AVI or GIF)", "invalid_video",
                                  where)
            try:
                total = self._frame_count(file, container_format, where)
                return self._decode_video(file, container_format, total, frames, where)
            except ApiError:
                raise
            except Exception:  # noqa: BLE001 - FFmpeg fails on bad bytes in many ways, each the input's fault
                raise bad_request("the video cannot be decoded (corrupt or unsupported)", "invalid_video",
                                  where) from None

    # ------------------------------------------------------------------ decoding
    def _decode_image(self, file: BinaryIO, where: str) -> Image.Image:
        try:
            image = Image.open(file, formats=IMAGE_FORMATS)  # reads the header only
            self._take(image.size, 1, where)
            image.load()
            return image if image.mode == "RGB" else image.convert("RGB")  # an RGB image is not copied
        except ApiError:
            raise
        except Image.DecompressionBombError:
            raise bad_request("image too large", "image_too_large", where) from None
        except Exception:  # noqa: BLE001 - Pillow fails on bad bytes in many ways; each is the input's fault
            raise bad_request(f"not an image this server decodes ({', '.join(IMAGE_FORMATS)})", "invalid_image",
                              where) from None

    def _frame_count(self, file: BinaryIO, container_format: str, where: str) -> int:
        """The video's frame count: from the header, else by counting packets (no decoding), within the limit."""
        limit = self.limits.max_video_frames
        with _open_container(file, container_format) as container:
            if not container.streams.video:
                raise bad_request("the file has no video stream", "invalid_video", where)
            stream = container.streams.video[0]
            total = stream.frames or sum(1 for p in islice(container.demux(stream), limit + 1) if p.size)
        if total > limit:
            raise bad_request(f"the video has more than {limit} frames", "video_too_long", where)
        return total

    def _decode_video(self, file: BinaryIO, container_format: str, total: int, frames: int,
                      where: str) -> list[Image.Image]:
        """One decoding pass up to the last frame wanted, which the pixel budget has paid for in advance."""
        wanted = sample_indices(total, frames)
        with _open_container(file, container_format) as container:
            stream = container.streams.video[0]
            size = (stream.codec_context.width, stream.codec_context.height)
            self._take(size, len(wanted), where)
            keep, kept = set(wanted), []
            for index, frame in enumerate(islice(container.decode(stream), wanted[-1] + 1 if wanted else 0)):
                self.deadline.check()
                if index in keep:
                    if (frame.width, frame.height) != size:
                        raise bad_request("the video's frames change size", "invalid_video", where)
                    kept.append(frame.to_image())
        if not kept:
            raise bad_request("the video has no decodable frames", "invalid_video", where)
        return kept

    def _take(self, size: tuple[int, int], count: int, where: str) -> None:
        """Charge `count` images of `size` to the request, or refuse them before they are decoded."""
        self.deadline.check()
        width, height = size
        if width * height > self.limits.max_image_pixels:
            raise bad_request(f"image too large: {width}x{height} is over the limit of {self.limits.max_image_pixels} "
                              "pixels", "image_too_large", where)
        if width * height * count > self.pixels_left:
            raise bad_request(f"the request's images and frames hold more than {self.limits.max_request_pixels} "
                              "pixels in all", "too_many_pixels", where)
        self.pixels_left -= width * height * count

    # ------------------------------------------------------------------ sources
    def _open(self, url: str, where: str) -> BinaryIO:
        """The bytes of a data or http(s) URL, or the opened local file."""
        if url[:5].lower() == "data:":
            return io.BytesIO(_data_url(url[5:], where))
        scheme = urlparse(url).scheme.lower()
        if scheme in ("http", "https"):
            if not self.settings.allow_remote_urls:
                raise bad_request("remote URLs are disabled on this server (start it with --allow-remote-urls)",
                                  "remote_urls_disabled", where)
            return io.BytesIO(self._download(url, where))
        if scheme not in ("", "file"):
            raise bad_request("unsupported URL scheme: use a data URL", "invalid_url", where)
        return open_local(unquote(urlparse(url).path) if scheme == "file" else url, self.settings.file_root, where)

    def _download(self, url: str, where: str) -> bytes:
        """The body at `url`, read in chunks so that the size limit and the deadline bound it."""
        limit, chunks, size = self.limits.max_body_bytes, [], 0
        try:
            with urllib.request.urlopen(url, timeout=max(0.1, min(10.0, self.deadline.remaining()))) as response:
                while chunk := response.read(CHUNK):
                    self.deadline.check()
                    size += len(chunk)
                    if size > limit:
                        raise bad_request(f"the file is over {limit} bytes", "file_too_large", where, 413)
                    chunks.append(chunk)
        except urllib.error.HTTPError as err:
            raise bad_request(f"fetching the URL failed with HTTP status {err.code}", "fetch_failed", where) from None
        except (OSError, ValueError):
            raise bad_request("the URL cannot be fetched", "fetch_failed", where) from None
        return b"".join(chunks)


def _data_url(rest: str, where: str) -> bytes:
    """The bytes of a data URL (after "data:"): the scheme and ";base64" in any case, line breaks allowed."""
    header, comma, payload = rest.partition(",")
    if not comma or header.lower().rpartition(";")[2] != "base64":
        raise bad_request("a data URL must look like data:<type>;base64,<data>", "invalid_url", where)
    try:
        return base64.b64decode("".join(payload.split()), validate=True)
    except (binascii.Error, ValueError):
        raise bad_request("the data URL is not valid base64", "invalid_base64", where) from None


def _container_format(head: bytes) -> str | None:
    """FFmpeg's demuxer for a video's first 12 bytes, among the containers the server reads; None for others."""
    if head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip"):
        return "mp4"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "matroska"  # webm too
    if head.startswith(b"RIFF") and head[8:12] == b"AVI ":
        return "avi"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    return None


def _open_container(file: BinaryIO, container_format: str) -> av.container.InputContainer:
    file.seek(0)
    return av.open(file, format=container_format, metadata_errors="ignore")


def open_local(path: str, root: Path | None, where: str) -> BinaryIO:
    """The regular file at `path` (relative to `root`, or absolute), resolved with symlinks inside `root`."""
    if root is None:
        raise bad_request("local file paths are disabled on this server (start it with --file-root DIR)",
                          "local_files_disabled", where)
    if "\x00" in path:
        raise bad_request("a path may not hold a NUL character", "invalid_path", where)
    base = root.resolve()
    try:
        resolved = (base / path).resolve(strict=True)
    except (OSError, RuntimeError, ValueError):
        raise bad_request("file not found under the file root", "file_not_found", where) from None
    if not resolved.is_relative_to(base):
        raise ApiError(403, f"{where}: the path leads outside the file root", "path_outside_root", "permission_error",
                       where)
    try:
        fd = os.open(resolved, OPEN_FLAGS)
    except OSError:
        raise bad_request("the file cannot be opened", "file_not_found", where) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise bad_request("not a regular file (a folder, FIFO or device)", "not_a_file", where)
    return os.fdopen(fd, "rb")
