"""Prompt templates as data: one object per format, rendered in one pass over the typed sample.

qwen_1_5 (original, the default): ChatML with the system prompt "You are a helpful assistant." and a
    "\\n" after every image slot, as in the original training and evaluation code.
hf (the hub chat template of the -hf checkpoints): no system prompt; a message's images as "<image>",
    each text part as "\\n" + text. Identical to the hub template whenever images precede the text.
Rendering yields `Piece`s: text with a flag saying whether it is supervised, or a `Visual` slot.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..errors import PromptError
from .sample import IMAGE_SLOT, Sample, Visual

IM_START, IM_END = "<|im_start|>", "<|im_end|>"
TemplateName = Literal["qwen_1_5", "hf"]  # the keys of TEMPLATES


@dataclass(frozen=True)
class Piece:
    text: str = ""
    trainable: bool = False
    visual: Visual | None = None
    turn_end: bool = False  # the last piece of a turn: truncation may cut after it


@dataclass(frozen=True)
class Template:
    name: TemplateName
    default_system: str | None
    newline_after_image: bool  # qwen_1_5: "<image>\n"
    text_prefix: str  # hf: "\n" before every text part

    def render(self, sample: Sample, add_generation_prompt: bool = True) -> list[Piece]:
        turns = list(sample.turns)
        pieces: list[Piece] = []
        if self.default_system is not None and (not turns or turns[0].role != "system"):
            pieces.append(Piece(f"{IM_START}system\n{self.default_system}{IM_END}\n", turn_end=True))
        for turn in turns:
            if turn.role == "system" and turn.visuals:
                raise PromptError("a system turn cannot hold images")
            pieces.append(Piece(f"{IM_START}{turn.role}\n"))
            trainable = turn.role == "assistant"
            after_visual = False
            for segment in turn.segments:
                if isinstance(segment, Visual):
                    pieces.append(Piece(visual=segment))
                    if self.newline_after_image:
                        pieces.append(Piece("\n", trainable))
                    after_visual = True
                    continue
                text = segment.text
                if self.newline_after_image and after_visual and text.startswith("\n"):
                    text = text[1:]  # the slot's own newline already separates them
                pieces.append(Piece(self.text_prefix + text, trainable))
                after_visual = False
            pieces.append(Piece(IM_END, trainable))
            pieces.append(Piece("\n", turn_end=True))
        if add_generation_prompt:
            pieces.append(Piece(f"{IM_START}assistant\n"))
        return pieces

    def render_text(self, sample: Sample, add_generation_prompt: bool = True) -> str:
        """The prompt as a string with one `<image>` per visual (for display and comparisons)."""
        return "".join(IMAGE_SLOT if p.visual else p.text for p in self.render(sample, add_generation_prompt))


TEMPLATES: dict[TemplateName, Template] = {
    "qwen_1_5": Template("qwen_1_5", "You are a helpful assistant.", newline_after_image=True, text_prefix=""),
    "hf": Template("hf", None, newline_after_image=False, text_prefix="\n"),
}


def get_template(name: str) -> Template:
    try:
        return TEMPLATES[name]
    except KeyError:
        raise PromptError(f"unknown template {name!r}; choose one of {', '.join(TEMPLATES)}") from None
