"""`llava-interleave` command line: parse arguments, dispatch to `commands`, turn user errors into one line."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from . import commands
from .errors import InterleaveError

COMMANDS: dict[str, Callable[[Any], int]] = {
    "generate": commands.generate,
    "chat": commands.chat,
    "convert": commands.convert,
}


def _model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="checkpoint directory (hf or original layout) or hub id")
    p.add_argument("--template", default="qwen_1_5", choices=["qwen_1_5", "hf"], help="prompt format (default qwen_1_5)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--dtype", default=None, choices=sorted(commands.DTYPES), help="default: float32 on CPU, bfloat16 on GPU")
    p.add_argument("--video-pooling", default=None, choices=["none", "average", "bilinear"], help="2x2 pooling of frames")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None, help="seed for sampling")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llava-interleave", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="answer one question about images, a video or 3D views")
    _model_options(gen)
    gen.add_argument("--prompt", required=True, help="the question; <image> marks where each image goes")
    gen.add_argument("--image", action="append", default=[], help="an image (repeat for several)")
    gen.add_argument("--views", nargs="+", default=[], help="the view images of a 3D scene")
    gen.add_argument("--video", default=None, help="a video file or a folder of frames")
    gen.add_argument("--frames", type=int, default=None, help="frames sampled uniformly from the video (default 16)")
    gen.add_argument("--fps", type=float, default=None, help="sample the video at this rate instead (capped by --frames)")
    gen.add_argument("--json", action="store_true", help="print one JSON object with text and token_ids")

    chat = sub.add_parser("chat", help="interactive multi-turn chat with images, video and views")
    _model_options(chat)

    conv = sub.add_parser("convert", help="write a checkpoint in the hf or original layout")
    conv.add_argument("source", help="checkpoint directory (either layout)")
    conv.add_argument("out", help="output directory")
    conv.add_argument("--to", required=True, choices=["hf", "original"])
    conv.add_argument("--dtype", default=None, choices=sorted(commands.DTYPES))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except InterleaveError as err:
        if args.debug or os.environ.get("LLAVA_INTERLEAVE_DEBUG"):
            raise
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
