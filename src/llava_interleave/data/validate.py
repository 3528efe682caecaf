"""`llava-interleave data validate`: find the samples training would skip, before training does.

Each entry goes down the same road training takes (`SampleReader` in data/m4.py: read, parse, check the
turns, hand the media to the slots, load the media; data/defects.py names each defect's reason), so
validate reports exactly the samples a training run skips, with the same reasons, one line each as
`file:line id: reason (detail)`; the one thing it cannot know without a model is a sample too long for
the context. It can write the good entries to a clean file.
"""

from __future__ import annotations

import json
import sys
from array import array
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from ..errors import InterleaveError
from .defects import UNREADABLE_JSON
from .m4 import MediaResolver, SampleReader
from .records import DataError, JsonSource, Mixture, open_records


@dataclass(frozen=True, kw_only=True)
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


def validate(paths_or_mixture: Target, resolver: MediaResolver | None = None, check_media: bool = True,
             num_frames: int = 16) -> Report:
    """Check every entry of one or more files, a mixture YAML, or a `Mixture` (only the entries it keeps).

    A JSON file whose list structure is broken cannot be indexed and is reported as one problem; a broken
    mixture YAML is a configuration error and raises `DataError`. `check_media=False` skips opening media
    (missing, unreadable or oversized media then go unreported).
    """
    resolver = resolver or MediaResolver(None)
    report = Report()
    for source, indices in _targets(paths_or_mixture, report):
        reader = SampleReader(source, resolver, num_frames=num_frames, anyres=True)
        good = array("q")
        for index in indices:
            report.total += 1
            problem = check_entry(reader, index, check_media)
            if problem is None:
                good.append(index)
            else:
                report.problems.append(problem)
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
            report.problems.append(Problem(file=err.file or str(path), line=err.line or 0, sample_id="",
                                           reason=UNREADABLE_JSON, detail=err.detail))
            continue
        found += _targets(opened, report)
    return found


def check_entry(reader: SampleReader, index: int, check_media: bool = True) -> Problem | None:
    """The defect for which training skips entry `index` of the reader's file, or None when it is good."""
    source = reader.records
    assert isinstance(source, JsonSource)
    try:
        if check_media:
            reader.sample(index)
        else:
            reader.messages(index)
    except InterleaveError as err:
        detail = err.detail if isinstance(err, DataError) else str(err)
        return Problem(file=str(source.path), line=source.line(index), sample_id=reader.sample_id(index),
                       reason=err.reason, detail=detail, index=index)
    return None


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
