"""What a server allows and how it schedules work, fixed at start-up."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InterleaveError


@dataclass(frozen=True)
class Limits:
    """Per-request bounds, so one request can neither exhaust memory nor stall the queue for long.

    `max_image_pixels` is checked from the image header before any decoding (a 50 kB PNG can claim to be
    40k x 40k pixels); it also bounds each video frame."""

    max_body_bytes: int = 32 * 2**20
    max_images: int = 16  # visual items (images and videos) in one request
    max_frames: int = 32  # frames per video
    max_image_pixels: int = 4096 * 4096
    default_max_tokens: int = 256  # when the request gives none (capped by the room left in the context)


@dataclass(frozen=True)
class ServeSettings:
    model_name: str
    api_key: str | None = None  # None: no authentication (fine on the default loopback address)
    allow_remote_urls: bool = False  # fetch http(s) image URLs: off, so the server makes no requests of its own
    file_root: Path | None = None  # local paths allowed only under this folder; None: no server-side file reads
    max_batch: int = 4
    queue_size: int = 64  # requests waiting (not running) before new ones get 429
    timeout_s: float = 120.0  # from arrival to the last token; past it the request gets 504
    limits: Limits = field(default_factory=Limits)

    def __post_init__(self) -> None:
        if self.max_batch < 1 or self.queue_size < 1 or self.timeout_s <= 0:
            raise InterleaveError(f"--max-batch and --queue-size must be at least 1 and --timeout positive, got "
                                  f"{self.max_batch}, {self.queue_size}, {self.timeout_s}")
