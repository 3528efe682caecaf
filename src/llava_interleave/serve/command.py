"""`llava-interleave serve`: its options, and loading the model and running uvicorn.

The web stack is imported only when the command runs, so the rest of the CLI starts as fast as before.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from pathlib import Path
from typing import Any

from ..assets import MODEL_HELP
from .settings import Limits, ServeSettings

KEY_ENV = "LLAVA_INTERLEAVE_API_KEY"


def add_parser(sub: Any) -> None:
    p = sub.add_parser("serve", help="OpenAI-compatible HTTP API and a chat page at /",
                       description="Serve one model over an OpenAI-compatible API (POST /v1/chat/completions).")
    p.add_argument("--model", default=None, help=MODEL_HELP)
    p.add_argument("--template", default="qwen_1_5", choices=["qwen_1_5", "hf"])
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"])
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=None, help=f"require Authorization: Bearer KEY (default: ${KEY_ENV} if set)")
    p.add_argument("--allow-remote-urls", action="store_true", help="let requests name http(s) image/video URLs")
    p.add_argument("--file-root", default=None, help="let requests name local files, only under this folder")
    p.add_argument("--max-batch", type=int, default=4, help="requests generated together in one batch")
    p.add_argument("--queue-size", type=int, default=64, help="waiting requests before new ones get 429")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per request, queueing included (then 504)")
    defaults = Limits()
    p.add_argument("--max-body-mb", type=float, default=defaults.max_body_bytes / 2**20, help="request body limit")
    p.add_argument("--max-images", type=int, default=defaults.max_images, help="images and videos per request")
    p.add_argument("--max-frames", type=int, default=defaults.max_frames, help="frames per video")
    p.add_argument("--max-image-pixels", type=int, default=defaults.max_image_pixels, help="width x height per image")
    p.add_argument("--default-max-tokens", type=int, default=defaults.default_max_tokens,
                   help="answer length when a request sets no max_tokens")


def settings_from_args(args: argparse.Namespace) -> ServeSettings:
    limits = Limits(int(args.max_body_mb * 2**20), args.max_images, args.max_frames, args.max_image_pixels,
                    args.default_max_tokens)
    return ServeSettings(
        model_name=(Path(args.model).name or str(args.model)) if args.model else "llava-interleave-nano",
        api_key=args.api_key or os.environ.get(KEY_ENV) or None,
        allow_remote_urls=args.allow_remote_urls,
        file_root=Path(args.file_root) if args.file_root else None,
        max_batch=args.max_batch, queue_size=args.queue_size, timeout_s=args.timeout, limits=limits,
    )


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from ..commands import load_for
    from .app import create_app

    settings = settings_from_args(args)
    if settings.api_key is None and not _is_loopback(args.host):
        print(f"warning: serving on {args.host} with no API key: anyone who can reach it can use it", file=sys.stderr)
    pipe = load_for(args)
    uvicorn.run(create_app(pipe, settings), host=args.host, port=args.port, log_level="info")
    return 0


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
