"""LLaVA-style training data files (M4-Instruct JSON/JSONL and YAML mixtures), read lazily, as `Record`s.

The real files are a gigabyte or more, so nothing here holds every parsed entry: `JsonSource` indexes the
byte span of each entry once (line offsets for JSONL; a small streaming scanner for a top-level JSON list)
and parses one entry per `__getitem__`. Entries are located two ways, always both: `index` is the 0-based
position of the entry among the file's entries (blank JSONL lines are not entries), `line` the 1-based line
of the file on which the entry starts, for messages a person can jump to. Reading and parsing an entry
finds the defects of its bytes, JSON, types and text, each with its reason (data/defects.py).
"""

from __future__ import annotations

import bisect
import json
import mmap
import random
import re
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from pathlib import Path
from typing import Any

import yaml

from ..errors import InterleaveError, PromptError
from . import defects


class DataError(InterleaveError):
    """A data file, entry or mixture is unusable; the message names the file and line so it can be fixed."""

    reason = "bad data"

    def __init__(self, message: str, file: str | None = None, line: int | None = None, entry: str = "", *,
                 reason: str | None = None) -> None:
        where = f"{file}:{line}: " if file and line else f"{file}: " if file else ""
        super().__init__(f"{where}{entry + ': ' if entry else ''}{message}", reason=reason)
        self.file, self.line, self.detail = file, line, message  # `detail`: the message without its location


@dataclass(frozen=True, kw_only=True)
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


META_TEXT_KEYS = ("dataset", "scenario", "task", "split", "question_type")  # read by stats, grouping and eval


def parse_record(obj: Any, source: str = "", index: int = 0, line: int = 0) -> Record:
    """A `Record` from one decoded entry; a wrong shape or unusable text raises `DataError` here, with its
    reason (data/defects.py), not later in the model."""
    def fail(message: str, reason: str = defects.MALFORMED_ENTRY) -> DataError:
        name = obj.get("id", "no id") if isinstance(obj, dict) else "no id"
        name = name if isinstance(name, (str, int)) and len(str(name)) <= 200 else "bad id"
        return DataError(message, source, line, entry=f"entry {index} ({name})", reason=reason)

    if not isinstance(obj, dict):
        raise fail(f"expected a JSON object, got {type(obj).__name__}", defects.UNREADABLE_JSON)
    conversations = obj.get("conversations")
    if not isinstance(conversations, list) or not conversations:
        raise fail("missing or empty 'conversations'", defects.MISSING_CONVERSATIONS)
    if not all(isinstance(t, dict) and isinstance(t.get("from"), str) and isinstance(t.get("value"), str) for t in conversations):
        raise fail("every turn needs string 'from' and 'value'")
    sample_id = obj.get("id", "")
    if isinstance(sample_id, bool) or not isinstance(sample_id, (str, int)):
        raise fail(f"'id' must be a string or a number, not {type(sample_id).__name__}")
    images = obj.get("image", obj.get("images"))
    images = [] if images is None else [images] if isinstance(images, str) else images
    if not isinstance(images, list) or not all(isinstance(p, str) and p for p in images):
        raise fail("'image' must be a string or a list of non-empty strings")
    video = obj.get("video")
    if video is not None and not isinstance(video, str):
        raise fail("'video' must be a string")
    metadata = {} if obj.get("metadata") is None else obj["metadata"]
    if not isinstance(metadata, dict):
        raise fail(f"'metadata' must be an object, not {type(metadata).__name__}")
    wrong = [k for k in META_TEXT_KEYS if k in metadata and not isinstance(metadata[k], str)]
    if wrong:
        raise fail(f"metadata {', '.join(repr(k) for k in wrong)} must be text")
    texts = [(f"turn {k}", t["value"]) for k, t in enumerate(conversations)]
    texts += [("id", str(sample_id)), *((f"image {k}", p) for k, p in enumerate(images)), ("video", video or "")]
    try:
        for where, text in texts:
            defects.check_text(text, where)
    except PromptError as err:
        raise fail(str(err), defects.BAD_TEXT) from None
    turns = tuple((t["from"], t["value"]) for t in conversations)
    return Record(id=str(sample_id), images=tuple(images), video=video or None, turns=turns, metadata=metadata,
                  source=source, index=index, line=line)


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
        self.duplicates: frozenset[int] | None = None  # filled by `duplicate_entries` on first use
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
        """Entry `index` decoded from its own bytes only; an error names file, line, cause and reason."""
        i = self._position(index)
        size = self.ends[i] - self.starts[i]

        def fail(message: str, reason: str = defects.UNREADABLE_JSON) -> DataError:
            return DataError(message, str(self.path), self.lines[i], entry=f"entry {i}", reason=reason)

        if size > defects.MAX_ENTRY_BYTES:
            raise fail(f"{size:,} bytes, over the limit of {defects.MAX_ENTRY_BYTES:,} per entry", defects.ENTRY_TOO_LARGE)
        with open(self.path, "rb") as f:
            f.seek(self.starts[i])
            data = f.read(size).removeprefix(_BOM)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as err:
            raise fail(f"invalid UTF-8 at byte {err.start} of the entry") from None
        try:
            return json.loads(text)
        except RecursionError:
            raise fail("invalid JSON: nested too deep") from None
        except ValueError as err:
            raise fail(f"invalid JSON: {err}") from None

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


def duplicate_entries(source: JsonSource) -> frozenset[int]:
    """Entries of `source` whose id an earlier entry of the same file already has (the first one is kept).

    One pass over the file, done once per source and kept; entries that cannot be read are left to the
    reader, which reports them with their own reason."""
    if source.duplicates is None:
        first: dict[str, int] = {}
        later = []
        for index in range(len(source)):
            try:
                raw = source.raw(index)
            except DataError:
                continue
            sample_id = _raw_id(raw)
            if sample_id and first.setdefault(sample_id, index) != index:
                later.append(index)
        source.duplicates = frozenset(later)
    return source.duplicates


def entry_id(source: JsonSource, entry: int) -> str:
    """Entry `entry`'s id for reports, or "" when it cannot be read."""
    try:
        return _raw_id(source.raw(entry))[:200]
    except DataError:
        return ""


def _raw_id(raw: Any) -> str:
    """A decoded entry's id as `parse_record` takes it (a string or a number), else ""."""
    sample_id = raw.get("id") if isinstance(raw, dict) else None
    return str(sample_id) if isinstance(sample_id, (str, int)) and not isinstance(sample_id, bool) else ""


def try_record(records: Sequence[Record], index: int) -> Record | None:
    """Record `index`, or None when it cannot be read: start-up passes (tokenizer texts, lengths) must not
    stop on a broken entry, which the sample reader skips with its reason when the step reaches it."""
    try:
        return records[index]
    except DataError:
        return None
