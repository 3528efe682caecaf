"""Checkpoints: atomic writes survive crashes, pruning, tmp cleanup, RNG and exact training resume; a manifest
finds damaged files and resume falls back to the newest intact checkpoint."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from llava_interleave.errors import CheckpointError
from llava_interleave.train import checkpointing as ckpt


def _draws() -> tuple[float, float, list[float]]:
    return random.random(), float(np.random.rand()), torch.rand(3).tolist()


def test_save_load_roundtrip(tmp_path: Path):
    path = ckpt.save_checkpoint(tmp_path, 7, {"w": torch.arange(3), "pos": 12})
    assert path == tmp_path / "checkpoints" / "step-00000007"
    assert (path / "MANIFEST.json").is_file()
    loaded = ckpt.load_checkpoint(path)
    assert loaded["pos"] == 12 and loaded["w"].tolist() == [0, 1, 2]
    assert ckpt.latest_checkpoint(tmp_path) == path


def test_no_checkpoint_returns_none(tmp_path: Path):
    assert ckpt.latest_checkpoint(tmp_path) is None


@pytest.mark.parametrize("fail_at", ["_write_state", "_write_manifest"])
def test_crash_midway_keeps_previous_latest(tmp_path: Path, monkeypatch, fail_at: str):
    good = ckpt.save_checkpoint(tmp_path, 1, {"value": 1})
    original = getattr(ckpt, fail_at)

    def crash(directory, *args):
        original(directory, *args)  # the write happens, then the process "dies"
        raise OSError("simulated crash")

    monkeypatch.setattr(ckpt, fail_at, crash)
    with pytest.raises(OSError):
        ckpt.save_checkpoint(tmp_path, 2, {"value": 2})
    assert ckpt.latest_checkpoint(tmp_path) == good
    assert ckpt.load_checkpoint(good)["value"] == 1
    assert not (tmp_path / "checkpoints" / "step-00000002").exists()

    monkeypatch.undo()
    newer = ckpt.save_checkpoint(tmp_path, 3, {"value": 3})
    assert ckpt.latest_checkpoint(tmp_path) == newer
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".tmp-")]


def test_incomplete_directory_is_ignored(tmp_path: Path):
    good = ckpt.save_checkpoint(tmp_path, 1, {"value": 1})
    (tmp_path / "checkpoints" / "step-00000009").mkdir()
    assert ckpt.latest_checkpoint(tmp_path) == good
    with pytest.raises(FileNotFoundError):
        ckpt.load_checkpoint(tmp_path / "checkpoints" / "step-00000009")


def test_tmp_leftovers_are_removed(tmp_path: Path):
    leftover = tmp_path / "checkpoints" / ".tmp-step-00000005-123"
    leftover.mkdir(parents=True)
    (leftover / "state.pt").write_bytes(b"partial")
    assert ckpt.latest_checkpoint(tmp_path) is None
    ckpt.save_checkpoint(tmp_path, 6, {})
    assert not leftover.exists()


def test_keep_last_prunes_oldest(tmp_path: Path):
    for step in range(1, 6):
        ckpt.save_checkpoint(tmp_path, step, {"step": step}, keep_last=2)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["step-00000004", "step-00000005"]
    ckpt.save_checkpoint(tmp_path, 6, {"step": 6}, keep_last=0)  # never deletes the newest
    assert ckpt.latest_checkpoint(tmp_path).name == "step-00000006"
    assert ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path))["step"] == 6


def test_resave_same_step_replaces(tmp_path: Path):
    ckpt.save_checkpoint(tmp_path, 4, {"v": "old"})
    path = ckpt.save_checkpoint(tmp_path, 4, {"v": "new"})
    assert ckpt.load_checkpoint(path)["v"] == "new"


def test_rng_state_roundtrip_through_checkpoint(tmp_path: Path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    _draws()
    path = ckpt.save_checkpoint(tmp_path, 1, {"rng": ckpt.rng_state()})
    expected = [_draws() for _ in range(3)]
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    ckpt.set_rng_state(ckpt.load_checkpoint(path)["rng"])
    assert [_draws() for _ in range(3)] == expected


def _make_model() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.2), torch.nn.Linear(8, 1))


def _train(model: torch.nn.Module, optimizer: torch.optim.Optimizer, steps: int) -> list[float]:
    """Each step draws fresh data from the global RNGs, so resumption must restore them."""
    losses = []
    for _ in range(steps):
        x = torch.randn(5, 4) + float(np.random.rand()) + random.random()
        y = x.sum(dim=1, keepdim=True)
        loss = torch.nn.functional.mse_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def test_resume_reproduces_uninterrupted_training(tmp_path: Path):
    _seed_all(0)
    model = _make_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    straight = _train(model, optimizer, 6)

    _seed_all(0)
    model = _make_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    first = _train(model, optimizer, 3)
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": 3, "rng": ckpt.rng_state()}
    ckpt.save_checkpoint(tmp_path, 3, state)

    _seed_all(123)  # a fresh process with different randomness
    loaded = ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path))
    resumed_model = _make_model()
    resumed_model.load_state_dict(loaded["model"])
    resumed_optimizer = torch.optim.AdamW(resumed_model.parameters(), lr=1e-2)
    resumed_optimizer.load_state_dict(loaded["optimizer"])
    ckpt.set_rng_state(loaded["rng"])
    second = _train(resumed_model, resumed_optimizer, 3)

    assert loaded["step"] == 3
    assert first + second == pytest.approx(straight, abs=1e-6)


def _damage(file: Path, how: str) -> None:
    size = file.stat().st_size
    with open(file, "r+b") as handle:
        if how == "truncate":
            handle.truncate(size // 2)
        else:  # 4 KB overwritten inside the tensor data
            handle.seek(size // 2)
            handle.write(b"\x7f" * 4096)


@pytest.mark.parametrize("how, problem", [("truncate", "state.pt has"), ("overwrite", "state.pt does not match its sha256")])
def test_a_damaged_file_no_longer_matches_its_manifest(tmp_path: Path, how: str, problem: str):
    path = ckpt.save_checkpoint(tmp_path, 1, {"w": torch.randn(64, 1024)})
    assert ckpt.verify_checkpoint(path) is None
    _damage(path / "state.pt", how)
    assert ckpt.verify_checkpoint(path).startswith(problem)
    (path / "MANIFEST.json").write_text("{not json")
    assert ckpt.verify_checkpoint(path) == "unreadable MANIFEST.json"
    (path / "MANIFEST.json").unlink()
    assert ckpt.verify_checkpoint(path).startswith("no MANIFEST.json")


def test_resume_point_names_each_damaged_checkpoint_and_takes_the_newest_intact_one(tmp_path: Path):
    for step in (2, 4, 6):
        ckpt.save_checkpoint(tmp_path, step, {"w": torch.full((64, 1024), float(step))})
    root = tmp_path / "checkpoints"
    _damage(root / "step-00000006" / "state.pt", "overwrite")
    (root / "step-00000004" / "state.pt").unlink()
    warnings: list[str] = []
    path, state = ckpt.resume_point(tmp_path, warnings.append)
    assert path.name == "step-00000002" and state["w"][0, 0] == 2
    assert warnings == [
        f"checkpoint {root / 'step-00000006'} is damaged (state.pt does not match its sha256 in MANIFEST.json): not used",
        f"checkpoint {root / 'step-00000004'} is damaged (state.pt is missing): not used",
    ]
    assert ckpt.resume_point(tmp_path / "elsewhere", warnings.append) is None


def test_resume_point_refuses_when_no_checkpoint_is_intact(tmp_path: Path):
    ckpt.save_checkpoint(tmp_path, 2, {"w": torch.zeros(64, 1024)})
    _damage(tmp_path / "checkpoints" / "step-00000002" / "state.pt", "truncate")
    with pytest.raises(CheckpointError, match=r"^cannot resume: no intact checkpoint in .* \(step-00000002 damaged\)"):
        ckpt.resume_point(tmp_path, lambda line: None)
