"""`llava-interleave data validate`: find the broken samples of a data file or mixture before training does.

Real M4-Instruct files hold some broken entries (first turn not from the human, `<image>` count not equal
to the images given, missing media). Training skips them one by one (`SkipBudget`); this reports them all
up front, one line each as `file:line id: reason`, and can write the good entries to a clean file.
"""

from __future__ import annotations

import json
import sys
from array import array
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from PIL import Image

from ..errors import MediaError
from .m4 import ROLES, DataError, JsonSource, MediaResolver, Mixture, Record, open_records, parse_record
from .media import is_video_path, load_video
from .sample import IMAGE_SLOT

UNREADABLE_JSON = "unreadable json"
MISSING_CONVERSATIONS = "missing conversations"
MALFORMED_ENTRY = "malformed entry"
UNKNOWN_SPEAKER = "unknown speaker"
FIRST_NOT_HUMAN = "first turn not from human"
NOT_ALTERNATING = "turns not alternating human/gpt"
IMAGE_COUNT = "image count mismatch"
EMPTY_ANSWER = "empty answer"
MISSING_MEDIA = "missing media"
UNREADABLE_MEDIA = "unreadable media"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one entry; `line` is the 1-based line where the entry starts (0: whole file)."""

    file: str
    line: int
    sample_id: str
    reason: str  # one of the constants above, so problems can be counted by kind
    detail: str = ""  # the specifics for a person: which turn, which path, which JSON error
    index: int = -1  # 0-based entry index in the file (-1: the file itself)

    @property
    def location(self) -> int:
        return self.line

    def format(self) -> str:
        text = f"{self.file}:{self.line} {self.sample_id or '<no id>'}: {self.reason}"
        return f"{text} ({self.detail})" if self.detail else text


@dataclass
class Report:
    """What validation found: every problem, and which entries of which file were good (for `write_good`)."""

    total: int = 0
    problems: list[Problem] = field(default_factory=list)
    good_entries: list[tuple[JsonSource, array]] = field(default_factory=list)

    @property
    def good(self) -> int:
        return sum(len(indices) for _, indices in self.good_entries)

    @property
    def bad(self) -> int:
        return self.total - self.good

    @property
    def by_reason(self) -> Counter:
        return Counter(p.reason for p in self.problems)

    @property
    def ok(self) -> bool:
        return not self.problems

    def format(self) -> str:
        """One line per problem, then the counts."""
        lines = [p.format() for p in self.problems]
        lines.append(f"{self.total} samples: {self.good} good, {self.bad} bad")
        lines += [f"  {reason}: {n}" for reason, n in sorted(self.by_reason.items())]
        return "\n".join(lines)


Target = str | Path | JsonSource | Mixture | Sequence[str | Path]


def validate(paths_or_mixture: Target, resolver: MediaResolver | None = None, check_media: bool = True) -> Report:
    """Check every entry of one or more files, a mixture YAML, or a `Mixture` (only the entries it keeps).

    A JSON file whose list structure is broken cannot be indexed and is reported as one problem; a broken
    mixture YAML is a configuration error and raises `DataError`.
    """
    resolver = resolver or MediaResolver(None)
    report = Report()
    for source, indices in _targets(paths_or_mixture, report):
        good = array("q")
        for index in indices:
            report.total += 1
            problems = check_entry(source, index, resolver, check_media)
            report.problems.extend(problems)
            if not problems:
                good.append(index)
        report.good_entries.append((source, good))
    return report


def _targets(target: Target, report: Report) -> list[tuple[JsonSource, Iterable[int]]]:
    """(source, entry indices) to check; files that cannot even be indexed go into the report."""
    if isinstance(target, Mixture):
        return [(part.source, part.indices) for part in target.parts]
    if isinstance(target, JsonSource):
        return [(target, range(len(target)))]
    paths = [target] if isinstance(target, (str, Path)) else list(target)
    found: list[tuple[JsonSource, Iterable[int]]] = []
    for path in paths:
        try:
            opened = open_records(path)
        except DataError as err:
            if Path(path).suffix.lower() in (".yaml", ".yml"):
                raise
            report.problems.append(Problem(err.file or str(path), err.line or 0, "", UNREADABLE_JSON, err.reason))
            continue
        found += _targets(opened, report)
    return found


def check_entry(source: JsonSource, index: int, resolver: MediaResolver, check_media: bool = True) -> list[Problem]:
    """Every problem of entry `index` of `source` (empty when it is good)."""
    file, line = str(source.path), source.line(index)
    try:
        obj = source.raw(index)
    except DataError as err:
        return [Problem(file, line, "", UNREADABLE_JSON, err.reason, index)]
    sample_id = str(obj.get("id", "")) if isinstance(obj, dict) else ""
    return [Problem(file, line, sample_id, reason, detail, index) for reason, detail in entry_problems(obj, resolver, check_media)]


def entry_problems(obj: Any, resolver: MediaResolver, check_media: bool = True) -> list[tuple[str, str]]:
    """(reason, detail) for each problem of one decoded entry; the shape rules are `parse_record`'s own, so
    an entry that passes here also loads for training."""
    if not isinstance(obj, dict):
        return [(UNREADABLE_JSON, f"expected a JSON object, got {type(obj).__name__}")]
    if not isinstance(obj.get("conversations"), list) or not obj["conversations"]:
        return [(MISSING_CONVERSATIONS, "")]
    try:
        record = parse_record(obj)
    except DataError as err:
        return [(MALFORMED_ENTRY, err.reason)]
    problems = _turn_problems(record)
    slots = sum(value.count(IMAGE_SLOT) for _, value in record.turns)
    given = len(record.images) + (1 if record.video else 0)
    if slots != given:
        problems.append((IMAGE_COUNT, f"{slots} {IMAGE_SLOT} slot(s) but {given} image(s)/video(s)"))
    if check_media:
        problems += _media_problems(record, resolver)
    return problems


def _turn_problems(record: Record) -> list[tuple[str, str]]:
    """Speakers known, the human first (after any system turns), human/gpt alternating, no empty answer."""
    unknown = sorted({who for who, _ in record.turns if who not in ROLES})
    if unknown:
        return [(UNKNOWN_SPEAKER, ", ".join(repr(w) for w in unknown))]
    problems = []
    roles = [ROLES[who] for who, _ in record.turns]
    start = next((i for i, role in enumerate(roles) if role != "system"), len(roles))
    body = roles[start:]
    if not body:
        return [(MISSING_CONVERSATIONS, "only system turns")]
    if body[0] != "user":
        problems.append((FIRST_NOT_HUMAN, f"first turn is from {record.turns[start][0]!r}"))
    repeat = next((start + k + 1 for k in range(len(body) - 1) if body[k] == body[k + 1] or "system" in body[k : k + 2]), None)
    if repeat is not None:
        problems.append((NOT_ALTERNATING, f"turn {repeat} is from {record.turns[repeat][0]!r} after {record.turns[repeat - 1][0]!r}"))
    empty = [str(k) for k, (role, (_, value)) in enumerate(zip(roles, record.turns)) if role == "assistant" and not value.strip()]
    if empty:
        problems.append((EMPTY_ANSWER, f"turn {', '.join(empty)}"))
    return problems


def _media_problems(record: Record, resolver: MediaResolver) -> list[tuple[str, str]]:
    """Missing or unreadable media. Images are opened and verified (no full decode); videos decode one frame."""
    problems = []
    if record.video:
        try:
            problems += _unreadable(resolver.video(record.video), video=True)
        except MediaError as err:
            problems.append((MISSING_MEDIA, str(err)))
    for name in record.images:
        path = resolver.image(name)
        problems += _unreadable(path) if path.exists() else [(MISSING_MEDIA, str(path))]
    return problems


def _unreadable(path: Path, video: bool = False) -> list[tuple[str, str]]:
    if video or is_video_path(path):
        try:
            load_video(path, num_frames=1)
        except MediaError as err:
            return [(UNREADABLE_MEDIA, str(err))]
        return []
    try:
        with Image.open(path) as image:
            image.verify()
    except Exception as err:  # PIL raises many types (OSError, SyntaxError, ValueError, bomb errors...)
        return [(UNREADABLE_MEDIA, f"{path}: {' '.join(str(err).split()) or type(err).__name__}")]
    return []


def write_good(report: Report, out_path: str | Path) -> int:
    """Write the good entries, as decoded from the input, to `out_path`: a JSON list for `.json`, else JSONL.

    Entries are re-read one at a time, so a large file is never held whole. Returns how many were written.
    """
    out = Path(out_path)
    inputs = {source.path.resolve() for source, _ in report.good_entries}
    if out.resolve() in inputs:
        raise DataError("refusing to overwrite an input file with its good entries; choose another path", str(out))
    as_list = out.suffix.lower() == ".json"
    written = 0
    with open(out, "w", encoding="utf-8") as f:
        f.write("[\n" if as_list else "")
        for source, indices in report.good_entries:
            for index in indices:
                text = json.dumps(source.raw(index), ensure_ascii=False)
                f.write((",\n" if written else "") + text if as_list else text + "\n")
                written += 1
        f.write("\n]\n" if as_list else "")
    return written


def run_validate(
    path: str,
    image_root: str | None,
    video_root: str | None,
    fix_out: str | None,
    out: IO[str] = sys.stdout,
    video_map: str | None = None,
    check_media: bool = True,
) -> int:
    """What the CLI does: validate, print the report, optionally write the good entries; 1 if any problem."""
    resolver = MediaResolver(
        Path(image_root) if image_root else None, Path(video_root) if video_root else None, Path(video_map) if video_map else None
    )
    report = validate(path, resolver, check_media)
    print(report.format(), file=out)
    if fix_out:
        print(f"wrote {write_good(report, fix_out)} good samples to {fix_out}", file=out)
    return 0 if report.ok else 1
