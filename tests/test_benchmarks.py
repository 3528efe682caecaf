"""The README's benchmark commands run (smallest settings; the numbers themselves are not judged here)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.subprocess]


def _run(*args: str) -> str:
    result = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_generate_vs_transformers_runs():
    out = _run("benchmarks/generate_vs_transformers.py", "--device", "cpu", "--frames", "1", "--new-tokens", "3", "--repeats", "1")
    assert "same token ids: True" in out and "| decode (tokens/s" in out and "| LM prefill" in out


def test_data_pipeline_runs():
    out = _run("benchmarks/data_pipeline.py", "--n", "12", "--repeats", "1", "--batch-size", "4")
    assert "samples/s" in out and "padding waste, packed" in out


def test_train_packing_runs():
    out = _run("benchmarks/train_packing.py", "--n", "16", "--steps", "2", "--batch-size", "4")
    assert "packing / padding:" in out and "| packing |" in out


def test_serve_load_runs():
    out = _run("benchmarks/serve_load.py", "--requests", "6", "--seconds", "20", "--max-tokens", "3", "--concurrency", "1", "3")
    assert "| clients |" in out and "| 3, --max-batch 1 |" in out and "--max-batch 4 vs 1:" in out


def test_serve_mixed_runs():
    out = _run("benchmarks/serve_mixed.py", "--clients", "4", "--long-every", "2", "--long-tokens", "12", "--seconds", "3")
    assert "| continuous |" in out and "| static |" in out and "continuous / static: short p50" in out


def test_chat_prefix_cache_runs():
    out = _run("benchmarks/chat_prefix_cache.py", "--small", "--repeats", "1")
    assert "| cache on |" in out and "turn 3 with the cache / turn 1 without:" in out
    assert "same first tokens with and without the cache: True" in out


def test_cpu_dtype_runs():
    out = _run("benchmarks/cpu_dtype.py", "--images", "1", "--new-tokens", "2", "--repeats", "1", "--hidden", "64",
               "--layers", "1", "--memory-hidden", "64", "--memory-layers", "1")
    assert "| time to first token (s) |" in out and "| decode (tokens/s) |" in out and "| peak RSS growth" in out


def test_eval_throughput_runs():
    out = _run("benchmarks/eval_throughput.py", "--items", "1", "--tasks", "SynthDetail,SynthName", "--batch-sizes", "1", "4",
               "--repeats", "1", "--max-new-tokens", "4")
    assert "| --batch-size | seconds | items/s | overall score |" in out and "items/s at --batch-size 4 / at 1:" in out
