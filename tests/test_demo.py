"""`llava-interleave demo`: a model answers the shipped examples, over all four scenarios."""

from __future__ import annotations

import json

import pytest

from llava_interleave.assets import DEMO_BENCH
from llava_interleave.cli import main
from llava_interleave.data.drawn import LETTERS

SCENARIOS = ("multi-image", "video", "multi-view", "multi-patch")


def test_demo_answers_each_task_next_to_the_truth(original_checkpoint, capsys):
    assert main(["demo", "--model", str(original_checkpoint), "--max-new-tokens", "6"]) == 0
    out = capsys.readouterr().out
    entries = json.loads(DEMO_BENCH.read_text())
    for scenario in SCENARIOS:
        assert f"[{scenario}]" in out, scenario
    assert {e["metadata"]["scenario"] for e in entries} == set(SCENARIOS)
    assert out.count("  model: ") == out.count("  truth: ") == len(entries) >= 4 and "error:" not in out
    for entry in entries:  # each true answer is printed, multi-choice letters with their option
        truth = entry["conversations"][1]["value"]
        options = entry["choice_list"]
        shown = f"{truth} ({options[LETTERS.index(truth)]})" if options else truth
        assert f"  truth: {shown}" in out, shown


@pytest.mark.slow  # the bundled model, on every shipped example
def test_demo_runs_the_bundled_model_by_default(capsys):
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    for scenario in SCENARIOS:
        assert f"[{scenario}]" in out, scenario
    assert "error:" not in out and " answers equal the truth" in out


def test_demo_without_a_model_says_what_is_missing(monkeypatch, tmp_path, capsys):
    from llava_interleave import assets

    monkeypatch.setattr(assets, "BUNDLED_MODEL", tmp_path / "nano")
    assert main(["demo"]) == 1
    assert "bundled model is missing" in capsys.readouterr().err
