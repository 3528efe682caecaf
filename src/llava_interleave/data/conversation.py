"""The one road from a conversation, whatever its source, to a typed `Sample`.

M4 training records (`data/m4.py`), bench items (`eval/bench.py`), the Python API's messages (`api.py`)
and OpenAI requests (`serve/protocol.py`) all become `Message`s: a role and content parts, each text or
`Media` (not yet loaded). `to_sample` loads the media (`data/media.py: load_media`) and gives each its
modality by the one rule, `modality_of`:

- a video (a video part, or an image path that is a video file or a folder of frames) is VIDEO: all of
  its frames fill one slot;
- an image of a multi-view conversation (a "view" part, or the hint that the whole conversation shows
  one 3D scene, as M4's and the bench's 3D datasets do) is a VIEW, one crop at the tower's size;
- an image alone in its conversation is PATCHES (cut into anyres crops) when the model's processor uses
  anyres; any other image is an IMAGE, one crop at the tower's size.

Slots: a message's text may hold `<image>` slots, filled by its media in order; a message whose text
has no slot puts its media before the text. Sources that list media per conversation rather than per
message (M4 records, bench items) hand them to the user turns by their slot counts: `attach_media`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from PIL import Image

from ..errors import PromptError
from ..model.inputs import Modality
from .defects import IMAGE_COUNT, UNKNOWN_SPEAKER, check_text
from .media import is_video_path, load_media
from .sample import IMAGE_SLOT, Role, Sample, Turn, Visual, fill_slots

MediaKind = Literal["image", "view", "video"]
ROLES: tuple[Role, ...] = ("system", "user", "assistant")
MULTI_VIEW_DATASETS = ("scanqa", "alfred", "nuscenes", "scannet_chat", "scannet_task", "3d-llm-scene", "3d-llm-dialogue",
                       "3d-llm-planning")


class MediaOpener(Protocol):
    """A source that knows how to fetch itself (a parquet cell): a decoded picture or a path to load."""

    def open(self) -> Image.Image | Path: ...


Picture = str | os.PathLike | Image.Image
MediaSource = Picture | tuple[Picture, ...] | MediaOpener  # a tuple: the frames of one video


@dataclass(frozen=True, kw_only=True)
class Media:
    """One visual part of a message, not yet loaded.

    kind: what the source calls it; `modality_of` decides what the model makes of it.
    frames / fps: how a video file is sampled (None: the processor's frame count, uniform sampling).
    """

    kind: MediaKind
    source: MediaSource
    frames: int | None = None
    fps: float | None = None

    @property
    def is_video(self) -> bool:
        """A video part, frames given as a tuple, or a path naming a video file or a frame folder."""
        if self.kind == "video" or isinstance(self.source, tuple):
            return True
        return isinstance(self.source, (str, os.PathLike)) and is_video_path(self.source)


Part = str | Media


@dataclass(frozen=True)
class Message:
    role: Role
    parts: tuple[Part, ...]

    @property
    def media(self) -> tuple[Media, ...]:
        return tuple(p for p in self.parts if isinstance(p, Media))

    @property
    def text(self) -> str:
        return "".join(p for p in self.parts if isinstance(p, str))


def is_multi_view_dataset(name: str) -> bool:
    """3D scenes are plain image lists in M4 and the bench; only the dataset's name tells them apart."""
    name = name.strip().lower()
    return any(name == known or name.startswith(known + "_") for known in MULTI_VIEW_DATASETS)


def modality_of(kind: MediaKind, *, is_video: bool, lone: bool, anyres: bool, multi_view: bool) -> Modality:
    """The modality rule, written once (see the module docstring)."""
    if is_video:
        return Modality.VIDEO
    if kind == "view" or multi_view:
        return Modality.VIEW
    return Modality.PATCHES if lone and anyres else Modality.IMAGE


def modalities(messages: Sequence[Message], *, anyres: bool, multi_view: bool = False) -> list[Modality]:
    """The modality of every medium of a conversation in order, without loading any (stats, length grouping)."""
    media = [m for message in messages for m in message.media]
    return [modality_of(m.kind, is_video=m.is_video, lone=len(media) == 1, anyres=anyres, multi_view=multi_view)
            for m in media]


def attach_media(turns: Sequence[tuple[Role, str]], media: Sequence[Media], where: str = "") -> list[Message]:
    """Messages from (role, text) turns and the conversation's media list: each user turn takes as many
    media as it has `<image>` slots; with no slot anywhere, all go with the first user turn.

    Raises:
        PromptError: a slot outside a user turn, or a slot count that differs from the number of media.
    """
    prefix = f"{where}: " if where else ""
    if any(role != "user" and IMAGE_SLOT in text for role, text in turns):
        raise PromptError(f"{prefix}only user turns may hold {IMAGE_SLOT} slots", reason=IMAGE_COUNT)
    slots = [text.count(IMAGE_SLOT) for _, text in turns]
    if sum(slots) not in (0, len(media)):
        raise PromptError(f"{prefix}{sum(slots)} {IMAGE_SLOT} slot(s) but {len(media)} image(s)/video(s)", reason=IMAGE_COUNT)
    if not sum(slots) and media:
        first_user = next((i for i, (role, _) in enumerate(turns) if role == "user"), None)
        if first_user is None:
            raise PromptError(f"{prefix}media but no user turn to carry them", reason=IMAGE_COUNT)
        slots[first_user] = len(media)
    messages, used = [], 0
    for (role, text), count in zip(turns, slots):
        messages.append(Message(role, (*media[used : used + count], text)))
        used += count
    return messages


def to_sample(messages: Sequence[Message], *, num_frames: int, anyres: bool, multi_view: bool = False,
              sample_id: str = "") -> Sample:
    """The typed `Sample` of a conversation: media loaded, each given its modality, placed in its slots.

    Args:
        num_frames: frames sampled from a video file whose part does not say.
        anyres: whether the model's processor cuts a lone image into crops.
        multi_view: the whole conversation shows one 3D scene (its images are views).

    Raises:
        PromptError: an unknown role, media outside a user turn, or a slot count mismatch.
        MediaError: a medium that cannot be found or decoded.
    """
    for k, message in enumerate(messages):
        if message.role not in ROLES:
            raise PromptError(f"unknown role {message.role!r}; use {', '.join(ROLES)}", reason=UNKNOWN_SPEAKER)
        if message.role != "user" and message.media:
            raise PromptError(f"only user messages may hold images or videos, not a {message.role} message",
                              reason=IMAGE_COUNT)
        check_text(message.text, f"message {k}")
    total = sum(len(message.media) for message in messages)
    turns = []
    for message in messages:
        visuals = []
        for media in message.media:
            loaded = load_media(media.source, video=media.is_video, num_frames=media.frames or num_frames, fps=media.fps)
            modality = modality_of(media.kind, is_video=loaded.is_video, lone=total == 1, anyres=anyres,
                                   multi_view=multi_view)
            visuals.append(Visual(loaded.frames, modality, loaded.name))
        turns.append(Turn(message.role, fill_slots(message.text, visuals)))
    return Sample(tuple(turns), id=sample_id)
