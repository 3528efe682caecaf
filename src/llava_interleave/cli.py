"""`llava-interleave` command line: parse arguments, dispatch to `commands`, turn user errors into one line."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from . import commands, data_commands, demo, eval_commands, train_commands
from .assets import MODEL_HELP
from .errors import InterleaveError
from .serve import command as serve_command

COMMANDS: dict[str, Callable[[Any], int]] = {
    "generate": commands.generate,
    "chat": commands.chat,
    "convert": commands.convert,
    "demo": demo.demo,
    "data validate": data_commands.validate,
    "data stats": data_commands.stats,
    "data synth": data_commands.synth,
    "train": train_commands.train,
    "dpo": train_commands.dpo,
    "plot": train_commands.plot,
    "serve": serve_command.serve,
    "score": eval_commands.score,
    "eval": eval_commands.eval,
}


def _model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help=MODEL_HELP)
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

    _model_options(sub.add_parser("demo", help="the bundled model (or --model) on examples of each scenario, answers next to the truth"))

    conv = sub.add_parser("convert", help="write a checkpoint in the hf or original layout")
    conv.add_argument("source", help="checkpoint directory (either layout)")
    conv.add_argument("out", help="output directory")
    conv.add_argument("--to", required=True, choices=["hf", "original"])
    conv.add_argument("--dtype", default=None, choices=sorted(commands.DTYPES))
    train_commands.add_parsers(sub)
    serve_command.add_parser(sub)
    eval_commands.add_parsers(sub)
    _data_parsers(sub.add_parser("data", help="check, describe and make training data").add_subparsers(dest="data_command", required=True))
    return parser


def _data_parsers(sub: Any) -> None:
    media = argparse.ArgumentParser(add_help=False)
    media.add_argument("--image-root", default=None, help="folder that relative image paths start from")
    media.add_argument("--video-root", default=None, help="folder of videos (or frame folders) named by video id")
    media.add_argument("--video-map", default=None, help="JSON file mapping video ids to paths")

    val = sub.add_parser("validate", parents=[media], help="report broken samples (exit 1 if any)")
    val.add_argument("path", help="a .json/.jsonl file or a mixture .yaml")
    val.add_argument("--fix-out", default=None, help="write the good samples here (.json or .jsonl)")
    val.add_argument("--no-media", action="store_true", help="skip opening media files")

    st = sub.add_parser("stats", parents=[media], help="samples per scenario/task/dataset, images and tokens per sample")
    st.add_argument("path", help="a .json/.jsonl file or a mixture .yaml")
    st.add_argument("--model", default=None, help="checkpoint whose tokenizer and layout count tokens per sample")
    st.add_argument("--template", default="qwen_1_5", choices=["qwen_1_5", "hf"])
    st.add_argument("--json", action="store_true", help="print one JSON object instead of markdown")
    st.add_argument("--plot", default=None, help="write histograms to this PNG")

    syn = sub.add_parser("synth", help="write procedurally drawn M4-style data and a held-out bench")
    syn.add_argument("--out", required=True)
    syn.add_argument("--n", type=int, default=200, help="training samples")
    syn.add_argument("--seed", type=int, default=0)
    syn.add_argument("--bench-n", type=int, default=None, help="held-out bench samples (default n // 5)")
    syn.add_argument("--tasks", default=None, help="comma-separated task datasets to draw, e.g. SynthDescribe (default: all)")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    name = f"data {args.data_command}" if args.command == "data" else args.command
    try:
        return COMMANDS[name](args)
    except InterleaveError as err:
        if args.debug or os.environ.get("LLAVA_INTERLEAVE_DEBUG"):
            raise
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
