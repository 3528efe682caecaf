"""The two-stage recipe for a small model from scratch: captions first, then all tasks; both train."""

from __future__ import annotations

from pathlib import Path

from llava_interleave.data.synth import write_synthetic
from llava_interleave.train.config import load_config
from llava_interleave.train.runlog import read_log
from llava_interleave.train.sft import train

ROOT = Path(__file__).resolve().parents[1]


def test_both_stages_train(tmp_path):
    write_synthetic(tmp_path / "align", 32, seed=5, bench_n=0, image_size=96, tasks=["SynthName"])
    write_synthetic(tmp_path / "synth", 28, seed=6, bench_n=0, image_size=96)
    common = ["batch_size=4", "max_steps=16", "progress=false", "data.group_by_length=false", "optim.warmup_ratio=0"]
    stages = (("nano-align", "align", "stage1", []),
              ("nano", "synth", "stage2", [f"model.checkpoint={tmp_path / 'stage1' / 'final'}"]))
    for recipe, data, run, extra in stages:
        train(load_config(ROOT / "recipes" / f"{recipe}.yaml",
                          [f"data.path={tmp_path / data / 'train.json'}", f"out_dir={tmp_path / run}", *common, *extra]))
        losses = [r["loss"] for r in read_log(tmp_path / run)]
        assert sum(losses[-4:]) / 4 < 0.85 * sum(losses[:4]) / 4, (recipe, losses)
    stage2 = load_config(tmp_path / "stage2" / "config.yaml", [])
    assert stage2.model.checkpoint == str(tmp_path / "stage1" / "final")  # stage 2 started from stage 1
