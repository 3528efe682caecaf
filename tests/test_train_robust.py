"""A run never dies of dirty data and loses nothing (issue 12, items 2-4): skipped samples are listed in
skipped.jsonl with the reasons `data validate` gives and counted across resumes; a damaged checkpoint is
named and the previous intact one used; a non-finite loss stops the run (or is skipped) and no NaN model is
written; `--resume` refuses a changed config unless asked, keeping the original."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import pytest
import torch

from llava_interleave.cli import main
from llava_interleave.data import defects
from llava_interleave.data.dataset import Skipped, TooManyBadSamples
from llava_interleave.data.m4 import MediaResolver
from llava_interleave.data.synth import write_synthetic
from llava_interleave.data.validate import validate
from llava_interleave.model.checkpoint import load_model
from llava_interleave.train import trainer as trainer_module
from llava_interleave.train.config import ConfigError, load_config, to_dict
from llava_interleave.train.guard import SPIKE_MIN_STEPS, LossGuard, TrainingDiverged
from llava_interleave.train.resume import config_changes, describe
from llava_interleave.train.runlog import read_log
from llava_interleave.train.sft import SFTObjective, train
from llava_interleave.train.skips import SKIP_FILE, SkipFile, summary

from .test_dirty_data import png_header
from .test_train import TORCHRUN, config, losses, torchrun

QA = [{"from": "human", "value": "<image>\nWhat colour?"}, {"from": "gpt", "value": "Red."}]


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    write_synthetic(out, 48, seed=3, bench_n=6, image_size=48)
    return out / "train.json"


@pytest.fixture(scope="module")
def dirty(synth, tmp_path_factory) -> tuple[Path, set[tuple[str, int, str]]]:
    """42 good samples and 6 kinds of defect in one JSONL (48 entries: 12 steps of 4 see each once); returns
    the file and the (file, line, reason) of each bad entry."""
    folder = tmp_path_factory.mktemp("dirty")
    (folder / "bomb.png").write_bytes(png_header(20_000, 20_000))
    good = [json.dumps(e).encode() for e in json.loads(synth.read_text())[:42]]
    image = next(e["image"] for e in json.loads(synth.read_text()) if isinstance(e.get("image"), str))

    def entry(sample_id: str, picture: str = image, turns: list | None = None) -> bytes:
        return json.dumps({"id": sample_id, "image": picture, "conversations": turns or QA}).encode()

    bad = [(b'{"id": "bad-utf8", "conversations": "\xff\xfe"}', defects.UNREADABLE_JSON),
           (entry("surrogate", turns=[{"from": "human", "value": "<image> hi \ud800"}, QA[1]]), defects.BAD_TEXT),
           (entry("missing", "missing.png"), defects.MISSING_MEDIA),
           (entry("bomb", str(folder / "bomb.png")), defects.IMAGE_TOO_LARGE),
           (b'{"id": "broken", ', defects.UNREADABLE_JSON),
           (good[1], defects.DUPLICATE_ID)]
    lines, expected = list(good), set()
    path = folder / "dirty.jsonl"
    for k, (line, reason) in enumerate(bad):
        lines.insert(5 + 7 * k, line)
        expected.add((str(path), 6 + 7 * k, reason))
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path, expected


def listed(run: Path) -> list[tuple[str, int, str]]:
    return [(row["file"], row["line"], row["reason"]) for row in map(json.loads, (run / SKIP_FILE).read_text().splitlines())]


@pytest.fixture(scope="module")
def dirty_run(dirty, synth, tmp_path_factory) -> tuple[Path, str]:
    """A CLI run over the dirty file (12 steps, every sample once): its directory and what it wrote on stderr."""
    run = tmp_path_factory.mktemp("dirty-run")
    path, _ = dirty
    args = ["train", f"data.path={path}", f"out_dir={run}", f"data.image_root={synth.parent}", "model.preset=tiny",
            "batch_size=4", "optim.lr=1e-3", "progress=false", "data.max_length=2048", "data.num_frames=4", "seed=1",
            "data.group_by_length=false", "save_every=5", "log_every=4"]
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(args) == 0
    return run, err.getvalue()


# ---------------------------------------------------------------------------------------------- skips
@pytest.mark.slow
def test_a_dirty_run_completes_and_lists_each_bad_sample_as_validate_does(dirty, dirty_run, synth):
    (path, expected), (dirty_run, _) = dirty, dirty_run
    assert len(read_log(dirty_run)) == 3 and (dirty_run / "final" / "config.json").is_file()
    assert sorted(listed(dirty_run)) == sorted(expected)  # each once, with its reason
    report = validate(path, MediaResolver(synth.parent))
    assert {(p.file, p.line, p.reason) for p in report.problems} == expected
    rows = [json.loads(line) for line in (dirty_run / SKIP_FILE).read_text().splitlines()]
    ids = {"", "surrogate", "missing", "bomb", "synth-s3-train-000001"}  # "": an entry that cannot be read
    assert {r["id"] for r in rows} == ids and all(r["message"] for r in rows)
    assert read_log(dirty_run)[-1]["skipped"] == {"unreadable json": 2, "bad text": 1, "missing media": 1,
                                                  "image too large": 1, "duplicate id": 1}


@pytest.mark.slow
def test_the_terminal_says_what_was_skipped(dirty_run):
    run, err = dirty_run
    summaries = [line for line in err.splitlines() if line.startswith("skipped ")]
    assert 1 <= len(summaries) <= 3  # at most once per logged step (every 4th), when there is something new
    assert summaries[-1] == ("skipped 6 samples so far (2 unreadable json, 1 bad text, 1 duplicate id, "
                             f"1 image too large, 1 missing media); see {run / SKIP_FILE}")


@pytest.mark.slow
def test_a_resume_after_a_kill_keeps_the_skip_counters(dirty, dirty_run, synth, tmp_path, monkeypatch):
    (path, expected), (dirty_run, _) = dirty, dirty_run
    run = tmp_path / "killed"
    original = trainer_module.Trainer.step

    def dies_at_step_8(self, step):
        if step == 7:
            raise KeyboardInterrupt("killed")
        return original(self, step)

    monkeypatch.setattr(trainer_module.Trainer, "step", dies_at_step_8)
    overrides = ("max_steps=0", "epochs=1", "data.group_by_length=false", "save_every=5", "log_every=4",
                 f"data.image_root={synth.parent}")
    with pytest.raises(KeyboardInterrupt):
        train(config(path, run, *overrides))
    with open(run / SKIP_FILE, "a") as f:
        f.write('{"id": "torn by the kill", "fi')
    monkeypatch.setattr(trainer_module.Trainer, "step", original)
    train(config(path, run, *overrides), resume=True)
    assert sorted(listed(run)) == sorted(expected)
    assert [r["skipped"] for r in read_log(run)] == [r["skipped"] for r in read_log(dirty_run)]
    assert losses(run) == pytest.approx(losses(dirty_run), abs=1e-6)
    state = torch.load(run / "checkpoints" / "step-00000012" / "state.pt", weights_only=False)
    assert state["skips"]["seen"] == 48 and sum(state["skips"]["skipped"].values()) == 6


@pytest.mark.slow
def test_a_mostly_bad_run_still_stops_with_examples(dirty, synth, tmp_path):
    path, expected = dirty
    with pytest.raises(TooManyBadSamples, match=r"^\d+ of \d+ samples were bad \(over 5%\); e\.g\. .*missing\.png"):
        train(config(path, tmp_path, "max_steps=20", "data.max_skip_ratio=0.05", "data.group_by_length=false",
                     f"data.image_root={synth.parent}"))
    assert sorted(listed(tmp_path)) == sorted(expected)  # listed before the run stopped
    assert not (tmp_path / "final").exists()


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.skipif(not Path(TORCHRUN).exists(), reason="torchrun not installed")
def test_two_processes_list_the_skips_of_both_once(dirty, dirty_run, synth, tmp_path):
    (path, expected), (dirty_run, _) = dirty, dirty_run
    torchrun(path, tmp_path, f"data.image_root={synth.parent}", "max_steps=0", "epochs=1", "data.group_by_length=false")
    assert sorted(listed(tmp_path)) == sorted(expected)
    assert read_log(tmp_path)[-1]["skipped"] == read_log(dirty_run)[-1]["skipped"]


# ---------------------------------------------------------------------------------------------- checkpoints
@pytest.fixture(scope="module")
def clean_run(synth, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("clean")
    train(config(synth, run, "save_every=2"))
    return run


def damage(file: Path, how: str) -> None:
    if how == "truncate":
        with open(file, "r+b") as f:
            f.truncate(file.stat().st_size // 2)
    else:  # 4 KB overwritten in the middle of the tensor data
        with open(file, "r+b") as f:
            f.seek(file.stat().st_size // 2)
            f.write(b"\x7f" * 4096)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["truncate", "overwrite"])
def test_a_damaged_newest_checkpoint_is_named_and_the_previous_one_used(clean_run, synth, tmp_path, how, capsys):
    run = tmp_path / "run"
    shutil.copytree(clean_run, run)
    newest = run / "checkpoints" / "step-00000004"
    damage(newest / "state.pt", how)
    capsys.readouterr()
    train(config(synth, run, "save_every=2"), resume=True)
    captured = capsys.readouterr()
    (warning,) = [line for line in captured.err.splitlines() if "damaged" in line]
    problem = "bytes, its manifest says" if how == "truncate" else "does not match its sha256 in MANIFEST.json"
    assert warning.startswith(f"checkpoint {newest} is damaged (state.pt ") and problem in warning
    assert "resuming from step-00000002" in captured.out
    assert losses(run) == pytest.approx(losses(clean_run), abs=1e-6)
    model, _ = load_model(run / "final", "cpu")
    assert all(torch.isfinite(p).all() for p in model.state_dict().values() if p.is_floating_point())


@pytest.mark.slow
def test_no_intact_checkpoint_is_a_one_line_refusal(clean_run, synth, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(clean_run, run)
    for step in (2, 4):
        damage(run / "checkpoints" / f"step-{step:08d}" / "state.pt", "overwrite")
    args = ["train", f"data.path={synth}", f"out_dir={run}", "model.preset=tiny", "max_steps=4", "--resume"]
    assert main(args) == 1
    err = capsys.readouterr().err.splitlines()
    assert len([line for line in err if "is damaged" in line]) == 2
    assert err[-1].startswith("error: cannot resume: no intact checkpoint") and "step-00000004, step-00000002 damaged" in err[-1]


# ---------------------------------------------------------------------------------------------- the loss guard
def nan_at_step(monkeypatch, bad_step: int) -> None:
    """The SFT loss turns NaN at optimiser step `bad_step` (one micro-batch per step)."""
    original, calls = SFTObjective.loss, []

    def loss(self, model, items):
        calls.append(1)
        value, metrics = original(self, model, items)
        return (value * float("nan") if len(calls) == bad_step else value), metrics

    monkeypatch.setattr(SFTObjective, "loss", loss)


@pytest.mark.slow
def test_a_nan_loss_stops_the_run_keeps_the_last_checkpoint_and_writes_no_model(synth, tmp_path, monkeypatch):
    nan_at_step(monkeypatch, 3)
    with pytest.raises(TrainingDiverged, match=r"step 3: the loss is nan; the run stopped without applying it "
                                               r"\(last checkpoint: .*step-00000002\)"):
        train(config(synth, tmp_path, "save_every=2"))
    assert not (tmp_path / "final").exists()
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-00000002"]
    assert len(read_log(tmp_path)) == 2


@pytest.mark.slow
def test_skip_bad_steps_skips_and_counts_them(synth, tmp_path, monkeypatch, capsys):
    nan_at_step(monkeypatch, 3)
    train(config(synth, tmp_path, "optim.skip_bad_steps=true"))
    log = read_log(tmp_path)
    assert [r["bad_steps"] for r in log] == [0, 0, 1, 1]
    assert "step 3 skipped: the loss is nan (1 skipped so far)" in capsys.readouterr().err
    model, _ = load_model(tmp_path / "final", "cpu")
    assert all(torch.isfinite(p).all() for p in model.state_dict().values() if p.is_floating_point())


@pytest.mark.slow
def test_nan_weights_are_never_exported(synth, tmp_path, monkeypatch):
    original = trainer_module.Trainer.export

    def poisoned(self):
        with torch.no_grad():
            next(p for p in self.net.parameters() if p.requires_grad).fill_(float("nan"))
        return original(self)

    monkeypatch.setattr(trainer_module.Trainer, "export", poisoned)
    with pytest.raises(TrainingDiverged, match="the final weights hold NaN or infinite values"):
        train(config(synth, tmp_path, "max_steps=1"))
    assert not (tmp_path / "final").exists()


# ---------------------------------------------------------------------------------------------- changed config
@pytest.mark.slow
def test_a_resume_with_another_lr_is_refused_unless_asked_and_the_original_config_kept(synth, tmp_path, capsys):
    args = ["train", f"data.path={synth}", f"out_dir={tmp_path}", "model.preset=tiny", "batch_size=4", "max_steps=2",
            "optim.lr=1e-3", "progress=false", "data.max_length=2048", "data.num_frames=4", "seed=1"]
    assert main(args) == 0
    original = (tmp_path / "config.yaml").read_text()
    capsys.readouterr()
    assert main([*args, "optim.lr=2e-3", "--resume"]) == 1
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "optim.lr 0.001 -> 0.002" in error and "--allow-config-change" in error
    assert main([*args, "optim.lr=2e-3", "progress=true", "--resume", "--allow-config-change"]) == 0
    assert (tmp_path / "config.yaml").read_text() == original
    history = (tmp_path / "config.history" / "001.yaml").read_text()
    assert history.startswith("# from step 2: optim.lr 0.001 -> 0.002\n") and "lr: 0.002" in history


# ---------------------------------------------------------------------------------------------- the parts
def test_config_changes_compare_the_global_batch_and_ignore_how_a_run_is_carried_out(tmp_path):
    base = ["model.preset=tiny", "data.path=x.json", "batch_size=4"]
    saved = to_dict(load_config(None, base))
    same = load_config(None, [*base, "batch_size=2", "grad_accum=2", "out_dir=moved", "device=cpu", "progress=false",
                              "save_every=7", "keep_last=1", "log_every=3", "distributed=ddp", "grad_checkpointing=true"])
    assert config_changes(saved, 1, same, 1) == {}
    assert config_changes(saved, 1, load_config(None, [*base, "batch_size=2"]), 2) == {}  # 4 x 1 x 1 = 2 x 1 x 2
    changed = load_config(None, [*base, "optim.lr=2e-5", "seed=3", "data.path=y.json", "max_steps=9"])
    assert describe(config_changes(saved, 2, changed, 2)) == (
        "data.path 'x.json' -> 'y.json', "
        "data.seed 0 -> 3, max_steps 0 -> 9, optim.lr 1e-05 -> 2e-05, seed 0 -> 3")


def test_the_loss_guard_stops_non_finite_too_high_and_sudden_losses():
    guard = LossGuard(max_loss=50.0, spike=4.0)
    assert guard.problem(float("nan"), 1.0) == "the loss is nan"
    assert guard.problem(1.0, float("inf")) == "the gradient norm is inf"
    assert guard.problem(60.0, 1.0) == "the loss 60 is over optim.max_loss=50"
    for _ in range(SPIKE_MIN_STEPS - 1):
        guard.accept(2.0)
    assert guard.problem(9.0, 1.0) is None  # too few steps to judge a spike
    guard.accept(2.0)
    assert guard.problem(9.0, 1.0) == "the loss 9 is over optim.loss_spike=4 times the median 2 of the last 10 steps"
    copy = LossGuard(50.0, 4.0)
    copy.load_state_dict(guard.state_dict())
    assert copy == guard
    with pytest.raises(ConfigError, match="optim.loss_spike must be over 1"):
        load_config(None, ["model.preset=tiny", "data.path=x.json", "optim.loss_spike=0.5"])


def test_the_skip_file_drops_a_torn_line_and_lists_each_sample_once(tmp_path):
    def skip(line: int, reason: str = "bad text") -> Skipped:
        return Skipped(line - 1, f"s{line}", "data.jsonl", line, reason, f"sample {line - 1}: broken")

    first = SkipFile(tmp_path, fresh=True)
    first.write([skip(3), skip(5)], step=1)
    first.close()
    with open(tmp_path / SKIP_FILE, "a") as f:
        f.write('{"id": "s9", "fi')  # killed mid-line
    again = SkipFile(tmp_path, fresh=False)
    again.write([skip(5), skip(9), skip(5, "too long")], step=2)  # a resume revisits line 5
    again.close()
    rows = [json.loads(line) for line in (tmp_path / SKIP_FILE).read_text().splitlines()]
    assert [(r["line"], r["reason"], r["step"]) for r in rows] == [(3, "bad text", 1), (5, "bad text", 1), (9, "bad text", 2),
                                                                   (5, "too long", 2)]
    assert rows[0] == {"id": "s3", "file": "data.jsonl", "line": 3, "reason": "bad text", "message": "sample 2: broken",
                       "index": 2, "step": 1}
    SkipFile(tmp_path, fresh=True).close()
    assert (tmp_path / SKIP_FILE).read_text() == ""
    assert summary({"bad text": 1}, tmp_path / SKIP_FILE) == f"skipped 1 sample so far (1 bad text); see {tmp_path / SKIP_FILE}"
