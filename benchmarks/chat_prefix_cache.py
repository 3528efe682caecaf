"""Chat over 4 images, the whole history resent each turn: time to first token of turn 3 vs turn 1, with the
vision and prefix caches on and off (`llava_interleave.load(..., cache_mb=0)` turns them off).

A random hf-layout checkpoint is built in a temp dir (by default the 30M geometry of
generate_vs_transformers.py: 384 px, patch 14 -> 729 tokens per image, so 4 images are ~2.9k tokens).
The conversation's answers are fixed first (greedy, cache off), so both sides see the same histories.
Each round, for each side (alternated): empty caches, then turns 1, 2, 3 in order, each timed from the
messages to the first generated token (sample, preprocessing, tower, prefill). Medians of --repeats rounds
after one warm-up round; both sides must give the same answers.

    python benchmarks/chat_prefix_cache.py [--repeats 5] [--small]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw

import llava_interleave
from llava_interleave.api import DEFAULT_CACHE_MB, Pipeline
from llava_interleave.engine import SamplingConfig

QUESTIONS = ["What is in these images?", "Which image has the red disc?", "How many shapes are there in all?"]


def build_checkpoint(out: Path, small: bool) -> Path:
    from llava_interleave.assets.tiny import make_checkpoint, make_tokenizer, tiny_config
    from llava_interleave.config import TextConfig, VisionConfig

    tokenizer = make_tokenizer()
    if small:
        vision = VisionConfig(image_size=56, patch_size=7, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2)
        text = TextConfig(vocab_size=len(tokenizer) + 8, hidden_size=64, intermediate_size=128, num_layers=2,
                          num_heads=4, num_kv_heads=2, max_position_embeddings=4096, tie_word_embeddings=False)
    else:
        vision = VisionConfig(image_size=384, patch_size=14, hidden_size=256, intermediate_size=1024, num_layers=4, num_heads=4)
        text = TextConfig(vocab_size=len(tokenizer) + 8, hidden_size=512, intermediate_size=1408, num_layers=8,
                          num_heads=8, num_kv_heads=8, max_position_embeddings=32768, tie_word_embeddings=False)
    return make_checkpoint(out, tiny_config(tokenizer, "hf", vision=vision, text=text), tokenizer)


def images(folder: Path) -> list[Path]:
    """Four 320x240 pictures, saved as files as a client would send them."""
    paths = []
    for i in range(4):
        image = Image.new("RGB", (320, 240), (230, 230 - 20 * i, 220))
        ImageDraw.Draw(image).ellipse((40 * i, 60, 40 * i + 80, 140), fill=(200, 30, 30))
        paths.append(folder / f"image{i}.png")
        image.save(paths[-1])
    return paths


def turn_messages(paths: list[Path], answers: list[str], turn: int) -> list[dict]:
    """The history resent at `turn` (0-based): every earlier question and answer, then the new question."""
    messages = []
    for i in range(turn + 1):
        content = [*({"type": "image", "image": str(p)} for p in paths), QUESTIONS[i]] if i == 0 else QUESTIONS[i]
        messages.append({"role": "user", "content": content})
        if i < turn:
            messages.append({"role": "assistant", "content": answers[i]})
    return messages


def first_token(pipe: Pipeline, messages: list[dict]) -> tuple[float, int]:
    """Seconds from the messages to the first generated token, and that token."""
    start = time.perf_counter()
    encoded = [pipe.prepare(pipe.sample(messages))]
    steps = pipe.engine.stream(encoded, SamplingConfig(max_new_tokens=1))
    token = next(steps)[0]
    elapsed = time.perf_counter() - start
    steps.close()
    return elapsed, token


def run_chat(pipe: Pipeline, paths: list[Path], answers: list[str], cache_mb: float) -> tuple[list[float], list[int]]:
    pipe.engine.set_cache(cache_mb)  # a fresh, empty cache (or none) for every conversation
    times, tokens = [], []
    for turn in range(3):
        elapsed, token = first_token(pipe, turn_messages(paths, answers, turn))
        times.append(elapsed)
        tokens.append(token)
    return times, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--small", action="store_true", help="a tiny model and 56 px images (a smoke run)")
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        pipe = llava_interleave.load(build_checkpoint(Path(tmp) / "ckpt", args.small), device="cpu", cache_mb=0)
        paths = images(Path(tmp))
        answers: list[str] = []
        for turn in range(2):
            answers.append(pipe.chat(turn_messages(paths, answers, turn), SamplingConfig(max_new_tokens=8)))
        prompt_tokens = [len(pipe.prepare(pipe.sample(turn_messages(paths, answers, t)))) for t in range(3)]
        runs: dict[str, list[list[float]]] = {"off": [], "on": []}
        same = True
        for round_ in range(args.repeats + 1):  # round 0 warms up
            results = {side: run_chat(pipe, paths, answers, mb) for side, mb in (("off", 0), ("on", DEFAULT_CACHE_MB))}
            same &= results["off"][1] == results["on"][1]
            if round_:
                for side, (times, _) in results.items():
                    runs[side].append(times)
    report(runs, prompt_tokens, same)


def report(runs: dict[str, list[list[float]]], prompt_tokens: list[int], same: bool) -> None:
    median = {side: [statistics.median(r[t] for r in rounds) for t in range(3)] for side, rounds in runs.items()}
    print(f"prompt tokens per turn: {prompt_tokens}; {len(runs['on'])} rounds, medians")
    print("| time to first token (s) | turn 1 | turn 2 | turn 3 | turn 3 / turn 1 |")
    print("|---|---|---|---|---|")
    for side in ("off", "on"):
        t = median[side]
        print(f"| cache {side} | {t[0]:.3f} | {t[1]:.3f} | {t[2]:.3f} | {t[2] / t[0]:.2f} |")
    print(f"turn 3 with the cache / turn 1 without: {median['on'][2] / median['off'][0]:.2f}")
    print(f"turn 3 with the cache / turn 3 without: {median['on'][2] / median['off'][2]:.2f}")
    print(f"same first tokens with and without the cache: {same}")


if __name__ == "__main__":
    main()
