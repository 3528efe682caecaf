"""`convert`: write a checkpoint in the hf or original layout, saying what the hf layout cannot hold."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from ..config import ProcessorConfig
from ..model.checkpoint import DTYPES, load_model, save_checkpoint, stored_dtype
from . import options


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("convert", help="write a checkpoint in the hf or original layout")
    p.add_argument("source", help="checkpoint directory (either layout)")
    p.add_argument("out", help="output directory")
    p.add_argument("--to", required=True, choices=["hf", "original"])
    options.add_dtype(p, "default: the dtype the source's weights are stored in (bfloat16 for the releases)")


def convert(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Write a checkpoint in the other layout (or the same one, to normalise it), in the source's dtype unless
    --dtype says otherwise: a bf16 release written as fp32 would double in size for no gain."""
    out = out or sys.stdout
    net, tokenizer = load_model(args.source, "cpu", DTYPES[args.dtype] if args.dtype else stored_dtype(args.source))
    for note in _notes(net.config.processor, net.image_newline is not None, args.to):
        out.write(f"note: {note}\n")
    path = save_checkpoint(net, tokenizer, Path(args.out), args.to)
    out.write(f"wrote {args.to} layout to {path}\n")
    return 0


def _notes(proc: ProcessorConfig, newline: bool, layout: str) -> list[str]:
    """What the target layout cannot hold, or holds only in our own config key, said before writing."""
    if layout == "hf":
        dropped = ["the learned image_newline (spatial_unpad: 730 tokens per image becomes 729)"] if newline else []
        if proc.image_aspect != "squash":
            dropped.append(f"image_aspect_ratio {proc.image_aspect!r} (the hf layout always squashes to the tower size)")
        return [f"the hf layout has no place for {item}; it is dropped" for item in dropped]
    if proc.uses_anyres and proc.multi_aspect == "squash":
        return [("multi_aspect 'squash' is kept in the 'llava_interleave' key only: the original evaluation code pads "
                 "several images to a square")]
    return []


HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {"convert": convert}
