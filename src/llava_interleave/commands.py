"""What the CLI subcommands do; `cli.py` only parses arguments and dispatches here."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, TextIO

import torch

from .api import Pipeline, image_visual, load, video_visual
from .assets import bundled_model
from .data.sample import Modality, Visual
from .model.checkpoint import load_model, save_checkpoint

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_for(args: Any) -> Pipeline:
    """The pipeline the command-line options ask for; without --model, the bundled model."""
    pipe = load(args.model or bundled_model(), args.template, args.device, DTYPES[args.dtype] if args.dtype else None)
    pooling = getattr(args, "video_pooling", None)
    return pipe.with_processor(video_pooling=pooling) if pooling else pipe


def _sampling(args: Any) -> dict[str, Any]:
    return {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "top_p": args.top_p, "seed": args.seed}


def generate(args: Any, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    pipe = load_for(args)
    frames = args.frames or pipe.config.processor.num_frames
    content: list[Any] = [{"type": "image", "image": p} for p in args.image]
    content += [{"type": "view", "image": p} for p in args.views]
    if args.video:
        content.append({"type": "video", "video": args.video, "frames": frames, "fps": args.fps})
    messages = [{"role": "user", "content": [*content, args.prompt]}]
    if args.json:
        result = pipe.generate_samples([pipe.sample(messages)], **_sampling(args))[0]
        record = {"text": result.text, "token_ids": result.token_ids, "prompt_tokens": result.prompt_tokens}
        out.write(json.dumps(record, ensure_ascii=False) + "\n")
        return 0
    for piece in pipe.stream_chat(messages, **_sampling(args)):
        out.write(piece)
        out.flush()
    out.write("\n")
    return 0


CHAT_HELP = """Type a message and press Enter. Attach media to your next message with:
  /image PATH [PATH ...]   images          /views PATH [PATH ...]   views of a 3D scene
  /video PATH [FRAMES]     a video         /reset  forget the conversation      /quit  leave"""


def chat(args: Any, stdin: TextIO | None = None, out: TextIO | None = None) -> int:
    """Interactive multi-turn chat; media can be attached to any turn."""
    stdin, out = stdin or sys.stdin, out or sys.stdout
    from .errors import InterleaveError

    pipe = load_for(args)
    out.write(CHAT_HELP + "\n")
    history: list[dict[str, Any]] = []
    pending: list[Visual] = []
    while True:
        out.write("> ")
        out.flush()
        line = stdin.readline()
        if not line or line.strip() in ("/quit", "/exit"):
            return 0
        line = line.strip()
        try:
            if line.startswith("/"):
                pending, history = _chat_command(line, pending, history, pipe, out)
                continue
            if not line:
                continue
            history.append({"role": "user", "content": [*pending, line]})
            pending = []
            answer = "".join(_echo(pipe.stream_chat(history, **_sampling(args)), out))
            history.append({"role": "assistant", "content": answer})
        except InterleaveError as err:
            if history and history[-1]["role"] == "user":
                history.pop()
            out.write(f"error: {err}\n")


def _echo(pieces: Any, out: TextIO) -> Any:
    for piece in pieces:
        out.write(piece)
        out.flush()
        yield piece
    out.write("\n")


def _chat_command(
    line: str, pending: list[Visual], history: list[dict[str, Any]], pipe: Pipeline, out: TextIO
) -> tuple[list[Visual], list[dict[str, Any]]]:
    command, *rest = line.split()
    if command == "/reset":
        out.write("conversation cleared\n")
        return [], []
    if command in ("/image", "/views") and rest:
        modality = Modality.IMAGE if command == "/image" else Modality.VIEW
        added = [image_visual(p, modality) for p in rest]
    elif command == "/video" and rest:
        frames = int(rest[1]) if len(rest) > 1 else pipe.config.processor.num_frames
        added = [video_visual(rest[0], frames)]
    else:
        out.write(CHAT_HELP + "\n")
        return pending, history
    out.write(f"attached {len(added)} item(s) to your next message\n")
    return pending + added, history


def convert(args: Any, out: TextIO | None = None) -> int:
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
