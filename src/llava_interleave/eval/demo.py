"""A model on one example of each scenario, each answer printed next to the true one (`llava-interleave demo`).

The examples are the held-out synthetic items shipped in `assets/demo` (drawn with a seed no training run
used), so each answer can be shown next to the true one: several images, a video, the views of a 3D
scene and one large image cut into patches.
"""

from __future__ import annotations

import re
from typing import TextIO

from ..api import Pipeline
from ..assets import DEMO_BENCH
from ..data.drawn import LETTERS
from .bench import BenchItem, read_bench
from .runner import answer_stream

OPTION = re.compile(r"^\([A-H]\) .+$", re.MULTILINE)  # an option line of a multi-choice question


def _with_option(item: BenchItem, answer: str) -> str:
    """A multi-choice letter followed by its option's text, so the reader need not look it up."""
    options = dict(zip(LETTERS, item.choice_list or ()))
    letter = answer.strip()[:1]
    return f"{answer.strip()} ({options[letter]})" if letter in options else answer.strip()


def _question(item: BenchItem) -> str:
    """The question without its option lines and answer-format suffix, one line."""
    text = OPTION.sub("", item.turns[0][0]).replace("<image>", "[image]")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("Answer with")]
    return " ".join(lines)


def run_demo(pipe: Pipeline, out: TextIO, max_new_tokens: int = 32) -> int:
    """Answer every demo item and print question, answer and truth; returns how many matched the truth."""
    items = read_bench(DEMO_BENCH)
    answered = {id(item): predictions for item, predictions in
                answer_stream(pipe, items, pipe.config.processor.num_frames, max_new_tokens, len(items))}
    matched = 0
    for item in items:
        prediction = answered[id(item)][0]
        answer = f"error: {prediction.error}" if prediction.error else prediction.prediction
        same = answer.strip().lower().rstrip(".") == prediction.answer.strip().lower().rstrip(".")
        matched += same
        out.write(f"[{item.scenario}] {item.dataset}: {_question(item)}\n"
                  f"  model: {_with_option(item, answer)}\n"
                  f"  truth: {_with_option(item, prediction.answer)}{'  (same)' if same else ''}\n\n")
    out.write(f"{matched} of {len(items)} answers equal the truth\n")
    return matched
