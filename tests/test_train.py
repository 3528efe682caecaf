"""SFT recipe: configs, schedule, step plan, resume after a kill, torchrun, tunable parts, LoRA, packing, export."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import get_args

import pytest
import torch

from llava_interleave.cli import main
from llava_interleave.data.synth import write_synthetic
from llava_interleave.data.templates import TEMPLATES, TemplateName
from llava_interleave.model.checkpoint import load_model
from llava_interleave.model.llava import LlavaInterleave
from llava_interleave.train import trainer as trainer_module
from llava_interleave.train.build import add_lora
from llava_interleave.train.config import ConfigError, LoraSpec, Preset, load_config
from llava_interleave.train.plan import StepPlan
from llava_interleave.train.presets import TEXT, VISION
from llava_interleave.train.runlog import read_log
from llava_interleave.train.schedule import lr_factor
from llava_interleave.train.sft import train


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    write_synthetic(out, 48, seed=3, bench_n=6, image_size=48)
    return out / "train.json"


def config(data: Path, out: Path, *overrides: str):
    base = [f"data.path={data}", f"out_dir={out}", "model.preset=tiny", "batch_size=4", "max_steps=4",
            "optim.lr=1e-3", "progress=false", "data.max_length=2048", "data.num_frames=4", "seed=1"]
    return load_config(None, base + list(overrides))


def losses(run: Path) -> list[float]:
    return [r["loss"] for r in read_log(run)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---------------------------------------------------------------------------------------------- config
def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model: {preset: tiny}\ndata: {path: data/train.json}\noptim: {lr: 1e-4, tune: [projector]}\n")
    cfg = load_config(path, ["optim.llm_lr=3e-5", "batch_size=2", "data.packing=true", "data.image_root=media"])
    assert cfg.optim.lr == 1e-4 and cfg.optim.tune == ("projector",) and cfg.optim.lr_of("llm") == 3e-5
    assert cfg.optim.lr_of("projector") == 1e-4 and cfg.batch_size == 2 and cfg.data.packing is True
    assert cfg.data.path == str(tmp_path / "data" / "train.json")  # written in the YAML: relative to it
    assert cfg.data.image_root == "media"  # given on the command line: relative to where you are


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["optim.lrr=1"], "unknown key optim.lrr"),
        (["batch_size=two"], "batch_size must be int"),
        (["optim.lr=fast"], "optim.lr must be a number"),
        (["optim.tune=[eyes]"], "optim.tune must be one of vision_tower, projector, llm, got 'eyes'"),
        (["optim.loss_average=batch"], "optim.loss_average must be one of token, sample, got 'batch'"),
        (["data.truncation=cut"], "data.truncation must be one of drop, trailing_turns, got 'cut'"),
        (["model.template=llama"], "model.template must be one of qwen_1_5, hf, got 'llama'"),
        (["optim.schedule=step"], "optim.schedule must be one of cosine, linear, constant, got 'step'"),
        (["distributed=zero"], "distributed must be one of fsdp, ddp, got 'zero'"),
        (["dtype=float64"], "dtype must be one of float32, bfloat16, float16, got 'float64'"),
        (["model.processor={image_aspect: wide}"],
         "model.processor.image_aspect must be one of squash, pad, anyres, got 'wide'"),
        (["model.processor={multi_aspect: wide}"], "model.processor.multi_aspect must be one of pad, squash, got 'wide'"),
        (["model.processor={nope: 1}"], "unknown key model.processor.nope"),
        (["model.checkpoint=x"], "exactly one of model.checkpoint"),
        (["nokey"], "not KEY=VALUE"),
    ],
)
def test_config_errors_say_what_is_wrong(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, ["model.preset=tiny", "data.path=x.json", *overrides])


def test_a_training_config_sets_the_aspect_rules(tokenizer):
    """model.processor takes image_aspect and multi_aspect, so training and inference make images square alike."""
    from llava_interleave.train.presets import preset_config

    cfg = load_config(None, ["model.preset=tiny", "data.path=x.json", "model.processor={multi_aspect: squash}"])
    proc = preset_config("tiny", tokenizer, cfg.model.processor).processor
    assert (proc.image_aspect, proc.multi_aspect) == ("anyres", "squash")


def test_a_bad_choice_in_yaml_names_the_key_the_value_and_the_choices(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model: {preset: huge}\ndata: {path: x.json}\n")
    with pytest.raises(ConfigError, match="model.preset must be one of tiny, nano, got 'huge'"):
        load_config(path)
    path.write_text("model: {preset: tiny}\ndata: {path: x.json, truncation: cut}\n")
    with pytest.raises(ConfigError, match="data.truncation must be one of drop, trailing_turns, got 'cut'"):
        load_config(path)


def test_choices_are_the_ones_the_code_knows():
    assert set(get_args(TemplateName)) == set(TEMPLATES) and set(get_args(Preset)) == set(VISION) == set(TEXT)


def test_the_placement_seed_follows_the_run_seed_unless_given():
    base = ["model.preset=tiny", "data.path=x.json"]
    assert load_config(None, base).data.seed == 0
    assert load_config(None, [*base, "seed=5"]).data.seed == 5
    assert load_config(None, [*base, "seed=5", "data.seed=2"]).data.seed == 2


@pytest.mark.parametrize("recipe", sorted((Path(__file__).parents[1] / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_recipes_are_valid_configs(recipe):
    cfg = load_config(recipe, ["out_dir=somewhere"])
    assert Path(cfg.data.path).is_absolute() and cfg.out_dir == "somewhere"


def test_schedule_warms_up_then_decays():
    assert [lr_factor(s, 10, 2, "cosine") for s in (0, 1)] == [0.5, 1.0]
    assert lr_factor(2, 10, 2, "cosine") == 1.0 and lr_factor(6, 10, 2, "cosine") == pytest.approx(0.5)
    assert lr_factor(6, 10, 2, "linear") == pytest.approx(0.5) and lr_factor(9, 10, 2, "linear") == pytest.approx(1 / 8)
    assert lr_factor(9, 10, 2, "constant") == 1.0


def test_two_processes_see_different_halves_of_the_same_global_batch():
    lengths, modalities = list(range(40)), ["image"] * 20 + ["video"] * 20
    one = StepPlan(lengths, modalities, batch_size=4, grad_accum=2, world=1, seed=5)
    two = StepPlan(lengths, modalities, batch_size=2, grad_accum=2, world=2, seed=5)
    for step in range(one.steps_per_epoch * 2):
        rank0, rank1 = ([i for batch in two.micro_batches(step, r) for i in batch] for r in (0, 1))
        assert not set(rank0) & set(rank1)
        assert sorted(rank0 + rank1) == sorted(i for batch in one.micro_batches(step, 0) for i in batch)
    assert one.step_indices(0) != one.step_indices(one.steps_per_epoch)  # a new epoch reshuffles


# ---------------------------------------------------------------------------------------------- training
@pytest.mark.slow
def test_kill_and_resume_gives_the_same_losses(synth, tmp_path, monkeypatch):
    train(config(synth, tmp_path / "full", "max_steps=6", "save_every=2"))
    original = trainer_module.Trainer.step

    def dies_at_step_5(self, step):
        if step == 4:
            raise KeyboardInterrupt("killed")
        return original(self, step)

    monkeypatch.setattr(trainer_module.Trainer, "step", dies_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        train(config(synth, tmp_path / "killed", "max_steps=6", "save_every=2", "keep_last=1"))
    assert [p.name for p in (tmp_path / "killed" / "checkpoints").iterdir()] == ["step-00000004"]
    monkeypatch.setattr(trainer_module.Trainer, "step", original)
    train(config(synth, tmp_path / "killed", "max_steps=6", "save_every=2"), resume=True)
    assert len(losses(tmp_path / "killed")) == 6
    assert losses(tmp_path / "killed") == pytest.approx(losses(tmp_path / "full"), abs=1e-6)
    assert all(a != b for a, b in zip(losses(tmp_path / "full"), losses(tmp_path / "full")[1:]))


@pytest.mark.slow
def test_grad_accumulation_and_packing_leave_the_loss_unchanged(synth, tmp_path):
    train(config(synth, tmp_path / "plain"))
    train(config(synth, tmp_path / "accum", "batch_size=2", "grad_accum=2"))
    train(config(synth, tmp_path / "packed", "data.packing=true"))
    reference = losses(tmp_path / "plain")
    assert losses(tmp_path / "accum") == pytest.approx(reference, rel=1e-5)
    assert losses(tmp_path / "packed") == pytest.approx(reference, rel=1e-5)
    assert reference[-1] < reference[0]


@pytest.mark.slow
def test_a_mixture_yaml_and_gradient_checkpointing_train_the_same_samples(synth, tmp_path):
    mixture = tmp_path / "mix.yaml"
    mixture.write_text(f"datasets:\n  - json_path: {synth}\n    sampling_strategy: all\n")
    train(config(synth, tmp_path / "file", "data.group_by_length=false"))
    train(config(mixture, tmp_path / "mix", "data.group_by_length=false", "grad_checkpointing=true",
                 f"data.image_root={synth.parent}"))
    assert losses(tmp_path / "mix") == pytest.approx(losses(tmp_path / "file"), rel=1e-5)


def test_only_tuned_parts_change_each_at_its_learning_rate(synth, tmp_path, tokenizer, hf_checkpoint):
    base, _ = load_model(hf_checkpoint, "cpu")
    cfg = load_config(None, [f"model.checkpoint={hf_checkpoint}", f"data.path={synth}", f"out_dir={tmp_path}", "max_steps=2",
                             "batch_size=2", "optim.tune=[projector]", "optim.projector_lr=1e-2", "progress=false",
                             "data.max_length=4096", "data.num_frames=2", "model.template=hf"])
    tuned, _ = load_model(train(cfg), "cpu")
    before, after = base.state_dict(), tuned.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("projector.") for k in changed)
    assert read_log(tmp_path)[0]["lr"] == 1e-2


@pytest.mark.slow
def test_lora_trains_adapters_and_exports_a_merged_model(synth, tmp_path):
    final = train(config(synth, tmp_path, "lora.enabled=true", "lora.r=4", "lora.dropout=0", "optim.tune=[llm]"))
    merged, _ = load_model(final, "cpu")
    assert not any("lora" in k for k in merged.state_dict())
    state = torch.load(next((tmp_path / "checkpoints").iterdir()) / "state.pt", weights_only=False)["model"]
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in state.items())  # B starts at zero: it learned
    unmerged = LlavaInterleave(merged.config)
    add_lora(unmerged, LoraSpec(r=4, dropout=0.0))
    missing = unmerged.load_state_dict(state, strict=False).missing_keys
    assert not [k for k in missing if "lora" in k or "base_layer" in k]
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():  # peft's adapter forward == our merged weights
        assert torch.allclose(unmerged.eval()(ids).logits, merged(ids).logits, atol=1e-5)


@pytest.mark.slow
def test_tensorboard_events_are_written(synth, tmp_path):
    train(config(synth, tmp_path, "max_steps=2", "tensorboard=true"))
    events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 100


@pytest.mark.slow
def test_cli_train_skips_bad_samples_plots_and_exports(synth, tmp_path, capsys):
    entries = json.loads(synth.read_text())
    entries[0]["image"] = ["missing.png"] * len(entries[0].get("image", []) or [1])
    broken = synth.parent / "broken.json"
    broken.write_text(json.dumps(entries))
    run = tmp_path / "run"
    args = ["train", "model.preset=tiny", f"data.path={broken}", f"out_dir={run}", "batch_size=8", "epochs=1",
            "progress=false", "data.max_length=2048", "data.num_frames=4", "data.group_by_length=false", "seed=2"]
    assert main(args) == 0
    skipped = read_log(run)[-1]["skipped"]
    assert sum(skipped.values()) >= 1, skipped
    assert main(["plot", str(run)]) == 0 and (run / "curves.png").stat().st_size > 1000
    image = next(p for p in synth.parent.rglob("*.png"))
    assert main(["generate", "--model", str(run / "final"), "--prompt", "<image> How many?", "--image", str(image),
                 "--max-new-tokens", "3"]) == 0
    assert main(["convert", str(run / "final"), str(tmp_path / "hf"), "--to", "hf"]) == 0
    assert (tmp_path / "hf" / "preprocessor_config.json").is_file()


TORCHRUN = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))


def torchrun(synth: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    args = [f"data.path={synth}", f"out_dir={out}", "model.preset=tiny", "batch_size=2", "max_steps=4", "optim.lr=1e-3",
            "progress=false", "data.max_length=2048", "data.num_frames=4", "seed=1", *extra]
    done = subprocess.run([TORCHRUN, "--nproc_per_node", "2", "--master_port", str(free_port()), "-m", "llava_interleave.cli",
                           "train", *args], env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.skipif(not Path(TORCHRUN).exists(), reason="torchrun not installed")
@pytest.mark.parametrize("strategy", ["fsdp", "ddp"])
def test_torchrun_two_processes_match_one(synth, tmp_path, strategy):
    train(config(synth, tmp_path / "one", "batch_size=4"))
    done = torchrun(synth, tmp_path / "two", f"distributed={strategy}")
    assert "on 2 process(es)" in done.stdout
    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), rel=1e-5)
    assert load_model(tmp_path / "two" / "final", "cpu")[0] is not None


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.skipif(not Path(TORCHRUN).exists(), reason="torchrun not installed")
def test_a_one_process_checkpoint_resumes_sharded_on_two(synth, tmp_path):
    train(config(synth, tmp_path / "one", "batch_size=4"))
    train(config(synth, tmp_path / "moved", "batch_size=4", "max_steps=2"))  # stops at step 2 with a checkpoint
    torchrun(synth, tmp_path / "moved", "--resume", "--allow-config-change")  # max_steps 2 -> 4; same global batch
    assert losses(tmp_path / "moved") == pytest.approx(losses(tmp_path / "one"), rel=1e-5)
    assert (tmp_path / "moved" / "config.history" / "001.yaml").read_text().startswith("# from step 2: max_steps 2 -> 4\n")
