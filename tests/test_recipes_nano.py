"""The bundled model's recipe, end to end on a little data: `scripts/train_bundled.sh` writes both stages'
data, trains each stage a few steps (each loss falls), and scores the held-out bench with both protocols.
The full run (35 minutes) is not repeated here; the shipped model's scores are tested in test_bundled.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llava_interleave.train.config import load_config
from llava_interleave.train.runlog import read_log

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.subprocess
def test_the_script_trains_both_stages_and_scores_them(tmp_path):
    env = {**os.environ, "N_ALIGN": "32", "N_TASKS": "30", "N_HELDOUT": "10", "OMP_NUM_THREADS": "2",
           "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"]}
    overrides = ["batch_size=4", "max_steps=16", "progress=false", "data.group_by_length=false", "optim.warmup_ratio=0"]
    result = subprocess.run([str(ROOT / "scripts" / "train_bundled.sh"), str(tmp_path), *overrides], env=env,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    for run in ("nano-align", "nano"):
        losses = [r["loss"] for r in read_log(tmp_path / "runs" / run)]
        assert len(losses) == 16 and sum(losses[-4:]) / 4 < 0.85 * sum(losses[:4]) / 4, (run, losses)
    stage2 = load_config(tmp_path / "runs" / "nano" / "config.yaml", [])
    assert stage2.model.checkpoint == str(tmp_path / "runs" / "nano-align" / "final")  # stage 2 starts from stage 1
    assert tuple(stage2.optim.tune) == ("projector", "llm")  # the tower learned in stage 1 stays as it is
    for protocol in ("paper", "harness"):
        report = json.loads((tmp_path / "heldout" / protocol / "report.json").read_text())
        assert report["scores"]["protocol"] == protocol and sum(report["scores"]["samples"].values()) == 10
