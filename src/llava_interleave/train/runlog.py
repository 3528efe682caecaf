"""What a run tells its user: a JSONL line per step, a one-line progress bar, optional TensorBoard.

The JSONL log is the record `llava-interleave plot` draws from. On resume it is cut back to the
checkpoint's step, so steps redone after a kill appear once, with the values of the resumed run.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from ..errors import InterleaveError, import_extra

LOG_FILE = "log.jsonl"


def read_log(run_dir: str | Path) -> list[dict[str, Any]]:
    """The log's records; a last line torn by a kill is left out (the resumed run writes that step again)."""
    path = Path(run_dir) / LOG_FILE
    if not path.is_file():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    records = []
    for number, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except ValueError:
            if number < len(lines):
                raise InterleaveError(f"{path}:{number}: not a JSON line; the log is damaged") from None
    return records


class RunLog:
    def __init__(self, run_dir: Path, total_steps: int, start_step: int, progress: bool, tensorboard: bool) -> None:
        self.path = run_dir / LOG_FILE
        kept = [r for r in read_log(run_dir) if r.get("step", 0) <= start_step]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        self.file = self.path.open("a")
        self.total, self.start_step, self.progress = total_steps, start_step, progress
        self.started = time.perf_counter()
        self.writer = None
        if tensorboard:
            board = import_extra("torch.utils.tensorboard", "tensorboard=true", "tensorboard")
            self.writer = board.SummaryWriter(str(run_dir / "tensorboard"), purge_step=start_step + 1)

    def step(self, record: dict[str, Any]) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.writer is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.writer.add_scalar(f"train/{key}", value, record["step"])
        if self.progress:
            self._bar(record)

    def _bar(self, record: dict[str, Any]) -> None:
        step = record["step"]
        done = step - self.start_step
        elapsed = time.perf_counter() - self.started
        eta = elapsed / max(done, 1) * (self.total - step)
        filled = int(20 * step / max(self.total, 1))
        line = (
            f"\r[{'#' * filled}{'.' * (20 - filled)}] {step}/{self.total} loss {record['loss']:.4f} "
            f"lr {record['lr']:.2e} {record.get('tokens_per_s', 0):,.0f} tok/s ETA {int(eta // 60)}:{int(eta % 60):02d}"
        )
        print(line, end="" if step < self.total else "\n", file=sys.stderr, flush=True)

    def message(self, text: str) -> None:
        """A line of its own (a skipped sample, a checkpoint), without breaking the bar for good."""
        print(("\n" if self.progress else "") + text, file=sys.stderr, flush=True)

    def close(self) -> None:
        self.file.close()
        if self.writer is not None:
            self.writer.close()
