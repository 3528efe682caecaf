"""Generation invariants: cached decoding equals full recomputation, batching equals one-by-one, seeded sampling."""

from __future__ import annotations

import pytest
import torch

import llava_interleave
from llava_interleave.engine import SamplingConfig


@pytest.fixture(scope="module")
def pipe(original_checkpoint):
    return llava_interleave.load(original_checkpoint, device="cpu")


def _messages(image_files, n, text="What is shown?"):
    return [{"role": "user", "content": [*({"type": "image", "image": p} for p in image_files[:n]), text]}]


def test_kv_cache_matches_full_recompute(pipe, image_files):
    encoded = pipe.processor.encode(pipe.sample(_messages(image_files, 2)))
    cached = pipe.engine.generate([encoded], sampling=SamplingConfig(max_new_tokens=8))[0]
    ids = list(encoded.input_ids)
    for _ in range(8):  # no cache: rerun the whole sequence every step
        with torch.no_grad():
            logits = pipe.model(torch.tensor([ids]), encoded.visuals).logits[0, -1]
        ids.append(int(logits.argmax()))
    assert cached == ids[len(encoded.input_ids) :]


def test_batched_left_padding_matches_one_by_one(pipe, image_files):
    samples = [pipe.sample(_messages(image_files, n, t)) for n, t in [(1, "Hi"), (3, "Which one is the largest of all?"), (2, "Why?")]]
    batched = pipe.generate_samples(samples, SamplingConfig(max_new_tokens=6))
    single = [pipe.generate_samples([s], SamplingConfig(max_new_tokens=6))[0] for s in samples]
    assert [b.token_ids for b in batched] == [s.token_ids for s in single]


def test_seeded_sampling_is_reproducible_and_differs_from_greedy(pipe, image_files):
    messages = _messages(image_files, 1)
    a = pipe.generate_samples([pipe.sample(messages)], SamplingConfig(max_new_tokens=10, temperature=1.5, seed=3))[0].token_ids
    b = pipe.generate_samples([pipe.sample(messages)], SamplingConfig(max_new_tokens=10, temperature=1.5, seed=3))[0].token_ids
    others = {tuple(pipe.generate_samples([pipe.sample(messages)], SamplingConfig(max_new_tokens=10, temperature=1.5, seed=s))[0].token_ids) for s in range(4, 9)}
    assert a == b
    assert len(others | {tuple(a)}) > 1


def test_top_p_tiny_keeps_only_the_top_token(pipe, image_files):
    messages = _messages(image_files, 1)
    greedy = pipe.generate_samples([pipe.sample(messages)], SamplingConfig(max_new_tokens=8))[0].token_ids
    nucleus = pipe.generate_samples([pipe.sample(messages)], SamplingConfig(max_new_tokens=8, temperature=1.0, top_p=1e-6, seed=0))[0].token_ids
    assert nucleus == greedy


def test_stops_at_im_end(pipe, image_files):
    encoded = pipe.processor.encode(pipe.sample(_messages(image_files, 1)))
    stop = pipe.engine.generate([encoded], sampling=SamplingConfig(max_new_tokens=5))[0][2]
    out = pipe.engine.generate([encoded], sampling=SamplingConfig(max_new_tokens=5, stop_token_ids=(stop,)))[0]
    assert out[-1] == stop and len(out) <= 3


def test_streaming_text_equals_final_text(pipe, image_files):
    messages = _messages(image_files, 2)
    assert "".join(pipe.stream_chat(messages, SamplingConfig(max_new_tokens=12))) == pipe.chat(messages, SamplingConfig(max_new_tokens=12))
