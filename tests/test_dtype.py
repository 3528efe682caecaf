"""Weights load straight into the requested dtype, bf16 runs on CPU, and `convert` keeps the stored dtype."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

import llava_interleave
from llava_interleave.assets.tiny import make_checkpoint, tiny_config
from llava_interleave.cli import main
from llava_interleave.engine import SamplingConfig
from llava_interleave.model.checkpoint import load_model, read_weights, stored_dtype


@pytest.fixture(scope="module")
def bf16_checkpoint(tmp_path_factory, tokenizer) -> Path:
    """The tiny original-layout (anyres, newline) model stored in bf16, as the releases are."""
    return make_checkpoint(tmp_path_factory.mktemp("bf16"), tiny_config(tokenizer, "original"), tokenizer, seed=3,
                           dtype=torch.bfloat16)


def test_each_tensor_is_cast_as_it_is_read(bf16_checkpoint, original_checkpoint):
    assert stored_dtype(bf16_checkpoint) == torch.bfloat16 and stored_dtype(original_checkpoint) == torch.float32
    assert {t.dtype for t in read_weights(bf16_checkpoint).values()} == {torch.bfloat16}
    assert {t.dtype for t in read_weights(bf16_checkpoint, torch.float32).values()} == {torch.float32}
    assert {t.dtype for t in read_weights(original_checkpoint, torch.bfloat16).values()} == {torch.bfloat16}


def test_a_bf16_checkpoint_runs_in_bf16_on_cpu_close_to_fp32(bf16_checkpoint, image_files):
    """Same bf16 weights, computed in bf16 and in fp32: bf16 parameters, fp32 rotary frequencies (as
    transformers keeps them), finite logits close to fp32's, and the same greedy answer."""
    half = llava_interleave.load(bf16_checkpoint, device="cpu", dtype=torch.bfloat16)
    full = llava_interleave.load(bf16_checkpoint, device="cpu")
    assert {p.dtype for p in half.model.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in full.model.parameters()} == {torch.float32}
    assert half.model.language_model.rotary_emb.inv_freq.dtype == torch.float32
    messages = [{"role": "user", "content": [{"type": "image", "image": p} for p in image_files[:2]] + ["Compare."]}]
    encoded = full.processor.encode(full.sample(messages))
    with torch.no_grad():
        ids = torch.tensor([encoded.input_ids])
        low, high = half.model(ids, encoded.visuals).logits.float(), full.model(ids, encoded.visuals).logits
    assert torch.isfinite(low).all()
    assert (low - high).abs().max() <= 0.05 * high.abs().max()
    short = SamplingConfig(max_new_tokens=4)
    assert half.generate_samples([half.sample(messages)], short)[0].token_ids == full.generate_samples([full.sample(messages)], short)[0].token_ids


def test_convert_keeps_the_stored_dtype_unless_told(capsys, bf16_checkpoint, tmp_path):
    size = (bf16_checkpoint / "model.safetensors").stat().st_size
    assert main(["convert", str(bf16_checkpoint), str(tmp_path / "hf"), "--to", "hf"]) == 0
    assert main(["convert", str(bf16_checkpoint), str(tmp_path / "orig"), "--to", "original"]) == 0
    assert main(["convert", str(bf16_checkpoint), str(tmp_path / "fp32"), "--to", "original", "--dtype", "float32"]) == 0
    for name, dtype, factor in (("hf", torch.bfloat16, 1), ("orig", torch.bfloat16, 1), ("fp32", torch.float32, 2)):
        out = tmp_path / name
        assert stored_dtype(out) == dtype, name
        assert json.loads((out / "config.json").read_text())["torch_dtype"] == str(dtype).removeprefix("torch.")
        assert abs((out / "model.safetensors").stat().st_size / (factor * size) - 1) < 0.05, name
    same = load_model(tmp_path / "orig", "cpu", torch.bfloat16)[0].state_dict()
    for key, value in load_model(bf16_checkpoint, "cpu", torch.bfloat16)[0].state_dict().items():
        assert torch.equal(value, same[key]), key


def test_a_lone_image_answers_in_bf16(bf16_checkpoint):
    """The anyres path (crops, un-padding, newlines) in bf16 on CPU."""
    pipe = llava_interleave.load(bf16_checkpoint, device="cpu", dtype=torch.bfloat16)
    answer = pipe.generate("Describe it.", images=[Image.new("RGB", (90, 40), (200, 30, 30))], sampling=SamplingConfig(max_new_tokens=3))
    assert len(answer.token_ids) >= 1
