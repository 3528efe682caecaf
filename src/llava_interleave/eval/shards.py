"""Data-parallel evaluation under torchrun, and the append-only predictions files that make runs resumable.

Rank r of w answers items r::w into `predictions.rank{r}.jsonl`; after a barrier rank 0 merges every rank
file into `predictions.jsonl` in bench order and removes them. Processes only meet at barriers, so the gloo
backend serves CPU and GPU runs alike. A line is written whole and flushed as soon as its item is answered;
a run killed mid-line leaves a broken tail that the next run cuts off before appending.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch.distributed as dist

from .scoring import read_lines

MERGED = "predictions.jsonl"
BARRIER_TIMEOUT = timedelta(hours=12)  # ranks wait for the slowest one's share of the bench


@dataclass(frozen=True)
class Shard:
    rank: int
    world: int
    owns_group: bool = False  # we started the process group, so we end it

    def file(self, out_dir: Path) -> Path:
        return out_dir / (MERGED if self.world == 1 else f"predictions.rank{self.rank}.jsonl")

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def close(self) -> None:
        if self.owns_group:
            dist.destroy_process_group()


def current_shard() -> Shard:
    """This process's shard: one of WORLD_SIZE under torchrun (joining or starting a gloo group), else 0 of 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Shard(0, 1)
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("gloo", timeout=BARRIER_TIMEOUT)
    return Shard(dist.get_rank(), dist.get_world_size(), owns)


def prediction_files(out_dir: Path) -> list[Path]:
    """The merged file first, then any rank files a sharded run left behind."""
    merged = [out_dir / MERGED] if (out_dir / MERGED).is_file() else []
    return merged + sorted(out_dir.glob("predictions.rank*.jsonl"))


def _key(line: dict[str, Any]) -> tuple[str, str]:
    return str(line["dataset"]), str(line["sample_id"])


def finished(out_dir: Path) -> set[tuple[str, str]]:
    """(dataset, sample id) of the samples already answered (or failed) in any predictions file: a rerun
    skips them."""
    return {_key(line) for path in prediction_files(out_dir) for line in read_lines(path)}


def cut_broken_tail(path: Path) -> None:
    """Drop an unfinished last line, so that appended lines start on a line of their own."""
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(path, "r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)


def merge(out_dir: Path, order: list[tuple[str, str]]) -> Path:
    """Rank 0, after the barrier: every prediction once (first seen wins), in bench order, in one file."""
    lines: dict[tuple[tuple[str, str], int], dict[str, Any]] = {}
    sources = prediction_files(out_dir)
    for path in sources:
        for line in read_lines(path):
            lines.setdefault((_key(line), int(line.get("turn", 0))), line)
    position = {key: k for k, key in enumerate(order)}
    ordered = sorted(lines.items(), key=lambda kv: (position.get(kv[0][0], len(order)), kv[0][1]))
    target, partial = out_dir / MERGED, out_dir / (MERGED + ".tmp")
    partial.write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for _, line in ordered), encoding="utf-8")
    os.replace(partial, target)
    for path in sources:
        if path != target:
            path.unlink()
    return target
