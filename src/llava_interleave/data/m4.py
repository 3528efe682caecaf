"""M4-Instruct records as conversations: media names resolved, the turns' rules checked, and the one road
(`data/conversation.py`) from a record to a `Sample`, shared by training and `data validate`.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import InterleaveError, MediaError, PromptError
from ..model.inputs import Modality
from . import defects
from .conversation import Media, Message, attach_media, is_multi_view_dataset, modalities
from .conversation import to_sample as conversation_to_sample
from .media import VIDEO_EXTENSIONS
from .records import DataError, JsonSource, Mixture, Record, duplicate_entries, entry_id
from .sample import Role, Sample

ROLES: dict[str, Role] = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


class MediaResolver:
    """Turns the names in a record into files: images relative to `image_root`, videos by id or path.

    A video id is tried as a path (under video_root, then image_root), then in the `video_map` JSON
    (id -> path), then as video_root/id with a usual video extension; a folder video_root/id/ of frames
    counts as the video. Missing media raise `MediaError` naming the id and where it was looked for.
    """

    def __init__(self, image_root: Path | None, video_root: Path | None = None, video_map: Path | None = None) -> None:
        self.image_root = Path(image_root).expanduser() if image_root else None
        self.video_root = Path(video_root).expanduser() if video_root else None
        self.video_map = Path(video_map).expanduser() if video_map else None
        self._map: dict[str, str] | None = None

    def image(self, name: str) -> Path:
        """The absolute path of an image name (existence is checked by whoever opens it)."""
        path = Path(name).expanduser()
        return (self.image_root / path if self.image_root and not path.is_absolute() else path).absolute()

    def _mapping(self) -> dict[str, str]:
        """The id -> path map, read on first use and kept."""
        if self._map is None and self.video_map is not None:
            try:
                loaded = json.loads(self.video_map.read_text())
            except (OSError, ValueError) as err:
                raise MediaError(f"cannot read video map {self.video_map}: {' '.join(str(err).split())}") from err
            if not isinstance(loaded, dict):
                raise MediaError(f"video map {self.video_map} must be a JSON object of id -> path")
            self._map = {str(k): str(v) for k, v in loaded.items()}
        return self._map or {}

    def video(self, video_id: str) -> Path:
        """The video file or frame folder for `video_id`."""
        roots = [r for r in (self.video_root, self.image_root) if r is not None] or [Path.cwd()]
        candidates = [r / video_id for r in roots] if not Path(video_id).is_absolute() else [Path(video_id)]
        mapped = self._mapping().get(video_id)
        if mapped is not None:
            target = Path(mapped).expanduser()
            base = self.video_root or (self.video_map.parent if self.video_map else Path.cwd())
            candidates.append(target if target.is_absolute() else base / target)
        if self.video_root is not None:
            candidates += [self.video_root / f"{video_id}{ext}" for ext in sorted(VIDEO_EXTENSIONS)]
        for path in candidates:
            if path.exists():
                return path.absolute()
        looked = ", ".join(str(p) for p in candidates[:4]) + (", ..." if len(candidates) > 4 else "")
        raise MediaError(f"video {video_id!r} not found (looked at {looked})", reason=defects.MISSING_MEDIA)


def is_multi_view(record: Record) -> bool:
    """Whether a record's images are the views of one 3D scene: its scenario or its dataset says so."""
    meta = record.metadata or {}
    return meta.get("scenario") == "multi-view" or is_multi_view_dataset(str(meta.get("dataset", "")))


def check_turns(record: Record) -> None:
    """Speakers known, the human first (after any system turns), human and gpt alternating, an answer that
    is not empty.

    Raises:
        DataError: with the reason (data/defects.py) of the first rule broken."""
    def fail(message: str, reason: str) -> DataError:
        return DataError(message, record.source, record.line, entry=record.id or "no id", reason=reason)

    unknown = sorted({who for who, _ in record.turns if who not in ROLES})
    if unknown:
        raise fail(f"unknown speaker(s) {', '.join(repr(w) for w in unknown)}", defects.UNKNOWN_SPEAKER)
    roles = [ROLES[who] for who, _ in record.turns]
    start = next((i for i, role in enumerate(roles) if role != "system"), len(roles))
    body = roles[start:]
    if not body:
        raise fail("only system turns", defects.MISSING_CONVERSATIONS)
    if body[0] != "user":
        raise fail(f"first turn is from {record.turns[start][0]!r}", defects.FIRST_NOT_HUMAN)
    repeat = next((start + k + 1 for k in range(len(body) - 1) if body[k] == body[k + 1] or "system" in body[k : k + 2]), None)
    if repeat is not None:
        raise fail(f"turn {repeat} is from {record.turns[repeat][0]!r} after {record.turns[repeat - 1][0]!r}",
                   defects.NOT_ALTERNATING)
    empty = [str(k) for k, (role, (_, value)) in enumerate(zip(roles, record.turns)) if role == "assistant" and not value.strip()]
    if empty:
        raise fail(f"turn {', '.join(empty)}", defects.EMPTY_ANSWER)
    if "assistant" not in body:
        raise fail("no turn from gpt", defects.NO_ANSWER)


def record_messages(record: Record, resolver: MediaResolver, locate_video: bool = True) -> list[Message]:
    """The record as a conversation: turns checked (`check_turns`), speakers mapped to roles, media names
    resolved to paths (nothing is opened), the video first, and the media handed to the user turns by
    their `<image>` slots. `locate_video=False` keeps the video id as it is (no look-up on disk) when only
    the shape matters.

    Raises:
        DataError: a broken rule, with its reason and the record's file:line and id."""
    check_turns(record)
    media = []
    if record.video:
        media.append(Media(kind="video", source=resolver.video(record.video) if locate_video else record.video))
    media += [Media(kind="image", source=resolver.image(name)) for name in record.images]
    try:
        return attach_media([(ROLES[who], value) for who, value in record.turns], media)
    except PromptError as err:
        raise DataError(str(err), record.source, record.line, entry=record.id or "no id", reason=err.reason) from None


def to_sample(record: Record, resolver: MediaResolver, *, num_frames: int, anyres: bool) -> Sample:
    """The typed `Sample` of a record, by the one road (`data/conversation.py`). Raises `DataError` /
    `PromptError` / `MediaError` for a broken record."""
    return conversation_to_sample(record_messages(record, resolver), num_frames=num_frames, anyres=anyres,
                                  multi_view=is_multi_view(record), sample_id=record.id)


def record_scenario(record: Record, resolver: MediaResolver, *, anyres: bool) -> Modality:
    """The scenario a record belongs to, for statistics and for batching like with like: video when it has
    a video, else the modality of its first image by the one rule (IMAGE when it has none or is broken;
    a broken record is skipped with its reason when it is read)."""
    try:
        found = modalities(record_messages(record, resolver, locate_video=False), anyres=anyres,
                           multi_view=is_multi_view(record))
    except InterleaveError:
        return Modality.IMAGE
    return Modality.VIDEO if Modality.VIDEO in found else found[0] if found else Modality.IMAGE


class SampleReader:
    """Index -> `Sample` by the one road (read, parse, check the turns, hand media to slots, load them), for
    training and `data validate` alike: both see the same defects with the same reasons (data/defects.py)."""

    def __init__(self, records: JsonSource | Mixture, resolver: MediaResolver, *, num_frames: int, anyres: bool) -> None:
        self.records, self.resolver, self.num_frames, self.anyres = records, resolver, num_frames, anyres

    def __len__(self) -> int:
        return len(self.records)

    def _locate(self, index: int) -> tuple[JsonSource, int]:
        return self.records.locate(index) if isinstance(self.records, Mixture) else (self.records, index)

    def record(self, index: int) -> Record:
        """The parsed record; a later entry with an id already used in its file is a duplicate."""
        source, entry = self._locate(index)
        record = source[entry]
        if entry in duplicate_entries(source):
            raise DataError(f"id {record.id!r} is used by an earlier entry of this file", record.source, record.line,
                            entry=record.id, reason=defects.DUPLICATE_ID)
        return record

    def messages(self, index: int) -> list[Message]:
        """The conversation with media located but not opened: every defect but the media's own."""
        return record_messages(self.record(index), self.resolver, locate_video=False)

    def sample(self, index: int) -> Sample:
        return to_sample(self.record(index), self.resolver, num_frames=self.num_frames, anyres=self.anyres)

    def sample_id(self, index: int) -> str:
        """The entry's id for reports, or "" when it cannot be read."""
        return entry_id(*self._locate(index))

    def where(self, index: int) -> tuple[str, int]:
        """The file and 1-based line of entry `index`, for reports (known even when it cannot be read)."""
        source, entry = self._locate(index)
        return str(source.path), source.line(entry)
