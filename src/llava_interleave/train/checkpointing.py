"""Crash-safe, verified training checkpoints.

A checkpoint is written into a hidden temporary directory, fsynced, sealed with a MANIFEST.json (size and
sha256 of every file, written last), and only then renamed into place, so a crash at any point leaves the
previous latest checkpoint intact and loadable. A file damaged later (truncated, bytes overwritten) no
longer matches its manifest: `resume_point` names it and falls back to the newest checkpoint that does
match, because a silently loaded bad tensor turns a resumed run into NaN. RNG states travel with the
checkpoint so a resumed run continues the same random streams (data order, dropout) as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import CheckpointError

CHECKPOINTS_DIR = "checkpoints"
STATE_FILE = "state.pt"
MANIFEST_FILE = "MANIFEST.json"  # {"step": N, "files": {name: {"size": bytes, "sha256": hex}}}
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


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_manifest(directory: Path, step: int) -> None:
    """Write the manifest last: its presence proves every other file was fully written, and its sizes and
    checksums (of the bytes read back from disk) prove later that none was damaged since."""
    files = {p.name: {"size": p.stat().st_size, "sha256": _sha256(p)}
             for p in sorted(directory.iterdir()) if p.is_file() and p.name != MANIFEST_FILE}
    with open(directory / MANIFEST_FILE, "w") as handle:
        json.dump({"step": step, "files": files}, handle, indent=1)
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
    """Checkpoints with a manifest sorted by step, oldest first; tmp and unsealed dirs are skipped."""
    return [path for path in _step_dirs(run_dir) if (path / MANIFEST_FILE).is_file()]


def _step_dirs(run_dir: Path) -> list[Path]:
    """Every step-N directory sorted by step, oldest first, sealed or not."""
    root = _checkpoint_root(run_dir)
    if not root.is_dir():
        return []
    found = [(step, child) for child in root.iterdir() if (step := _step_of(child)) is not None and child.is_dir()]
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
    manifest is on disk, so readers never see a partial checkpoint.
    """
    root = _checkpoint_root(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    _remove_tmp_leftovers(root)
    name = f"{STEP_PREFIX}{step:08d}"
    tmp = root / f"{TMP_PREFIX}{name}-{os.getpid()}"
    tmp.mkdir()
    _write_state(tmp, state)
    _write_manifest(tmp, step)
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
    """Newest sealed checkpoint (its files not checked), or None."""
    complete = _complete_checkpoints(run_dir)
    return complete[-1] if complete else None


def verify_checkpoint(path: Path) -> str | None:
    """What is wrong with a checkpoint, in a few words, or None when every file matches its manifest."""
    try:
        files = json.loads((path / MANIFEST_FILE).read_text())["files"]
        expected = {str(name): (int(entry["size"]), str(entry["sha256"])) for name, entry in files.items()}
    except FileNotFoundError:
        return f"no {MANIFEST_FILE}: its writing never finished"
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return f"unreadable {MANIFEST_FILE}"
    if STATE_FILE not in expected:
        return f"{MANIFEST_FILE} does not list {STATE_FILE}"
    for name, (size, digest) in expected.items():
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != size:
            return f"{name} has {file.stat().st_size:,} bytes, its manifest says {size:,}"
        if _sha256(file) != digest:
            return f"{name} does not match its sha256 in {MANIFEST_FILE}"
    return None


def resume_point(run_dir: Path, warn: Callable[[str], None]) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint whose files match their manifest, loaded; each newer damaged one is named in
    one line through `warn`. None when the run has no checkpoint at all.

    Raises:
        CheckpointError: checkpoints exist but none is intact (one line naming them)."""
    damaged = []
    for path in reversed(_step_dirs(run_dir)):
        problem = verify_checkpoint(path)
        if problem is None:
            return path, load_checkpoint(path)
        warn(f"checkpoint {path} is damaged ({problem}): not used")
        damaged.append(path.name)
    if damaged:
        raise CheckpointError(f"cannot resume: no intact checkpoint in {_checkpoint_root(run_dir)} "
                              f"({', '.join(damaged)} damaged); start again without --resume")
    return None


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load the state dict saved by save_checkpoint (tensors land on CPU); `verify_checkpoint` first when
    the files may have been damaged since."""
    path = Path(path)
    if not (path / MANIFEST_FILE).is_file():
        raise FileNotFoundError(f"{path} is not a complete checkpoint (no {MANIFEST_FILE})")
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
