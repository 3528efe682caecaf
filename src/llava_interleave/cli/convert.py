"""`convert`: write a checkpoint in the hf or original layout, saying what the hf layout cannot hold."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import torch

from ..model.checkpoint import DTYPES, load_model, save_checkpoint
from . import options


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("convert", help="write a checkpoint in the hf or original layout")
    p.add_argument("source", help="checkpoint directory (either layout)")
    p.add_argument("out", help="output directory")
    p.add_argument("--to", required=True, choices=["hf", "original"])
    options.add_dtype(p, "default: float32")


def convert(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Write a checkpoint in the other layout (or the same one, to normalise it)."""
    out = out or sys.stdout
    net, tokenizer = load_model(args.source, "cpu", DTYPES[args.dtype] if args.dtype else torch.float32)
    proc = net.config.processor
    if args.to == "hf":
        dropped = []
        if net.image_newline is not None:
            dropped.append("the learned image_newline (spatial_unpad: 730 tokens per image becomes 729)")
        if proc.image_aspect != "squash":
            dropped.append(f"image_aspect_ratio {proc.image_aspect!r} (the hf layout always squashes to the tower size)")
        for item in dropped:
            out.write(f"note: the hf layout has no place for {item}; it is dropped\n")
    path = save_checkpoint(net, tokenizer, Path(args.out), args.to)
    out.write(f"wrote {args.to} layout to {path}\n")
    return 0


HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {"convert": convert}
