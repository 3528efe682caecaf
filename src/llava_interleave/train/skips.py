"""`RUN_DIR/skipped.jsonl`: one line per sample the run skipped, so that bad data can be found and fixed.

Each line is `{"id", "file", "line", "reason", "message", "index", "step"}`; `reason` is one of
data/defects.py, the same that `data validate` gives. Only rank 0 writes, after each step's skips were
gathered from every process (the trainer gathers only on steps where some process skipped a sample), so
under torchrun the file is whole and in step order. A line is flushed as soon as the step has it, so a
killed run keeps what it found; on resume a torn last line is dropped, and a sample already listed is not
listed again (a resumed run redoes the steps after its checkpoint, and every epoch revisits every sample).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from ..data.dataset import Skipped

SKIP_FILE = "skipped.jsonl"

Key = tuple[str, int, str]  # (file, line, reason): one entry of one file, skipped for one reason


class SkipFile:
    def __init__(self, run_dir: Path, fresh: bool) -> None:
        """`fresh`: a run from step 0 starts an empty file; a resumed one keeps the lines already written."""
        self.path = Path(run_dir) / SKIP_FILE
        self.listed: set[Key] = set() if fresh else self._whole_lines()
        self.file = self.path.open("w" if fresh else "a", encoding="utf-8")

    def _whole_lines(self) -> set[Key]:
        """Cut a torn last line (a kill mid-write) and return the keys of the samples already listed."""
        if not self.path.is_file():
            return set()
        data = self.path.read_bytes()
        whole = data[: data.rfind(b"\n") + 1]
        if len(whole) < len(data):
            os.truncate(self.path, len(whole))
        keys = set()
        for text in whole.decode("utf-8", "replace").splitlines():
            try:
                row = json.loads(text)
                keys.add((str(row["file"]), int(row["line"]), str(row["reason"])))
            except (ValueError, KeyError, TypeError):
                continue  # not a line this file writes: leave it, list its sample again
        return keys

    def write(self, skips: Iterable[Skipped], step: int) -> None:
        """Append the samples of `skips` not listed yet, each line flushed as it is written."""
        for skip in skips:
            key = (skip.file, skip.line, skip.reason)
            if key in self.listed:
                continue
            self.listed.add(key)
            row = {"id": skip.sample_id, "file": skip.file, "line": skip.line, "reason": skip.reason,
                   "message": skip.message, "index": skip.index, "step": step}
            self.file.write(json.dumps(row) + "\n")
            self.file.flush()

    def close(self) -> None:
        self.file.close()


def summary(counts: Mapping[str, int], path: Path) -> str:
    """The terminal's line: "skipped 3 samples so far (2 bad text, 1 missing media); see RUN/skipped.jsonl"."""
    total = sum(counts.values())
    kinds = ", ".join(f"{n} {reason}" for reason, n in sorted(counts.items(), key=lambda item: (-item[1], item[0])))
    return f"skipped {total} sample{'s' * (total != 1)} so far ({kinds}); see {path}"
