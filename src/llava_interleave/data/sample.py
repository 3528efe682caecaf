"""The one typed interleaved sample that flows from loader to template to processor to model.

A `Sample` is ordered `Turn`s; a turn is ordered segments, each `Text` or `Visual`. A `Visual` fills one
`<image>` slot and carries its modality: a lone multi-patch image, one of several images, the frames
of one video, or one view of a 3D scene. Several views of a scene are several `Visual`s of modality VIEW.
Every source builds it the same way: `data/conversation.py`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from PIL import Image

from ..errors import PromptError
from ..model.inputs import Modality
from .defects import IMAGE_COUNT

IMAGE_SLOT = "<image>"
Role = Literal["system", "user", "assistant"]
__all__ = ["IMAGE_SLOT", "Modality", "Role", "Sample", "Segment", "Text", "Turn", "Visual", "fill_slots"]


@dataclass(frozen=True)
class Visual:
    frames: tuple[Image.Image, ...]
    modality: Modality = Modality.IMAGE
    source: str = ""  # where it came from, for error messages

    def __post_init__(self) -> None:
        if not self.frames:
            raise ValueError(f"a visual item needs at least one frame ({self.source or 'no source'})")
        if self.modality != Modality.VIDEO and len(self.frames) != 1:
            raise ValueError(f"a {self.modality.value} item holds exactly one picture, got {len(self.frames)}")


@dataclass(frozen=True)
class Text:
    text: str


Segment = Text | Visual


@dataclass(frozen=True)
class Turn:
    role: Role
    segments: tuple[Segment, ...]

    @property
    def visuals(self) -> tuple[Visual, ...]:
        return tuple(s for s in self.segments if isinstance(s, Visual))

    @property
    def text(self) -> str:
        return "".join(s.text for s in self.segments if isinstance(s, Text))


@dataclass(frozen=True)
class Sample:
    turns: tuple[Turn, ...]
    id: str = ""

    @property
    def visuals(self) -> tuple[Visual, ...]:
        return tuple(v for turn in self.turns for v in turn.visuals)


def fill_slots(text: str, visuals: Sequence[Visual]) -> tuple[Segment, ...]:
    """Interleave `visuals` into `text` at its `<image>` slots, in order; with no slot they go first.

    Raises:
        PromptError: the text has slots but their count differs from the number of visuals.
    """
    parts = text.split(IMAGE_SLOT)
    slots = len(parts) - 1
    if slots == 0:
        return (*visuals, Text(text)) if text else tuple(visuals)
    if slots != len(visuals):
        raise PromptError(f"the prompt has {slots} {IMAGE_SLOT} slot(s) but {len(visuals)} image(s)/video(s) were given",
                          reason=IMAGE_COUNT)
    segments: list[Segment] = []
    for i, part in enumerate(parts):
        if part:
            segments.append(Text(part))
        if i < slots:
            segments.append(visuals[i])
    return tuple(segments)
