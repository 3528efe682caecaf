"""Truncation never cuts through an image's tokens: whole trailing turns go, or the sample is dropped."""

from __future__ import annotations

import pytest

import llava_interleave
from llava_interleave.data.processor import IGNORE_INDEX
from llava_interleave.data.truncate import truncate


@pytest.fixture(scope="module")
def two_exchanges(original_checkpoint, image_files):
    pipe = llava_interleave.load(original_checkpoint, device="cpu")
    messages = [
        {"role": "user", "content": ["<image> and <image>?", {"type": "image", "image": image_files[0]}, {"type": "image", "image": image_files[1]}]},
        {"role": "assistant", "content": "First answer."},
        {"role": "user", "content": ["And <image>?", {"type": "image", "image": image_files[2]}]},
        {"role": "assistant", "content": "Second answer."},
    ]
    return pipe, pipe.processor.encode(pipe.sample(messages), add_generation_prompt=False)


def test_turn_ends_and_visual_starts_are_recorded(two_exchanges):
    pipe, encoded = two_exchanges
    assert len(encoded.turn_ends) == 5 and encoded.turn_ends[-1] == len(encoded)  # system + 4 turns
    for start, visual in zip(encoded.visual_starts, encoded.visuals):
        run = encoded.input_ids[start : start + visual.num_tokens]
        assert run == [pipe.config.image_token_id] * visual.num_tokens


def test_fits_unchanged(two_exchanges):
    _, encoded = two_exchanges
    assert truncate(encoded, len(encoded), "drop") is encoded


def test_trailing_turns_cut_at_a_turn_end(two_exchanges):
    pipe, encoded = two_exchanges
    third_visual_start = encoded.visual_starts[2]
    limit = third_visual_start + 3  # in the middle of the third image
    out = truncate(encoded, limit, "trailing_turns")
    assert out is not None and len(out) == encoded.turn_ends[2] <= limit
    assert len(out.visuals) == 2
    slots = sum(t == pipe.config.image_token_id for t in out.input_ids)
    assert slots == sum(v.num_tokens for v in out.visuals)
    supervised = [t for t, l in zip(out.input_ids, out.labels) if l != IGNORE_INDEX]
    assert pipe.tokenizer.decode(supervised).startswith("First answer.")


def test_drop_and_nothing_trainable(two_exchanges):
    _, encoded = two_exchanges
    assert truncate(encoded, len(encoded) - 1, "drop") is None
    assert truncate(encoded, encoded.visual_starts[0] + 1, "trailing_turns") is None  # only the system turn fits
    with pytest.raises(ValueError, match="unknown truncation policy"):
        truncate(encoded, 10, "middle")  # type: ignore[arg-type]
