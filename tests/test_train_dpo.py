"""DPO recipe: the logged loss is the sigmoid-DPO formula of the logged rewards, reward accuracy rises under
training, precomputed reference log-probs give the same run as a frozen copy, broken pairs are skipped."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from llava_interleave.cli import main
from llava_interleave.train.config import load_config
from llava_interleave.train.dpo import train
from llava_interleave.train.runlog import read_log

from .conftest import random_image

pytestmark = pytest.mark.slow  # every test trains
ANSWERS = [("a red square", "a blue circle"), ("two cats", "three dogs"), ("the left one", "the right one"),
           ("it moves up", "it stays still")]


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("dpo")
    rows = []
    for i in range(16):
        random_image(i, (32, 32)).save(folder / f"{i}.png")
        chosen, rejected = ANSWERS[i % len(ANSWERS)]
        rows.append({"id": f"p{i}", "prompt": "<image>\nWhat is shown?", "chosen": chosen, "rejected": rejected,
                     "image": f"{i}.png"})
    path = folder / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def dpo_config(data: Path, out: Path, *overrides: str):
    return load_config(None, [f"data.path={data}", f"out_dir={out}", "model.preset=tiny", "batch_size=1", "max_steps=12",
                              "optim.lr=3e-3", "optim.warmup_ratio=0", "optim.schedule=constant", "progress=false",
                              "dpo.beta=0.5", "seed=4", "data.group_by_length=false", *overrides])


def test_reward_accuracy_rises_and_the_loss_follows_the_rewards(pairs, tmp_path):
    train(dpo_config(pairs, tmp_path))
    log = read_log(tmp_path)
    assert log[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)  # policy == reference at the start
    for row in log:  # one pair per step: loss = -log sigmoid(beta * implied log-ratio) exactly
        implied = row["chosen_reward"] - row["rejected_reward"]
        assert row["loss"] == pytest.approx(math.log1p(math.exp(-implied)), rel=1e-5)
        assert row["margin"] == pytest.approx(implied, rel=1e-5, abs=1e-7)
    late = log[-4:]
    assert sum(r["reward_accuracy"] for r in late) == 4 and all(r["loss"] < math.log(2) for r in late)


def test_precomputed_reference_matches_the_frozen_copy(pairs, tmp_path):
    train(dpo_config(pairs, tmp_path / "copy", "max_steps=4"))
    reference = tmp_path / "ref.jsonl"
    args = ["dpo", f"data.path={pairs}", f"out_dir={tmp_path / 'pre'}", "model.preset=tiny", "seed=4"]
    assert main([*args, "--write-reference", str(reference)]) == 0
    assert len(reference.read_text().splitlines()) == 16
    train(dpo_config(pairs, tmp_path / "pre", "max_steps=4", f"dpo.reference_logprobs={reference}"))
    copy_log, pre_log = read_log(tmp_path / "copy"), read_log(tmp_path / "pre")
    assert [r["loss"] for r in pre_log] == pytest.approx([r["loss"] for r in copy_log], rel=1e-5)


def test_broken_pairs_are_skipped_and_counted(pairs, tmp_path):
    lines = pairs.read_text().splitlines()
    lines[1] = "{not json"
    lines[2] = json.dumps({"id": "x", "prompt": "<image> hi", "chosen": "a", "rejected": "b", "image": "gone.png"})
    broken = tmp_path / "broken.jsonl"
    broken.write_text("\n".join(lines) + "\n")
    for i in range(16):
        (tmp_path / f"{i}.png").write_bytes((pairs.parent / f"{i}.png").read_bytes())
    train(dpo_config(broken, tmp_path / "run", "batch_size=4", "max_steps=4", "data.max_skip_ratio=0.5"))
    skipped = read_log(tmp_path / "run")[-1]["skipped"]
    assert skipped.get("unreadable json", 0) >= 1 and skipped.get("missing media", 0) >= 1, skipped
