"""A generated sample before it is written, and the multi-choice format that every synthetic task shares."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image

LETTERS = "ABCDEFGH"
MC_SUFFIX = "Answer with the option's letter from the given choices directly."


@dataclass(frozen=True, kw_only=True)
class Drawn:
    """One generated sample before it is written: pictures in slot order (video: its frames)."""

    dataset: str
    task: str
    scenario: str  # "multi-image" | "video" | "multi-view" | "multi-patch"
    question: str  # the text after the <image> slots, options included for multi-choice
    answer: str
    pictures: tuple[Image.Image, ...]
    choices: tuple[str, ...] | None
    facts: dict[str, Any]
    instruction: str

    @property
    def question_type(self) -> str:
        return "open-ended" if self.choices is None else "multi-choice"


def multi_choice(question: str, correct: str, options: Sequence[str]) -> tuple[str, tuple[str, ...], str]:
    """The question with its options lettered (A), (B), ... in the given fixed order, and the correct letter.

    Why a fixed order (image order, direction order, colour order) and not a shuffle: the letter then
    follows from what is seen, as in sets like NLVR2's "(A) True (B) False". Shuffled options also ask the
    model to bind letters to options in context, which small models trained for minutes do not learn
    (measured: the tiny and nano presets stayed at chance even on text-only binding). Letters stay
    balanced because the answers are drawn uniformly."""
    text = "\n".join([question, *(f"({LETTERS[i]}) {option}" for i, option in enumerate(options)), MC_SUFFIX])
    return text, tuple(options), LETTERS[list(options).index(correct)]
