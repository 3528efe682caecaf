"""The bundled model's two-stage recipe, a few steps of each: naming shapes first, then the multi-choice
tasks of every scenario from the named model; both stages' losses fall (the full run is not repeated here)."""

from __future__ import annotations

from pathlib import Path

from llava_interleave.data.synth import write_synthetic
from llava_interleave.train.config import load_config
from llava_interleave.train.runlog import read_log
from llava_interleave.train.sft import train

ROOT = Path(__file__).resolve().parents[1]
STAGE2_TASKS = ["SynthFindImage", "SynthColourChange", "SynthScenePlace", "SynthDetail", "SynthName"]  # as recipes/nano.yaml says


def test_both_stages_train(tmp_path):
    write_synthetic(tmp_path / "align", 32, seed=5, bench_n=0, image_size=96, tasks=["SynthName"])
    write_synthetic(tmp_path / "synth", 30, seed=6, bench_n=0, image_size=96, tasks=STAGE2_TASKS)
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
    assert stage2.optim.tune == ("projector", "llm")  # the tower learned in stage 1 stays as it is
    assert "--tasks " + ",".join(STAGE2_TASKS) in (ROOT / "recipes" / "nano.yaml").read_text()
