"""Exact prompt strings for both templates, slot filling, and label masks."""

from __future__ import annotations

import pytest

from llava_interleave.assets.tiny import tiny_config
from llava_interleave.data.processor import IGNORE_INDEX, Processor
from llava_interleave.data.sample import Modality, Sample, Text, Turn, Visual, fill_slots
from llava_interleave.data.templates import get_template
from llava_interleave.errors import PromptError

from .conftest import random_image


def _visual(seed: int = 0) -> Visual:
    return Visual((random_image(seed),), Modality.IMAGE)


def _sample(*turns: tuple[str, tuple]) -> Sample:
    return Sample(tuple(Turn(role, segments) for role, segments in turns))


def test_qwen_1_5_exact_string_with_newline_after_each_image():
    a, b = _visual(0), _visual(1)
    sample = _sample(("user", fill_slots("Compare <image> and <image>\nWhich is red?", [a, b])))
    assert get_template("qwen_1_5").render_text(sample) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nCompare <image>\n and <image>\nWhich is red?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_hf_exact_string_images_first_no_system():
    sample = _sample(("user", fill_slots("What changed?", [_visual(0), _visual(1)])))
    assert get_template("hf").render_text(sample) == (
        "<|im_start|>user\n<image><image>\nWhat changed?<|im_end|>\n<|im_start|>assistant\n"
    )


def test_multi_turn_with_images_in_a_later_turn():
    sample = _sample(
        ("user", fill_slots("Describe it.", [_visual(0)])),
        ("assistant", (Text("A cat."),)),
        ("user", fill_slots("And this <image>?", [_visual(1)])),
    )
    assert get_template("qwen_1_5").render_text(sample, add_generation_prompt=False) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<image>\nDescribe it.<|im_end|>\n"
        "<|im_start|>assistant\nA cat.<|im_end|>\n"
        "<|im_start|>user\nAnd this <image>\n?<|im_end|>\n"
    )


def test_slot_count_mismatch_is_a_prompt_error():
    with pytest.raises(PromptError, match="2 <image> slot"):
        fill_slots("<image> vs <image>", [_visual()])


def test_unknown_template():
    with pytest.raises(PromptError, match="unknown template"):
        get_template("llama")


@pytest.mark.parametrize("name", ["qwen_1_5", "hf"])
def test_labels_supervise_only_assistant_text_and_im_end(tokenizer, name):
    processor = Processor(tokenizer, tiny_config(tokenizer, "hf"), get_template(name))
    sample = _sample(
        ("user", fill_slots("<image> and <image> first", [_visual(0), _visual(1)])),
        ("assistant", (Text("the cat"),)),
        ("user", fill_slots("then <image>", [_visual(2)])),
        ("assistant", (Text("a mat"),)),
    )
    encoded = processor.encode(sample, add_generation_prompt=False)
    assert len(encoded.visuals) == 3
    supervised = [t for t, label in zip(encoded.input_ids, encoded.labels) if label != IGNORE_INDEX]
    prefix = "\n" if name == "hf" else ""
    expected = tokenizer.encode(f"{prefix}the cat<|im_end|>") + tokenizer.encode(f"{prefix}a mat<|im_end|>")
    assert supervised == expected
    assert all(label in (IGNORE_INDEX, token) for token, label in zip(encoded.input_ids, encoded.labels))
    slots = sum(i == processor.config.image_token_id for i in encoded.input_ids)
    assert slots == 3 * processor.config.vision.tokens_per_image
