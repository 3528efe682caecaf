"""CUDA paths (bf16 by default, SDPA): run only where a GPU is present; CI has none and skips them."""

from __future__ import annotations

import pytest
import torch

import llava_interleave
from llava_interleave.engine import SamplingConfig

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _messages(image_files, n):
    return [{"role": "user", "content": [*({"type": "image", "image": p} for p in image_files[:n]), "What is this?"]}]


def test_gpu_defaults_to_bf16_and_agrees_with_fp32_cpu(original_checkpoint, image_files):
    gpu = llava_interleave.load(original_checkpoint)
    cpu = llava_interleave.load(original_checkpoint, device="cpu")
    assert gpu.model.device.type == "cuda" and gpu.model.dtype == torch.bfloat16
    encoded = cpu.processor.encode(cpu.sample(_messages(image_files, 2)))
    ids = torch.tensor([encoded.input_ids])
    with torch.no_grad():
        a = gpu.model(ids.cuda(), encoded.visuals).logits.float().cpu()
        b = cpu.model(ids, encoded.visuals).logits
    cos = torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0)
    assert cos > 0.99, cos


def test_gpu_fp32_generation_matches_cpu(original_checkpoint, image_files):
    gpu = llava_interleave.load(original_checkpoint, dtype=torch.float32)
    cpu = llava_interleave.load(original_checkpoint, device="cpu")
    samples = [gpu.sample(_messages(image_files, n)) for n in (1, 3)]
    assert [g.token_ids for g in gpu.generate_samples(samples, SamplingConfig(max_new_tokens=8))] == [
        g.token_ids for g in cpu.generate_samples(samples, SamplingConfig(max_new_tokens=8))
    ]


def test_gpu_bf16_batched_generation_runs(original_checkpoint, image_files):
    gpu = llava_interleave.load(original_checkpoint)
    out = gpu.generate_samples([gpu.sample(_messages(image_files, n)) for n in (1, 2, 4)], SamplingConfig(max_new_tokens=6))
    for g in out:  # each answer runs to the token limit or ends at a stop token, never beyond
        assert len(g.token_ids) == 6 or (0 < len(g.token_ids) < 6 and g.token_ids[-1] in gpu.stop_ids)
