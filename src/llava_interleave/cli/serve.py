"""`serve`: an OpenAI-compatible HTTP API and a chat page over one model.

The web stack (uvicorn, the app) is imported only when the command runs, so the rest of the CLI starts
no slower for it.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args

from ..model.device import free_memory_mb
from ..serve.settings import ANY_HOST, LOOPBACK_HOSTS, Batching, Limits, ServeSettings
from . import options

if TYPE_CHECKING:
    import torch

KEY_ENV = "LLAVA_INTERLEAVE_API_KEY"


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("serve", help="OpenAI-compatible HTTP API and a chat page at /",
                       description="Serve one model over an OpenAI-compatible API (POST /v1/chat/completions).")
    options.add_loading(p, video_pooling=False)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback only)")
    p.add_argument("--port", type=options.whole_number(0, 65535), default=8000, help="TCP port (0: any free one)")
    p.add_argument("--api-key", default=None, help=f"require Authorization: Bearer KEY (default: ${KEY_ENV} if set)")
    p.add_argument("--allow-remote-urls", action="store_true", help="let requests name http(s) image/video URLs")
    p.add_argument("--file-root", default=None, help="let requests name local files, only under this folder")
    p.add_argument("--max-batch", type=int, default=4, help="requests decoding together")
    p.add_argument("--kv-mb", type=options.nonnegative_number, default=None,
                   help="MiB of keys and values for all requests together (default: half the memory free once the "
                        "model is loaded, RAM on CPU, GPU memory on CUDA; 0: unbounded); a request waits until its "
                        "prompt + max_tokens fit, and one that never could gets 400")
    p.add_argument("--chunk-tokens", type=int, default=512,
                   help="prompt tokens prefilled per step, so a long prompt slows running answers only a little")
    p.add_argument("--batching", choices=get_args(Batching), default="continuous",
                   help="continuous: requests join and leave the batch between steps; static (for benchmarks): "
                        "a batch runs to its longest answer before others start")
    p.add_argument("--queue-size", type=int, default=64, help="waiting requests before new ones get 429")
    p.add_argument("--max-decoding", type=int, default=2, help="requests decoding images/videos at once (others wait)")
    p.add_argument("--cache-mb", type=options.whole_number(0, 2**20), default=1024,
                   help="MiB for the vision and prefix caches (repeated images and chat histories); 0 turns them off")
    p.add_argument("--timeout", type=options.positive_number, default=120.0,
                   help="seconds per request, every stage included: reading, decoding, queueing, generating (then 504)")
    p.add_argument("--allowed-hosts", nargs="+", default=None, metavar="HOST",
                   help="names the Host and Origin headers may carry, * for any (default: loopback names when "
                        "--host is loopback, else any)")
    defaults = Limits()
    p.add_argument("--max-body-mb", type=options.positive_number, default=defaults.max_body_bytes / 2**20, help="request body limit")
    p.add_argument("--max-images", type=int, default=defaults.max_images, help="images and videos per request")
    p.add_argument("--max-frames", type=int, default=defaults.max_frames, help="frames per video")
    p.add_argument("--max-image-pixels", type=int, default=defaults.max_image_pixels,
                   help="width x height per image or video frame")
    p.add_argument("--max-request-pixels", type=int, default=defaults.max_request_pixels,
                   help="pixels of all images and video frames of one request together")
    p.add_argument("--max-video-frames", type=int, default=defaults.max_video_frames,
                   help="frames a video file may hold (all are decoded to sample from them)")
    p.add_argument("--default-max-tokens", type=int, default=defaults.default_max_tokens,
                   help="answer length when a request sets no max_tokens")


def settings_from_args(args: argparse.Namespace) -> ServeSettings:
    limits = Limits(max_body_bytes=int(args.max_body_mb * 2**20), max_images=args.max_images,
                    max_frames=args.max_frames, max_image_pixels=args.max_image_pixels,
                    max_request_pixels=args.max_request_pixels, max_video_frames=args.max_video_frames,
                    default_max_tokens=args.default_max_tokens)
    return ServeSettings(
        model_name=(Path(args.model).name or str(args.model)) if args.model else "llava-interleave-nano",
        api_key=args.api_key or os.environ.get(KEY_ENV) or None,
        allow_remote_urls=args.allow_remote_urls,
        file_root=Path(args.file_root) if args.file_root else None,
        max_batch=args.max_batch, kv_mb=args.kv_mb or 0, chunk_tokens=args.chunk_tokens, batching=args.batching,
        queue_size=args.queue_size, max_decoding=args.max_decoding, timeout_s=args.timeout,
        allowed_hosts=_allowed_hosts(args), limits=limits,
    )


def _allowed_hosts(args: argparse.Namespace) -> tuple[str, ...]:
    """As given; else the loopback names (and the bound one) on loopback, where cross-site use is the risk."""
    if args.allowed_hosts:
        return tuple(args.allowed_hosts)
    return tuple(dict.fromkeys((*LOOPBACK_HOSTS, args.host))) if _is_loopback(args.host) else (ANY_HOST,)


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from ..serve.app import create_app

    settings = settings_from_args(args)
    if settings.api_key is None and not _is_loopback(args.host):
        print(f"warning: serving on {args.host} with no API key: anyone who can reach it can use it", file=sys.stderr)
    pipe = options.load_pipeline(args)
    pipe.engine.set_cache(args.cache_mb)
    settings = replace(settings, kv_mb=kv_budget_mb(args.kv_mb, pipe.model.device))
    print(f"keys and values of running requests: {settings.kv_mb:,.0f} MiB (--kv-mb)" if settings.kv_mb else
          "keys and values of running requests: unbounded (--kv-mb 0)", file=sys.stderr)
    uvicorn.run(create_app(pipe, settings), host=args.host, port=args.port, log_level="info")
    return 0


def kv_budget_mb(requested: float | None, device: torch.device) -> float:
    """The KV budget: as requested, else half the memory free now (after loading the model), so that many
    long requests wait for room instead of exhausting the machine; 0 (unbounded) where that is unknown."""
    if requested is not None:
        return requested
    free = free_memory_mb(device)
    return round(free / 2, 1) if free else 0.0


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {"serve": serve}
