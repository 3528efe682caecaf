"""Padding and packing: the same per-sample loss either way, masks that never cross samples, packing plans."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import llava_interleave
from llava_interleave.data.collate import block_causal_mask, pack_collate, pack_greedy, pad_collate
from llava_interleave.data.processor import IGNORE_INDEX


def _per_sample_loss(pipe, batch) -> list[float]:
    with torch.no_grad():
        logits = pipe.model(batch.input_ids, batch.visuals, batch.attention_mask, batch.position_ids).logits
    losses = F.cross_entropy(logits[:, :-1].transpose(1, 2), batch.labels[:, 1:], ignore_index=IGNORE_INDEX, reduction="none")
    segments = batch.segment_ids[:, 1:]
    supervised = batch.labels[:, 1:] != IGNORE_INDEX
    out = []
    for row in range(batch.input_ids.shape[0]):
        for seg in range(int(segments[row].max()) + 1):
            keep = (segments[row] == seg) & supervised[row]
            out.append(float(losses[row][keep].mean()))
    return out


@pytest.fixture(scope="module")
def encoded(original_checkpoint, image_files):
    pipe = llava_interleave.load(original_checkpoint, device="cpu")
    conversations = [
        [("Compare <image> and <image>.", image_files[:2]), ("The left one is darker.", None)],
        [("What is this?", image_files[2:3]), ("A pattern.", None), ("And <image>?", image_files[3:4]), ("Noise too.", None)],
        [("Three views: <image><image><image>", image_files[:3]), ("Two chairs.", None)],
    ]
    samples = []
    for conv in conversations:
        messages = []
        for i, (text, images) in enumerate(conv):
            if i % 2 == 0:
                messages.append({"role": "user", "content": [text, *({"type": "image", "image": p} for p in images)]})
            else:
                messages.append({"role": "assistant", "content": text})
        samples.append(pipe.processor.encode(pipe.sample(messages), add_generation_prompt=False))
    return pipe, samples


def test_packing_gives_the_same_per_sample_loss_as_padding(encoded):
    pipe, samples = encoded
    padded = _per_sample_loss(pipe, pad_collate(samples, pipe.config.pad_token_id))
    packed_batch = pack_collate([samples], pipe.config.pad_token_id)
    assert packed_batch.input_ids.shape == (1, sum(len(s) for s in samples))
    packed = _per_sample_loss(pipe, packed_batch)
    assert packed == pytest.approx(padded, abs=1e-5)
    # without the block mask the samples would see each other and the loss would change
    leaky = pack_collate([samples], pipe.config.pad_token_id)
    leaky = type(leaky)(**{**leaky.__dict__, "attention_mask": torch.ones_like(leaky.segment_ids)})
    assert _per_sample_loss(pipe, leaky)[1:] != pytest.approx(padded[1:], abs=1e-5)


def test_packing_without_a_mask_uses_the_position_ids(encoded):
    """The flash-attention (variable-length) path: no mask, boundaries read from restarting positions."""
    pipe, samples = encoded
    padded = _per_sample_loss(pipe, pad_collate(samples, pipe.config.pad_token_id))
    batch = pack_collate([samples[:2], samples[2:]], pipe.config.pad_token_id, block_mask=False)
    assert batch.attention_mask is None
    assert _per_sample_loss(pipe, batch) == pytest.approx(padded, abs=1e-5)


def test_sample_averaged_loss_is_the_sum_of_per_sample_means(encoded):
    """`optim.loss_average=sample`: padded or packed, each sample's mean counts once, whatever its length."""
    from llava_interleave.train.sft import sample_loss, token_loss

    pipe, samples = encoded
    for batch in (pad_collate(samples, pipe.config.pad_token_id), pack_collate([samples[:2], samples[2:]], pipe.config.pad_token_id)):
        with torch.no_grad():
            logits = pipe.model(batch.input_ids, batch.visuals, batch.attention_mask, batch.position_ids).logits
        per_sample = _per_sample_loss(pipe, batch)
        assert float(sample_loss(logits, batch.labels, batch.segment_ids)) == pytest.approx(sum(per_sample), abs=1e-4)
        tokens = int((batch.labels[:, 1:] != IGNORE_INDEX).sum())
        assert float(token_loss(logits, batch.labels)) / tokens != pytest.approx(sum(per_sample) / len(per_sample), abs=1e-4)


def test_padding_waste_drops_with_packing(encoded):
    pipe, samples = encoded
    padded = pad_collate(samples, pipe.config.pad_token_id)
    packed = pack_collate([samples], pipe.config.pad_token_id)
    assert padded.num_tokens == packed.num_tokens == sum(len(s) for s in samples)
    assert packed.input_ids.numel() == packed.num_tokens < padded.input_ids.numel()


def test_block_mask_by_hand():
    mask = block_causal_mask(torch.tensor([[0, 0, 1, 1, 1, -1]]))[0, 0].int().tolist()
    assert mask == [
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [0, 0, 1, 0, 0, 0],
        [0, 0, 1, 1, 0, 0],
        [0, 0, 1, 1, 1, 0],
        [0, 0, 0, 0, 0, 1],
    ]


def test_pack_greedy_respects_the_budget():
    lengths = [7, 3, 5, 2, 9, 4, 12]
    rows = pack_greedy(lengths, 10)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 10 for row in rows if len(row) > 1)
    assert [6] in rows  # longer than the budget: alone
    assert len(rows) == 5  # 12 | 9 | 7+3 | 5+4 | 2 ... first-fit decreasing: [12],[9],[7,3],[5,4],[2]
