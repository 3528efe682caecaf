"""Bench evaluation end to end on a tiny random model: readers, runner, resume, errors, reports, torchrun."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import llava_interleave
from llava_interleave.cli import main
from llava_interleave.data.sample import Modality
from llava_interleave.data.synth import write_synthetic
from llava_interleave.eval.bench import BenchError, read_bench
from llava_interleave.eval.runner import EvalSettings, EvalSettingsError, run_eval
from llava_interleave.eval.scoring import read_predictions, score

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


BENCH_N = 22  # two items of each of the eleven synthetic tasks


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("evalsynth") / "synth"
    write_synthetic(out, n=12, seed=0, bench_n=BENCH_N, image_size=48)
    return out


def _to_parquet(bench_json: Path, target: Path) -> Path:
    """The bench in the parquet release's layout: image structs with PNG bytes, a frame folder by path."""
    rows = []
    for entry in json.loads(bench_json.read_text()):
        row = {"sample_id": entry["sample_id"], "sub_task": entry["metadata"]["dataset"],
               "question_type": entry["metadata"]["question_type"], "question": entry["conversations"][0]["value"],
               "answer": entry["conversations"][1]["value"]}
        for k in range(16):
            row[f"image_{k}"] = None
        for k, name in enumerate(entry["image"]):
            path = bench_json.parent / name
            row[f"image_{k}"] = ({"bytes": None, "path": os.path.relpath(path, target.parent)} if path.is_dir()
                                 else {"bytes": path.read_bytes(), "path": None})
        rows.append(row)
    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    schema = pa.schema([(k, pa.string()) for k in ("sample_id", "sub_task", "question_type", "question", "answer")]
                       + [(f"image_{k}", image) for k in range(16)])
    target.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), target, row_group_size=5)
    return target


@pytest.fixture(scope="module")
def parquet_dir(synth) -> Path:
    folder = synth / "parquet"
    _to_parquet(synth / "bench.json", folder / "in_domain" / "test-00000-of-00001.parquet")
    return folder


@pytest.fixture(scope="module")
def pipe(original_checkpoint):
    return llava_interleave.load(original_checkpoint)


def _settings(bench, out, **kw) -> EvalSettings:
    return EvalSettings(model="unused", bench=str(bench), out_dir=Path(out), max_new_tokens=kw.pop("max_new_tokens", 6), **kw)


def _answers(path: Path) -> dict[tuple[str, int], str]:
    return {p.key: p.prediction for p in read_predictions(path)}


def test_json_and_parquet_read_alike(synth, parquet_dir):
    from_json, from_parquet = read_bench(synth / "bench.json"), read_bench(parquet_dir, split="in_domain")
    assert len(from_json) == BENCH_N
    for a, b in zip(from_json, from_parquet, strict=True):
        assert (a.id, a.dataset, a.category, a.split, a.question_type, a.turns) == (b.id, b.dataset, b.category, b.split, b.question_type, b.turns)
        assert len(a.images) == len(b.images)
    assert {it.category for it in from_json} == {"Synth multi-image", "Synth video", "Synth multi-view", "Synth multi-patch"}
    with pytest.raises(BenchError, match="out_of_domain"):
        read_bench(parquet_dir, split="out_domain")


@pytest.mark.slow
def test_json_and_parquet_give_identical_predictions_and_scores(synth, parquet_dir, pipe, tmp_path):
    a = run_eval(_settings(synth / "bench.json", tmp_path / "json", batch_size=3), pipe)
    b = run_eval(_settings(parquet_dir, tmp_path / "parquet", split="in_domain", batch_size=3), pipe)
    assert a.answered == b.answered == BENCH_N
    assert _answers(a.predictions) == _answers(b.predictions) and len(_answers(a.predictions)) == BENCH_N
    assert a.scores == b.scores and set(a.scores.splits) == {"in_domain"}
    assert all(p.error is None for p in read_predictions(a.predictions))
    # the reference answers as predictions score 100: the scores are not zero by construction
    oracle = [p.__class__(**{**p.__dict__, "prediction": p.answer}) for p in read_predictions(a.predictions)]
    assert score(oracle, "paper").overall == pytest.approx(100.0, abs=1e-4)


@pytest.mark.slow
def test_resume_answers_each_sample_once(synth, pipe, tmp_path, capsys):
    whole = run_eval(_settings(synth / "bench.json", tmp_path / "whole", batch_size=3), pipe)
    run = tmp_path / "resumed"
    first = run_eval(_settings(synth / "bench.json", run, batch_size=3, limit=6), pipe)
    assert first.answered == 6
    with open(run / "predictions.jsonl", "a") as f:
        f.write('{"sample_id": "synth-s0-bench-0000')  # killed in the middle of a line
    second = run_eval(_settings(synth / "bench.json", run, batch_size=3), pipe)
    assert second.answered == BENCH_N - 6
    ids = [json.loads(line)["sample_id"] for line in (run / "predictions.jsonl").read_text().splitlines()]
    assert sorted(ids) == sorted(set(ids)) and len(ids) == BENCH_N
    assert _answers(second.predictions) == _answers(whole.predictions) and second.scores == whole.scores
    assert run_eval(_settings(synth / "bench.json", run, batch_size=3), pipe).answered == 0
    with pytest.raises(EvalSettingsError, match="frames"):
        run_eval(_settings(synth / "bench.json", run, frames=4), pipe)


def _multi_turn_bench(synth: Path, tmp_path: Path) -> Path:
    views = [str(synth / "images" / "bench" / f"synth-s0-bench-000004_{k}.png") for k in range(2)]
    entries = [
        {"sample_id": "chat-0", "image": views, "choice_list": None,
         "conversations": [{"from": "human", "value": "View 1: <image>\nView 2: <image>\nWhat is in the room?"},
                           {"from": "gpt", "value": "A red circle."}, {"from": "human", "value": "What colour is it?"},
                           {"from": "gpt", "value": "Red."}],
         "metadata": {"dataset": "ScanNet_chat", "split": "multi_view", "question_type": "open-ended"}},
        {"sample_id": "broken", "image": ["missing.png"], "choice_list": ["x", "y"],
         "conversations": [{"from": "human", "value": "<image>\nWhich? (A) x (B) y"}, {"from": "gpt", "value": "A"}],
         "metadata": {"dataset": "BLINK", "question_type": "multi-choice"}},
    ]
    path = tmp_path / "chat.json"
    path.write_text(json.dumps(entries))
    return path


def test_multi_turn_uses_own_answers_and_a_bad_sample_fails_alone(synth, pipe, tmp_path, monkeypatch):
    seen = []
    real = pipe.submit

    def spy(sample, sampling):
        seen.append(sample)
        return real(sample, sampling)

    monkeypatch.setattr(pipe, "submit", spy)
    result = run_eval(_settings(_multi_turn_bench(synth, tmp_path), tmp_path / "chat", batch_size=2), pipe)
    predictions = {p.key: p for p in read_predictions(result.predictions)}
    assert set(predictions) == {("ScanNet_chat", "chat-0", 0), ("ScanNet_chat", "chat-0", 1), ("BLINK", "broken", 0)}
    assert "image not found" in predictions["BLINK", "broken", 0].error and predictions["ScanNet_chat", "chat-0", 1].error is None
    second_round = seen[-1]
    assert [t.role for t in second_round.turns] == ["user", "assistant", "user"]
    assert second_round.turns[1].text == predictions["ScanNet_chat", "chat-0", 0].prediction  # the model's own answer
    assert {v.modality for v in second_round.visuals} == {Modality.VIEW}
    assert result.scores.splits.keys() == {"multi_view", "out_domain"} and result.scores.errors == 1
    assert result.scores.datasets["BLINK"] == 0.0


def test_frames_and_pooling_reach_the_video(synth, pipe, tmp_path, monkeypatch):
    seen = []
    real = type(pipe).submit
    monkeypatch.setattr(type(pipe), "submit", lambda self, sample, sampling: seen.append((self, [sample])) or
                        real(self, sample, sampling))
    run_eval(_settings(synth / "bench.json", tmp_path / "v", datasets=("SynthMotion",), frames=4, video_pooling="average"), pipe)
    assert len(seen) == 2
    for used, samples in seen:
        assert used.config.processor.video_pooling == "average"
        assert [len(v.frames) for v in samples[0].visuals] == [4] and samples[0].visuals[0].modality == Modality.VIDEO


def test_eval_command_writes_the_report(synth, original_checkpoint, tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["eval", "--model", str(original_checkpoint), "--bench", str(synth / "bench.json"), "--out", str(out),
            "--protocol", "harness", "--limit", "3", "--datasets", "SynthCount,SynthDetail", "--batch-size", "2"]
    assert main(args) == 0
    assert "protocol harness" in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert report["run"]["max_new_tokens"] == 16 and report["run"]["protocol"] == "harness" and report["run"]["items"] == 3
    assert set(report["scores"]["datasets"]) == {"SynthCount", "SynthDetail"}
    text = (out / "report.md").read_text()
    assert "| protocol | harness |" in text and "| frames | 16 |" in text and "Synth multi-patch" in text
    assert (out / "scores.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["eval", "--model", str(original_checkpoint), "--bench", str(tmp_path / "nope.json"), "--out", str(out)]) == 1
    assert "bench not found" in capsys.readouterr().err
    assert main(["eval", "--model", "x", "--bench", "y", "--out", str(out), "--batch-size", "0"]) == 1


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.skipif(shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None, reason="no torchrun")
def test_two_processes_under_torchrun_match_one(synth, original_checkpoint, pipe, tmp_path):
    one = run_eval(_settings(synth / "bench.json", tmp_path / "one", max_new_tokens=4), pipe)
    out = tmp_path / "two"
    command = [str(Path(sys.executable).parent / "torchrun"), "--nproc_per_node", "2", "-m", "llava_interleave.cli",
               "eval", "--model", str(original_checkpoint), "--bench", str(synth / "bench.json"), "--out", str(out),
               "--max-new-tokens", "4", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in out.glob("predictions*")) == ["predictions.jsonl"]
    ids = [json.loads(line)["sample_id"] for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert ids == [item.id for item in read_bench(synth / "bench.json")]  # merged in bench order
    assert _answers(out / "predictions.jsonl") == _answers(one.predictions)


def test_repeated_ids_stay_apart(tmp_path):
    entry = {"conversations": [{"from": "human", "value": "Q?"}, {"from": "gpt", "value": "A"}], "image": []}
    entries = [{**entry, "sample_id": "x", "metadata": {"dataset": d}} for d in ("Mantis", "Mantis", "BLINK")]
    (tmp_path / "dup.json").write_text(json.dumps(entries))
    items = read_bench(tmp_path / "dup.json")
    assert [it.key for it in items] == [("Mantis", "x"), ("Mantis", "x#2"), ("BLINK", "x")]
    assert [it.split for it in items] == ["out_domain"] * 3 and items[0].turns == (("Q?", "A"),)
