"""In-the-front placement and its seeded mixing; length-grouped batches by modality."""

from __future__ import annotations

import random

from llava_interleave.data.placement import in_the_front, mix_placement
from llava_interleave.data.sample import Modality, Sample, Text, Turn, Visual, fill_slots
from llava_interleave.data.sampler import LengthGroupedBatches
from llava_interleave.data.templates import get_template

from .conftest import random_image


def _sample() -> Sample:
    a, b = (Visual((random_image(i),), Modality.IMAGE) for i in range(2))
    return Sample((Turn("user", fill_slots("Is <image> brighter than <image>?", [a, b])), Turn("assistant", (Text("Yes."),))))


def test_in_the_front_moves_visuals_first_and_keeps_them_in_order():
    sample = _sample()
    front = in_the_front(sample)
    assert front.visuals == sample.visuals
    assert get_template("qwen_1_5").render_text(front, add_generation_prompt=False).splitlines()[2:5] == [
        "<|im_start|>user", "<image>", "<image>"
    ]
    assert front.turns[0].text == "Is  brighter than ?" and front.turns[1] == sample.turns[1]


def test_mix_placement_fraction_is_seeded():
    sample = _sample()
    picks = [mix_placement(sample, random.Random(seed), 0.3) is not sample for seed in range(400)]
    again = [mix_placement(sample, random.Random(seed), 0.3) is not sample for seed in range(400)]
    assert picks == again and 0.22 < sum(picks) / len(picks) < 0.38


def test_length_grouped_batches():
    lengths = [5, 100, 7, 90, 6, 95, 300, 310, 8, 320]
    modalities = ["image", "image", "image", "image", "image", "image", "video", "video", "image", "video"]
    sampler = LengthGroupedBatches(lengths, modalities, batch_size=2, seed=1, group=4)
    batches = sampler.batches()
    assert sorted(i for b in batches for i in b) == list(range(10)) and len(batches) == len(sampler)
    assert all(len({modalities[i] for i in b}) == 1 for b in batches)
    image_batches = [b for b in batches if modalities[b[0]] == "image"]
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in image_batches)
    assert spread < 200  # grouped by length: short with short, long with long
    assert sampler.batches() == batches
    sampler.epoch = 1
    assert sampler.batches() != batches
