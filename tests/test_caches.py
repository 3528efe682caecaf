"""Vision and prefix caches: the same answers as without them, reuse where prompts share a prefix, and
never across different images."""

from __future__ import annotations

import pytest
import torch

import llava_interleave
import llava_interleave.engine as engine_module
from llava_interleave.api import Pipeline
from llava_interleave.engine import SamplingConfig
from tests.conftest import random_image

SAMPLING = SamplingConfig(max_new_tokens=6)


@pytest.fixture(scope="module")
def pipes(original_checkpoint):
    cached = llava_interleave.load(original_checkpoint, device="cpu")
    plain = Pipeline(cached.model, cached.tokenizer, cache_mb=0)
    return cached, plain


def _chat(pipe, images, questions):
    """A multi-turn chat, the whole history resent each turn; every turn's token ids."""
    messages, turns = [], []
    for i, question in enumerate(questions):
        content = [*({"type": "image", "image": p} for p in images), question] if i == 0 else question
        messages.append({"role": "user", "content": content})
        out = pipe.generate_samples([pipe.sample(messages)], SAMPLING)[0]
        turns.append(out.token_ids)
        messages.append({"role": "assistant", "content": out.text})
    return turns


def test_multi_turn_chats_identical_with_and_without_caches(pipes, image_files):
    cached, plain = pipes
    assert plain.engine.prefix_cache is None and plain.engine.vision_cache is None
    questions = ["What is shown?", "And the second one?", "Which is largest?"]
    for images in (image_files[:4], image_files[2:6], image_files[:4]):
        before = cached.engine.prefix_cache.hits
        assert _chat(cached, images, questions) == _chat(plain, images, questions)
        assert cached.engine.prefix_cache.hits >= before + 2  # turns 2 and 3 reuse the previous prompt


def test_batched_generation_identical_and_reuses(pipes, image_files):
    cached, plain = pipes
    samples = [cached.sample([{"role": "user", "content": [*({"type": "image", "image": p} for p in image_files[:n]), q]}])
               for n, q in [(2, "Hi"), (3, "Which one is the largest of all?"), (2, "Why?")]]
    expected = [g.token_ids for g in plain.generate_samples(samples, SAMPLING)]
    for _ in range(2):  # the second batch starts from cached prefixes
        assert [g.token_ids for g in cached.generate_samples(samples, SAMPLING)] == expected


def test_different_images_same_text_never_hit(pipes, tmp_path):
    cached, plain = pipes
    cached.engine.set_cache(64)
    questions = ["What is shown?", "And then?"]
    for seed in range(3):
        paths = []
        for i in range(4):
            paths.append(tmp_path / f"s{seed}-{i}.png")
            random_image(100 * seed + i, (40, 30)).save(paths[-1])
        engine = cached.engine
        vision_hits = engine.vision_cache.hits
        assert _chat(cached, paths, questions[:1]) == _chat(plain, paths, questions[:1])
        assert engine.vision_cache.hits == vision_hits  # new pixels: never a cached visual
    encoded = cached.prepare(cached.sample([{"role": "user", "content": [*({"type": "image", "image": p} for p in paths), "x"]}]))
    others = [("other",)] * len(encoded.visuals)
    key = cached.engine._prompt_key(torch.tensor(encoded.input_ids), encoded.visuals, others)
    with torch.inference_mode():
        reuse, _ = engine.prefix_cache.lookup(key, engine.prefix_cache.owner)
    assert reuse == key.visuals[0][0]  # only the text before the first image is shared


def test_weights_changed_in_place_empty_the_caches(pipes, image_files):
    cached, _ = pipes
    cached.engine.set_cache(64)
    messages = [{"role": "user", "content": [{"type": "image", "image": image_files[0]}, "Hi"]}]
    cached.generate_samples([cached.sample(messages)], SAMPLING)
    assert cached.engine.prefix_cache.entries
    with torch.no_grad():
        cached.model.lm_head.weight.mul_(1.0)  # an in-place update (as an optimiser step) bumps the version
    cached.generate_samples([cached.sample(messages)], SAMPLING)
    assert cached.engine.prefix_cache.hits == 0 and cached.engine.vision_cache.hits == 0


def test_cache_stays_within_its_budget(pipes, image_files):
    cached, _ = pipes
    cached.engine.set_cache(0.05)  # ~13 KiB of visual tokens, ~39 KiB of keys and values
    for n in range(1, 5):
        _chat(cached, image_files[:n], ["What?", "Why?"])
        for cache in (cached.engine.vision_cache, cached.engine.prefix_cache):
            assert cache.bytes <= cache.max_bytes
    cached.engine.set_cache(llava_interleave.api.DEFAULT_CACHE_MB)


def test_the_next_turn_reuses_the_answer_too(pipes, image_files, monkeypatch):
    """A prompt that resends an earlier prompt and its answer starts after both (the answer's keys and values
    were kept when it ended), and its answer is the one computed from scratch."""
    cached, plain = pipes
    cached.engine.set_cache(64)
    first = cached.prepare(cached.sample([{"role": "user", "content": [
        *({"type": "image", "image": p} for p in image_files[:2]), "Describe them."]}]))
    answer = cached.engine.generate([first], SamplingConfig(max_new_tokens=5))[0]
    follow = type(first)(input_ids=[*first.input_ids, *answer[:4], *first.input_ids[-6:]], labels=[],
                         visuals=first.visuals)
    computed = []
    real = engine_module.packed_forward
    monkeypatch.setattr(engine_module, "packed_forward", lambda lm, embeds, spans: computed.append(len(embeds)) or
                        real(lm, embeds, spans))
    request = cached.engine.submit(follow, SamplingConfig(max_new_tokens=4))
    cached.engine.step()
    assert computed == [6]  # only the new question: the prompt and 4 answer tokens came from the cache
    while not cached.engine.idle:
        cached.engine.step()
    assert request.tokens == plain.engine.generate([follow], SamplingConfig(max_new_tokens=4))[0]
