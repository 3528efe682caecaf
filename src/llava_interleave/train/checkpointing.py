"""Crash-safe training checkpoints.

A checkpoint is written into a hidden temporary directory, fsynced, marked with a COMPLETE
file, and only then renamed into place, so a crash at any point leaves the previous latest
checkpoint intact and loadable. RNG states travel with the checkpoint so a resumed run
continues the same random streams (data order, dropout) as an uninterrupted one.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

CHECKPOINTS_DIR = "checkpoints"
STATE_FILE = "state.pt"
COMPLETE_MARKER = "COMPLETE"
STEP_PREFIX = "step-"
TMP_PREFIX = ".tmp-"


def _checkpoint_root(run_dir: Path) -> Path:
    return Path(run_dir) / CHECKPOINTS_DIR


def _fsync_path(path: Path) -> None:
    """Flush a file or directory entry to disk; directory fsync is best effort (not on Windows)."""
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) if path.is_dir() else os.O_RDONLY
    try:
        fd = os.open(path, flags)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_state(directory: Path, state: dict[str, Any]) -> None:
    """Serialize the state dict and force it to disk before the marker is written."""
    path = directory / STATE_FILE
    with open(path, "wb") as handle:
        torch.save(state, handle)
        handle.flush()
        os.fsync(handle.fileno())


def _write_complete_marker(directory: Path, step: int) -> None:
    """Write the marker last: its presence proves every other file was fully written."""
    path = directory / COMPLETE_MARKER
    with open(path, "w") as handle:
        handle.write(f"{step}\n")
        handle.flush()
        os.fsync(handle.fileno())


def _step_of(path: Path) -> int | None:
    if not path.name.startswith(STEP_PREFIX):
        return None
    try:
        return int(path.name[len(STEP_PREFIX):])
    except ValueError:
        return None


def _complete_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints sorted by step, oldest first; tmp and unmarked dirs are skipped."""
    root = _checkpoint_root(run_dir)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        step = _step_of(child)
        if step is not None and child.is_dir() and (child / COMPLETE_MARKER).is_file():
            found.append((step, child))
    return [path for _, path in sorted(found)]


def _remove_tmp_leftovers(root: Path) -> None:
    """Delete half-written directories left behind by a crash during an earlier save."""
    for child in root.iterdir():
        if child.name.startswith(TMP_PREFIX):
            shutil.rmtree(child, ignore_errors=True)


def _prune(run_dir: Path, keep_last: int) -> None:
    """Keep only the newest keep_last complete checkpoints; the newest one always survives."""
    keep = max(1, keep_last)
    for path in _complete_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(path, ignore_errors=True)


def save_checkpoint(run_dir: Path, step: int, state: dict[str, Any], keep_last: int = 3) -> Path:
    """Atomically write run_dir/checkpoints/step-{step:08d} and prune old checkpoints.

    The caller puts model/optimizer/scheduler state dicts, the data position and rng_state()
    into `state`. Writing goes to a .tmp- directory that is renamed into place only after the
    COMPLETE marker is on disk, so readers never see a partial checkpoint.
    """
    root = _checkpoint_root(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    _remove_tmp_leftovers(root)
    name = f"{STEP_PREFIX}{step:08d}"
    tmp = root / f"{TMP_PREFIX}{name}-{os.getpid()}"
    tmp.mkdir()
    _write_state(tmp, state)
    _write_complete_marker(tmp, step)
    _fsync_path(tmp)
    final = root / name
    if final.exists():
        # Re-saving the same step: move the old copy aside first (a rename cannot replace a
        # non-empty directory); if we crash here the .tmp- copy is cleaned on the next save.
        stale = root / f"{TMP_PREFIX}old-{name}-{os.getpid()}"
        os.replace(final, stale)
        os.replace(tmp, final)
        shutil.rmtree(stale, ignore_errors=True)
    else:
        os.replace(tmp, final)
    _fsync_path(root)
    _prune(run_dir, keep_last)
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    """Newest complete checkpoint, or None; lets a restarted job resume without arguments."""
    complete = _complete_checkpoints(run_dir)
    return complete[-1] if complete else None


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load the state dict saved by save_checkpoint (tensors land on CPU)."""
    path = Path(path)
    if not (path / COMPLETE_MARKER).is_file():
        raise FileNotFoundError(f"{path} is not a complete checkpoint (no {COMPLETE_MARKER} marker)")
    # weights_only=False is safe here: these are files our own training loop wrote, and the
    # state holds numpy/python RNG states that the weights-only unpickler rejects.
    return torch.load(path / STATE_FILE, map_location="cpu", weights_only=False)


def rng_state() -> dict[str, Any]:
    """Capture python, numpy, torch CPU (and CUDA) generator states for exact resumption."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the states captured by rng_state(); CUDA is restored only when present on both sides."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
