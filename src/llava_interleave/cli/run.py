"""`generate`, `chat` and `demo`: ask a loaded model questions. The chat loop lives here as it is only I/O."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TextIO

from ..api import Pipeline
from ..data.conversation import Media, MediaKind
from ..data.media import load_image, load_video
from ..errors import InterleaveError, PromptError, one_line
from ..eval.demo import run_demo
from . import options

CHAT_HELP = """Type a message and press Enter. Attach media to your next message with:
  /image PATH [PATH ...]   images          /views PATH [PATH ...]   views of a 3D scene
  /video PATH [FRAMES]     a video         /reset  forget the conversation      /quit  leave"""


def add_parsers(sub: Any) -> None:
    gen = sub.add_parser("generate", help="answer one question about images, a video or 3D views")
    _model_and_sampling(gen)
    prompt = gen.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt", help="the question; <image> marks where each image goes; - reads it from stdin")
    prompt.add_argument("--prompt-file", metavar="PATH", help="read the question from this UTF-8 file (- for stdin)")
    gen.add_argument("--image", action="append", default=[], help="an image (repeat for several)")
    gen.add_argument("--views", nargs="+", default=[], help="the view images of a 3D scene")
    gen.add_argument("--video", default=None, help="a video file or a folder of frames")
    options.add_frames(gen, "frames sampled uniformly from the video (default: the model's, 16)")
    gen.add_argument("--fps", type=options.positive_number, default=None,
                     help="sample the video at this rate instead (capped by --frames)")
    gen.add_argument("--json", action="store_true", help="print one JSON object with text and token_ids")
    _model_and_sampling(sub.add_parser("chat", help="interactive multi-turn chat with images, video and views"))
    _model_and_sampling(sub.add_parser("demo", help="the bundled model (or --model) on examples of each scenario, answers next to the truth"))


def _model_and_sampling(p: argparse.ArgumentParser) -> None:
    options.add_loading(p)
    options.add_sampling(p)


def generate(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Answer one question; the settings and the prompt are read before the model, so their errors come at once."""
    out = out or sys.stdout
    sampling, prompt = options.sampling(args), read_prompt(args, sys.stdin)
    pipe = options.load_pipeline(args)
    frames = args.frames or pipe.config.processor.num_frames
    content: list[Any] = [{"type": "image", "image": p} for p in args.image]
    content += [{"type": "view", "image": p} for p in args.views]
    if args.video:
        content.append({"type": "video", "video": args.video, "frames": frames, "fps": args.fps})
    messages = [{"role": "user", "content": [*content, prompt]}]
    if args.json:
        result = pipe.generate_samples([pipe.sample(messages)], sampling)[0]
        record = {"text": result.text, "token_ids": result.token_ids, "prompt_tokens": result.prompt_tokens}
        out.write(json.dumps(record, ensure_ascii=False) + "\n")
        return 0
    for piece in pipe.stream_chat(messages, sampling):
        out.write(piece)
        out.flush()
    out.write("\n")
    return 0


def read_prompt(args: argparse.Namespace, stdin: TextIO) -> str:
    """The question of --prompt or --prompt-file, where `-` (for either) means stdin: a file or a pipe holds a
    prompt of any length, while one command-line argument stops near 128 kB. Trailing newlines are dropped."""
    if args.prompt is not None and args.prompt != "-":
        return args.prompt
    source = args.prompt_file or "-"
    try:
        text = stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise PromptError(f"cannot read the prompt from {'stdin' if source == '-' else source}: {one_line(err)}") from err
    return text.rstrip("\r\n")


def chat(args: argparse.Namespace, stdin: TextIO | None = None, out: TextIO | None = None) -> int:
    """Interactive multi-turn chat; media can be attached to any turn, and a bad turn is dropped, not fatal."""
    stdin, out = stdin or sys.stdin, out or sys.stdout
    sampling = options.sampling(args)
    pipe = options.load_pipeline(args)
    out.write(CHAT_HELP + "\n")
    history: list[dict[str, Any]] = []
    pending: list[Media] = []
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
            answer = "".join(_echo(pipe.stream_chat(history, sampling), out))
            history.append({"role": "assistant", "content": answer})
        except InterleaveError as err:
            if history and history[-1]["role"] == "user":
                history.pop()
            out.write(f"error: {err}\n")


def _echo(pieces: Iterable[str], out: TextIO) -> Iterator[str]:
    """Write each piece as it comes (the user sees the answer grow) and pass it on."""
    for piece in pieces:
        out.write(piece)
        out.flush()
        yield piece
    out.write("\n")


def _chat_command(
    line: str, pending: list[Media], history: list[dict[str, Any]], pipe: Pipeline, out: TextIO
) -> tuple[list[Media], list[dict[str, Any]]]:
    """Media are decoded when attached, so a bad path is reported at once and each turn reuses the pixels."""
    command, *rest = line.split()
    if command == "/reset":
        out.write("conversation cleared\n")
        return [], []
    if command in ("/image", "/views") and rest:
        kind: MediaKind = "image" if command == "/image" else "view"
        added = [Media(kind=kind, source=load_image(p)) for p in rest]
    elif command == "/video" and rest:
        frames = _chat_frames(rest[1]) if len(rest) > 1 else pipe.config.processor.num_frames
        added = [Media(kind="video", source=tuple(load_video(rest[0], frames)))]
    else:
        out.write(CHAT_HELP + "\n")
        return pending, history
    out.write(f"attached {len(added)} item(s) to your next message\n")
    return pending + added, history


def _chat_frames(text: str) -> int:
    """FRAMES of `/video PATH FRAMES`, held to the range of --frames."""
    try:
        return options.frame_count(text)
    except argparse.ArgumentTypeError as err:
        raise PromptError(f"/video FRAMES {err}") from err


def demo(args: argparse.Namespace, out: TextIO | None = None) -> int:
    sampling = options.sampling(args)
    run_demo(options.load_pipeline(args), out or sys.stdout, sampling.max_new_tokens)
    return 0


HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {"generate": generate, "chat": chat, "demo": demo}
