"""Options shared by the commands that load a model, defined once so every command offers the same choices.

The choices come from the code's own tables (templates, dtypes, the config's pooling modes), so a new
template or dtype shows up in every parser without touching the CLI.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import get_args

from ..api import Pipeline, load
from ..assets import MODEL_HELP, bundled_model
from ..config import ImageAspect, MultiAspect, VideoPooling
from ..data.templates import TEMPLATES
from ..engine import SamplingConfig
from ..errors import DeviceError
from ..model.checkpoint import DTYPES
from ..model.device import resolve_device

DEVICE_HELP = "cpu, cuda, cuda:1 ... (default: cuda when available)"
# Frames sampled from one video: far above any real use (at 729 tokens a frame, the released models' 32k
# context holds 44), so that a typo like 100000 is refused before a frame is decoded.
MAX_FRAMES = 1024


def whole_number(low: int, high: int) -> Callable[[str], int]:
    """An argparse type for a whole number in low..high, so a value out of range is refused as it is
    parsed (one line, exit 2) instead of failing later inside the library."""

    def parse(text: str) -> int:
        try:
            value: int | None = int(text)
        except ValueError:
            value = None
        if value is None or not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be a whole number in {low}..{high}, got {text!r}")
        return value

    return parse


def finite_number(*, zero_allowed: bool) -> Callable[[str], float]:
    """An argparse type for a finite number > 0, or >= 0 where zero means "none" (a budget): 0 is no rate,
    and nan and inf are never limits."""
    rule = ">= 0" if zero_allowed else "> 0"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and (value > 0 or (zero_allowed and value == 0))):
            raise argparse.ArgumentTypeError(f"must be a number {rule}, got {text!r}")
        return value

    return parse


positive_number = finite_number(zero_allowed=False)
nonnegative_number = finite_number(zero_allowed=True)
frame_count = whole_number(1, MAX_FRAMES)


def device_name(text: str) -> str:
    """An argparse type: the name of a device this machine has (see `resolve_device`), kept as typed."""
    try:
        resolve_device(text)
    except DeviceError as err:
        raise argparse.ArgumentTypeError(str(err)) from err
    return text


def add_model(p: argparse.ArgumentParser, text: str = MODEL_HELP) -> None:
    p.add_argument("--model", default=None, help=text)


def add_template(p: argparse.ArgumentParser) -> None:
    p.add_argument("--template", default="qwen_1_5", choices=list(TEMPLATES), help="prompt format (default %(default)s)")


def add_dtype(p: argparse.ArgumentParser, text: str = "default: float32 on CPU, bfloat16 on GPU") -> None:
    p.add_argument("--dtype", default=None, choices=list(DTYPES), help=text)


def add_loading(p: argparse.ArgumentParser, device_help: str = DEVICE_HELP, video_pooling: bool = True) -> None:
    """--model, --template, --device, --dtype, the aspect rules and (unless told not to) --video-pooling: what
    `load_pipeline` reads."""
    add_model(p)
    add_template(p)
    p.add_argument("--device", type=device_name, default=None, help=device_help)
    add_dtype(p)
    p.add_argument("--image-aspect", default=None, choices=get_args(ImageAspect),
                   help="how images are made square: squash, pad (mean colour) or anyres (a lone image cut into "
                        "crops); default: the checkpoint's")
    p.add_argument("--multi-aspect", default=None, choices=get_args(MultiAspect),
                   help="with anyres, how the images not cut into crops (several images, frames, views) are made "
                        "square; default: the checkpoint's (pad for the released models)")
    if video_pooling:
        p.add_argument("--video-pooling", default=None, choices=get_args(VideoPooling), help="2x2 pooling of frames")


def add_frames(p: argparse.ArgumentParser, text: str) -> None:
    p.add_argument("--frames", type=frame_count, default=None, metavar="N", help=f"{text}; at most {MAX_FRAMES}")


def add_sampling(p: argparse.ArgumentParser) -> None:
    """How answers are sampled; `sampling` turns them into the Pipeline's `SamplingConfig`."""
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None, help="seed for sampling")


def load_pipeline(args: argparse.Namespace) -> Pipeline:
    """The pipeline the options of `add_loading` ask for; without --model, the bundled model."""
    pipe = load(args.model or bundled_model(), args.template, args.device, DTYPES[args.dtype] if args.dtype else None)
    overrides = _processor_overrides(args)
    return pipe.with_processor(**overrides) if overrides else pipe


def _processor_overrides(args: argparse.Namespace) -> dict[str, str]:
    """The processor settings of `add_loading` that were given: those the checkpoint's config is overridden with."""
    names = ("image_aspect", "multi_aspect", "video_pooling")
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


def sampling(args: argparse.Namespace) -> SamplingConfig:
    """The options of `add_sampling`; a value out of range is a `SamplingError`, printed as one line.

    Handlers call it before loading the model, so a bad value is refused at once; the ranges are
    `SamplingConfig`'s own, the same for the API, the server and the CLI."""
    return SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p, seed=args.seed)
