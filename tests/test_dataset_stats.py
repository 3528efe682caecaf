"""Training dataset (bad samples skipped and counted, a cap on the skip ratio) and `data stats`."""

from __future__ import annotations

import json

import pytest

import llava_interleave
from llava_interleave.cli import main
from llava_interleave.data.config import DataConfig
from llava_interleave.data.dataset import SFTDataset, SkipBudget, TooManyBadSamples
from llava_interleave.data.m4 import MediaResolver
from llava_interleave.data.records import JsonSource
from llava_interleave.data.stats import TokenCounter, collect

from .conftest import random_image


@pytest.fixture()
def data_dir(tmp_path):
    for i in range(4):
        random_image(i, (40 + 10 * i, 30)).save(tmp_path / f"{i}.png")
    records = [
        {"id": "pair", "image": ["0.png", "1.png"], "conversations": [{"from": "human", "value": "<image> vs <image>?"}, {"from": "gpt", "value": "left"}],
         "metadata": {"dataset": "Spot-the-Diff", "task": "spot the difference"}},
        {"id": "lone", "image": "2.png", "conversations": [{"from": "human", "value": "<image>\nDetails?"}, {"from": "gpt", "value": "a dot"}],
         "metadata": {"dataset": "Detail", "task": "detail"}},
        {"id": "broken", "image": ["missing.png"], "conversations": [{"from": "human", "value": "<image>?"}, {"from": "gpt", "value": "x"}],
         "metadata": {"dataset": "Detail", "task": "detail"}},
        {"id": "views", "image": ["0.png", "1.png", "3.png"], "conversations": [{"from": "human", "value": "<image><image><image> How many?"}, {"from": "gpt", "value": "3"}],
         "metadata": {"dataset": "ScanQA", "task": "scene vqa"}},
    ]
    (tmp_path / "train.json").write_text(json.dumps(records))
    return tmp_path


def test_dataset_skips_and_counts_bad_samples(data_dir, original_checkpoint):
    pipe = llava_interleave.load(original_checkpoint, device="cpu")
    data = SFTDataset(JsonSource(data_dir / "train.json"), MediaResolver(data_dir), pipe.processor, DataConfig(max_length=4096))
    items = [data[i] for i in range(len(data))]
    assert [item is None for item in items] == [False, False, True, False]
    assert data.budget.seen == 4 and sum(data.budget.skipped.values()) == 1
    assert "missing.png" in next(iter(data.budget.examples.values()))
    assert any(label != -100 for label in items[0].labels)


def test_too_long_samples_are_skipped_with_drop(data_dir, original_checkpoint):
    pipe = llava_interleave.load(original_checkpoint, device="cpu")
    data = SFTDataset(JsonSource(data_dir / "train.json"), MediaResolver(data_dir), pipe.processor, DataConfig(max_length=30, truncation="drop"))
    assert data[0] is None and data.budget.skipped["too long"] == 1


def test_skip_budget_stops_a_mostly_broken_run():
    budget = SkipBudget(max_ratio=0.2, min_seen=10)
    for _ in range(7):
        budget.record(None)
    for _ in range(2):
        budget.record(("MediaError", "x"))
    with pytest.raises(TooManyBadSamples, match="3 of 10"):
        budget.record(("MediaError", "y"))


def test_stats_table_and_tokens(data_dir, original_checkpoint, tokenizer):
    pipe = llava_interleave.load(original_checkpoint, device="cpu")
    counter = TokenCounter(tokenizer, pipe.config, pipe.processor.template)
    stats = collect(JsonSource(data_dir / "train.json"), MediaResolver(data_dir), counter)
    assert stats.table == [
        ("multi-image", "spot the difference", "Spot-the-Diff", 1),
        ("multi-view", "scene vqa", "ScanQA", 1),
        ("single-image", "detail", "Detail", 2),
    ]
    assert stats.images_per_sample == [2, 1, 1, 3]
    pair = pipe.processor.encode(pipe.sample([{"role": "user", "content": ["<image> vs <image>?", {"type": "image", "image": data_dir / "0.png"}, {"type": "image", "image": data_dir / "1.png"}]},
                                             {"role": "assistant", "content": "left"}]), add_generation_prompt=False)
    assert stats.tokens_per_sample[0] == len(pair)


def test_stats_cli_json_markdown_and_plot(data_dir, original_checkpoint, capsys):
    assert main(["data", "stats", str(data_dir / "train.json"), "--image-root", str(data_dir), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["samples"] == 4 and summary["images_per_sample"]["max"] == 3
    plot = data_dir / "hist.png"
    assert main(["data", "stats", str(data_dir / "train.json"), "--image-root", str(data_dir), "--model", str(original_checkpoint), "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert "| multi-view | scene vqa | ScanQA | 1 |" in out and "tokens per sample" in out
    assert plot.read_bytes()[:4] == b"\x89PNG"


def test_validate_cli_reports_fixes_and_exits(data_dir, capsys):
    path = str(data_dir / "train.json")
    assert main(["data", "validate", path, "--image-root", str(data_dir), "--fix-out", str(data_dir / "good.jsonl")]) == 1
    out = capsys.readouterr().out
    assert "broken" in out and "missing media" in out
    assert main(["data", "validate", str(data_dir / "good.jsonl"), "--image-root", str(data_dir)]) == 0
    assert main(["data", "validate", path, "--no-media"]) == 0  # only the media were broken
