"""What a server allows and how it schedules work, fixed at start-up."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Literal, get_args

from ..errors import InterleaveError

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")  # the names a browser on this machine uses for it
ANY_HOST = "*"
Batching = Literal["continuous", "static"]  # static: for benchmarks only (see serve/worker.py)


@dataclass(frozen=True, kw_only=True)
class Limits:
    """Per-request bounds, so one request can neither exhaust memory nor stall the queue for long.

    Pixel counts are checked from the header before any decoding (a 50 kB PNG can claim to be 40k x 40k
    pixels): `max_image_pixels` bounds each image and video frame, `max_request_pixels` all of a request's
    images and frames together, which bounds the memory its decoded media take (3 bytes a pixel).
    `max_video_frames` bounds the frames a video file may hold: sampling uniformly decodes all of them."""

    max_body_bytes: int = 32 * 2**20
    max_images: int = 16  # visual items (images and videos) in one request
    max_frames: int = 32  # frames sampled per video
    max_image_pixels: int = 4096 * 4096
    max_request_pixels: int = 2**25  # e.g. two 4096x4096 images, or 16 frames of 1920x1080
    max_video_frames: int = 3600  # two minutes at 30 frames/s
    default_max_tokens: int = 256  # when the request gives none (capped by the room left in the context)

    def __post_init__(self) -> None:
        bad = [f"{f.name}={getattr(self, f.name)}" for f in fields(self) if getattr(self, f.name) < 1]
        if bad:
            raise InterleaveError(f"every limit must be at least 1, got {', '.join(bad)}")


@dataclass(frozen=True)
class ServeSettings:
    model_name: str
    api_key: str | None = None  # None: no authentication (fine on the default loopback address)
    allow_remote_urls: bool = False  # fetch http(s) image URLs: off, so the server makes no requests of its own
    file_root: Path | None = None  # local paths allowed only under this folder; None: no server-side file reads
    max_batch: int = 4  # requests decoding together (the engine's rows)
    kv_mb: float = 0  # MiB of keys and values for all requests together; 0: unbounded
    chunk_tokens: int = 512  # prompt tokens prefilled per step, so a long prompt only slows running answers
    batching: Batching = "continuous"
    queue_size: int = 64  # requests waiting (not running) before new ones get 429
    max_decoding: int = 2  # requests decoding media at once; the others wait (within their timeout)
    timeout_s: float = 120.0  # from arrival to the last token, every stage included; past it the request gets 504
    # Names the Host and Origin headers may carry ("*": any). Loopback names by default, so that neither a
    # web page the local user opens nor DNS rebinding can use a key-less server on 127.0.0.1.
    allowed_hosts: tuple[str, ...] = LOOPBACK_HOSTS
    limits: Limits = field(default_factory=Limits)

    def __post_init__(self) -> None:
        if min(self.max_batch, self.queue_size, self.max_decoding) < 1 or self.timeout_s <= 0:
            raise InterleaveError(f"--max-batch, --queue-size and --max-decoding must be at least 1 and --timeout "
                                  f"positive, got {self.max_batch}, {self.queue_size}, {self.max_decoding}, "
                                  f"{self.timeout_s}")
        if not (math.isfinite(self.kv_mb) and self.kv_mb >= 0) or self.chunk_tokens < 1:
            raise InterleaveError(f"--kv-mb must be a number >= 0 (0: unbounded) and --chunk-tokens at least 1, got "
                                  f"{self.kv_mb}, {self.chunk_tokens}")
        if self.batching not in get_args(Batching):
            raise InterleaveError(f"--batching must be continuous or static, got {self.batching!r}")
