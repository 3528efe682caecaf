"""LLaVA-style training data (M4-Instruct JSON/JSONL and YAML mixtures), read lazily, turned into `Sample`s.

The real files are a gigabyte or more, so nothing here holds every parsed entry: `JsonSource` indexes the
byte span of each entry once (line offsets for JSONL; a small streaming scanner for a top-level JSON list)
and parses one entry per `__getitem__`. Entries are located two ways, always both: `index` is the 0-based
position of the entry among the file's entries (blank JSONL lines are not entries), `line` the 1-based line
of the file on which the entry starts, for messages a person can jump to.
"""

from __future__ import annotations

import bisect
import json
from itertools import accumulate
import mmap
import random
import re
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import InterleaveError, MediaError, PromptError
from .media import VIDEO_EXTENSIONS, is_video_path, load_image, load_video
from .sample import IMAGE_SLOT, Modality, Role, Sample, Text, Turn, Visual, fill_slots

ROLES: dict[str, Role] = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
MULTI_VIEW_DATASETS = ("scanqa", "alfred", "nuscenes", "scannet_chat", "scannet_task", "3d-llm-scene", "3d-llm-dialogue", "3d-llm-planning")


class DataError(InterleaveError):
    """A data file, entry or mixture is unusable; the message names the file and line so it can be fixed."""

    def __init__(self, message: str, file: str | None = None, line: int | None = None, entry: str = "") -> None:
        where = f"{file}:{line}: " if file and line else f"{file}: " if file else ""
        super().__init__(f"{where}{entry + ': ' if entry else ''}{message}")
        self.file, self.line, self.reason = file, line, message  # `reason`: the message without its location


@dataclass(frozen=True)
class Record:
    """One raw entry as written in the file: media names are unresolved, turns are (from, value) strings."""

    id: str
    images: tuple[str, ...]
    video: str | None
    turns: tuple[tuple[str, str], ...]
    metadata: dict = field(default_factory=dict, hash=False, compare=False)
    source: str = ""  # the file it came from
    index: int = 0  # 0-based position among the file's entries
    line: int = 0  # 1-based line on which the entry starts


def parse_record(obj: Any, source: str = "", index: int = 0, line: int = 0) -> Record:
    """A `Record` from one decoded entry; a wrong shape raises `DataError` here, not later in the model."""
    def fail(message: str) -> DataError:
        name = obj.get("id", "no id") if isinstance(obj, dict) else "no id"
        return DataError(message, source, line, entry=f"entry {index} ({name})")

    if not isinstance(obj, dict):
        raise fail(f"expected a JSON object, got {type(obj).__name__}")
    conversations = obj.get("conversations")
    if not isinstance(conversations, list) or not conversations:
        raise fail("missing or empty 'conversations'")
    if not all(isinstance(t, dict) and isinstance(t.get("from"), str) and isinstance(t.get("value"), str) for t in conversations):
        raise fail("every turn needs string 'from' and 'value'")
    images = obj.get("image", obj.get("images"))
    images = [] if images is None else [images] if isinstance(images, str) else images
    if not isinstance(images, list) or not all(isinstance(p, str) for p in images):
        raise fail("'image' must be a string or a list of strings")
    video = obj.get("video")
    if video is not None and not isinstance(video, str):
        raise fail("'video' must be a string")
    metadata = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    turns = tuple((t["from"], t["value"]) for t in conversations)
    return Record(str(obj.get("id", "")), tuple(images), video or None, turns, metadata, source, index, line)


# Skip to the next structural byte of a JSON text, jumping over whole strings (escapes included) in C.
_INNER = re.compile(rb'(?:[^"\[\]{}]+|"(?:[^"\\]+|\\.)*")*', re.S)
_TOP = re.compile(rb'(?:[^"\[\]{},]+|"(?:[^"\\]+|\\.)*")*', re.S)
_SPACE = re.compile(rb"[ \t\r\n]*")
_BOM = b"\xef\xbb\xbf"


class JsonSource(Sequence[Record]):
    """A lazy `.json` (top-level list) or `.jsonl` file: an index of byte spans built once, one parse per item.

    Holds three int arrays (start, end, line per entry), no parsed data, and no open file, so it pickles
    cheaply into data-loader workers. A malformed JSONL line is found when it is read, never while indexing.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError("data file not found", str(self.path))
        self.starts, self.ends, self.lines = array("q"), array("q"), array("q")
        if self.path.stat().st_size:
            with open(self.path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                first = _SPACE.match(buf, 3 if buf[:3] == _BOM else 0).end()
                is_list = buf[first : first + 1] == b"[" and self.path.suffix.lower() != ".jsonl"
                self._index_list(buf, first) if is_list else self._index_lines()
        elif self.path.suffix.lower() != ".jsonl":
            raise DataError("empty file (a .json data file holds a list)", str(self.path))

    def _index_lines(self) -> None:
        """One entry per non-blank line; parsing waits until the entry is read."""
        offset = 0
        with open(self.path, "rb") as f:
            for number, raw in enumerate(f, 1):
                if raw.strip() and raw.strip() != _BOM:
                    self.starts.append(offset)
                    self.ends.append(offset + len(raw))
                    self.lines.append(number)
                offset += len(raw)

    def _index_list(self, buf: mmap.mmap, pos: int) -> None:
        """The span of each top-level element of the list that opens at `pos`, tracking strings and depth."""
        pos = close = _SPACE.match(buf, pos + 1).end()
        line, counted, released = 1, 0, 0
        while buf[pos : pos + 1] != b"]" or self.starts:
            begin, close = pos, self._element_end(buf, pos)
            end = begin + len(buf[begin:close].rstrip())
            line, counted = line + buf[counted:begin].count(b"\n"), begin
            if begin - released > 1 << 26 and hasattr(buf, "madvise"):  # drop scanned pages: RSS stays small
                buf.madvise(mmap.MADV_DONTNEED, released, begin // mmap.PAGESIZE * mmap.PAGESIZE - released)
                released = begin // mmap.PAGESIZE * mmap.PAGESIZE
            if end == begin:
                raise DataError("empty element (stray or trailing comma)", str(self.path), line)
            self.starts.append(begin)
            self.ends.append(end)
            self.lines.append(line)
            if buf[close : close + 1] != b",":
                break
            pos = _SPACE.match(buf, close + 1).end()
        if buf[close : close + 1] != b"]" or buf[close + 1 :].strip():
            raise DataError("the top-level list is not closed by ']' at the end of the file", str(self.path))

    def _element_end(self, buf: mmap.mmap, pos: int) -> int:
        """Offset of the ',' or ']' that ends the element starting at `pos`."""
        depth = 0
        while True:
            pos = (_TOP if depth == 0 else _INNER).match(buf, pos).end()
            char = buf[pos : pos + 1]
            if char in (b"[", b"{"):
                depth += 1
            elif char in (b"]", b"}"):
                if depth == 0:
                    return pos
                depth -= 1
            elif char == b",":
                return pos
            else:
                line = buf[:pos].count(b"\n") + 1
                problem = "unterminated string" if char == b'"' else "unexpected end of file inside an element"
                raise DataError(problem, str(self.path), line)
            pos += 1

    def __len__(self) -> int:
        return len(self.starts)

    def _position(self, index: int) -> int:
        if not isinstance(index, int):
            raise TypeError(f"JsonSource indices must be integers, not {type(index).__name__}")
        if not -len(self) <= index < len(self):
            raise IndexError(f"entry {index} out of range for {self.path} ({len(self)} entries)")
        return index % len(self)

    def line(self, index: int) -> int:
        """The 1-based line on which entry `index` starts."""
        return self.lines[self._position(index)]

    def raw(self, index: int) -> Any:
        """Entry `index` decoded from its own bytes only; a JSON error names file, line and cause."""
        i = self._position(index)
        with open(self.path, "rb") as f:
            f.seek(self.starts[i])
            data = f.read(self.ends[i] - self.starts[i])
        try:
            return json.loads(data.removeprefix(_BOM))
        except (ValueError, UnicodeDecodeError) as err:
            raise DataError(f"invalid JSON: {err}", str(self.path), self.lines[i], entry=f"entry {i}") from err

    def __getitem__(self, index: int) -> Record:  # type: ignore[override]
        i = self._position(index)
        return parse_record(self.raw(i), str(self.path), i, self.lines[i])

    def __repr__(self) -> str:
        return f"JsonSource({str(self.path)!r}, {len(self)} entries)"


@dataclass(frozen=True)
class MixturePart:
    """The entries of one file that a mixture keeps, by the file's own entry indices."""

    source: JsonSource
    strategy: str
    indices: Sequence[int]


class Mixture(Sequence[Record]):
    """Several sources subsampled by their strategies, seen as one lazy sequence of records."""

    def __init__(self, parts: Sequence[MixturePart]) -> None:
        self.parts = tuple(parts)
        self._ends = [0, *accumulate(len(part.indices) for part in self.parts)]

    def __len__(self) -> int:
        return self._ends[-1]

    def locate(self, index: int) -> tuple[JsonSource, int]:
        """The (source, entry index) pair behind mixture item `index`."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"item {index} out of range for a mixture of {len(self)}")
        index %= len(self)
        k = bisect.bisect_right(self._ends, index) - 1
        return self.parts[k].source, self.parts[k].indices[index - self._ends[k]]

    def __getitem__(self, index: int) -> Record:  # type: ignore[override]
        source, entry = self.locate(index)
        return source[entry]


_STRATEGY = re.compile(r"(all)|(first|end|random):(\d+)|(\d+(?:\.\d+)?)%")


def select(strategy: str, total: int, rng: random.Random) -> Sequence[int]:
    """Entry indices kept by `strategy` ("all", "first:N", "end:N", "random:N", "N%") out of `total`.

    Counts larger than the file are clamped, as the original LLaVA loader's slicing does; random picks are
    without replacement and returned sorted so that reads go forward through the file.
    """
    match = _STRATEGY.fullmatch(str(strategy).strip().lower())
    if match is None:
        raise ValueError(f"unknown sampling_strategy {strategy!r} (use all, first:N, end:N, random:N or N%)")
    every, kind, count, share = match.groups()
    if share is not None and float(share) > 100:
        raise ValueError(f"sampling_strategy {strategy!r}: the percentage must be in [0, 100]")
    n = total if every else min(total, int(count)) if count else round(float(share) / 100 * total)
    if every or kind == "first":
        return range(n)
    return range(total - n, total) if kind == "end" else array("q", sorted(rng.sample(range(total), n)))


def load_mixture(yaml_path: str | Path, seed: int = 0) -> Mixture:
    """The mixture a YAML file describes (`datasets: [...]` or a bare list of {json_path, sampling_strategy}).

    Relative json_paths start at the YAML's folder, so a mixture file travels with its data. Each entry
    draws from its own generator (seed, position), so editing one entry does not reshuffle the others.
    """
    yaml_path = Path(yaml_path)
    try:
        config = yaml.safe_load(yaml_path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise DataError(f"cannot read mixture: {' '.join(str(err).split())}", str(yaml_path)) from err
    entries = config.get("datasets") if isinstance(config, dict) else config
    if not isinstance(entries, list) or not entries:
        raise DataError("a mixture is a list of {json_path, sampling_strategy} (or has one under 'datasets')", str(yaml_path))
    sources: dict[Path, JsonSource] = {}
    parts = []
    for position, entry in enumerate(entries):
        if not isinstance(entry, dict) or not entry.get("json_path"):
            raise DataError(f"dataset {position} has no json_path", str(yaml_path))
        path = (yaml_path.parent / Path(entry["json_path"]).expanduser()).resolve()
        source = sources[path] = sources[path] if path in sources else JsonSource(path)
        strategy = str(entry.get("sampling_strategy", "all"))
        try:
            indices = select(strategy, len(source), random.Random(seed * 1_000_003 + position))
        except ValueError as err:
            raise DataError(f"dataset {position} ({entry['json_path']}): {err}", str(yaml_path)) from None
        parts.append(MixturePart(source, strategy, indices))
    return Mixture(parts)


def open_records(path: str | Path, seed: int = 0) -> JsonSource | Mixture:
    """A data file or a mixture YAML, by suffix: what every `data` command accepts."""
    path = Path(path)
    return load_mixture(path, seed) if path.suffix.lower() in (".yaml", ".yml") else JsonSource(path)


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
        raise MediaError(f"video {video_id!r} not found (looked at {looked})")


def is_multi_view(record: Record) -> bool:
    """3D scenes are plain image lists in the data; only their scenario or dataset name tells them apart."""
    meta = record.metadata or {}
    name = str(meta.get("dataset", "")).strip().lower()
    return meta.get("scenario") == "multi-view" or any(name == known or name.startswith(known + "_") for known in MULTI_VIEW_DATASETS)


def default_modality(record: Record) -> Modality:
    """Scenario of a record: video, 3D views, a lone multi-patch image, or several images."""
    if record.video or (len(record.images) == 1 and Path(record.images[0]).suffix.lower() in VIDEO_EXTENSIONS):
        return Modality.VIDEO
    if is_multi_view(record):
        return Modality.VIEW
    return Modality.PATCHES if len(record.images) == 1 else Modality.IMAGE


modality_of = default_modality


def load_visuals(record: Record, resolver: MediaResolver, num_frames: int, modality: Modality) -> list[Visual]:
    """The record's media, decoded, in slot order (the video first); an image path that is a video or a
    frame folder is loaded as one."""
    visuals = []
    if record.video:
        path = resolver.video(record.video)
        visuals.append(Visual(tuple(load_video(path, num_frames)), Modality.VIDEO, str(path)))
    for name in record.images:
        path = resolver.image(name)
        if is_video_path(path):
            visuals.append(Visual(tuple(load_video(path, num_frames)), Modality.VIDEO, str(path)))
        else:
            kind = Modality.IMAGE if modality == Modality.VIDEO else modality
            visuals.append(Visual((load_image(path),), kind, str(path)))
    return visuals


def to_sample(
    record: Record, resolver: MediaResolver, num_frames: int = 16, modality_of: Callable[[Record], Modality] = default_modality
) -> Sample:
    """The typed `Sample` of a record: roles mapped, and the visuals put into the user turns' `<image>`
    slots in conversation order (a turn takes as many as it has slots); with no slot at all they go
    before the first user text. Raises `DataError` / `PromptError` / `MediaError` for a broken record."""
    where = f"{record.source}:{record.line} {record.id or 'no id'}"
    unknown = sorted({who for who, _ in record.turns if who not in ROLES})
    if unknown:
        raise DataError(f"{record.id or 'no id'}: unknown speaker(s) {unknown}", record.source, record.line)
    if any(ROLES[who] != "user" and IMAGE_SLOT in value for who, value in record.turns):
        raise PromptError(f"{where}: only user turns may hold {IMAGE_SLOT} slots")
    visuals = load_visuals(record, resolver, num_frames, modality_of(record))
    slots = [value.count(IMAGE_SLOT) if ROLES[who] == "user" else 0 for who, value in record.turns]
    if sum(slots) not in (0, len(visuals)):
        raise PromptError(f"{where}: {sum(slots)} {IMAGE_SLOT} slot(s) but {len(visuals)} image(s)/video(s)")
    first_user = next((i for i, (who, _) in enumerate(record.turns) if ROLES[who] == "user"), 0)
    turns, used = [], 0
    for i, (who, value) in enumerate(record.turns):
        role = ROLES[who]
        if role == "user" and (slots[i] or (not sum(slots) and i == first_user)):
            take = slots[i] if sum(slots) else len(visuals)
            segments = fill_slots(value, visuals[used : used + take])
            used += take
        else:
            segments = (Text(value),)
        turns.append(Turn(role, segments))
    return Sample(tuple(turns), id=record.id)
