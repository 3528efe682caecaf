"""The four scenarios end to end: each visual's tokens land in its own slot, with the right count."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import llava_interleave
from llava_interleave.assets.tiny import make_checkpoint, tiny_config
from llava_interleave.config import ProcessorConfig, VisionConfig
from llava_interleave.data.media import load_video
from llava_interleave.data.sample import Modality
from llava_interleave.engine import SamplingConfig
from llava_interleave.model.anyres import anyres_token_count

from .conftest import write_clip


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_clip(tmp_path_factory.mktemp("video") / "clip.mp4")


@pytest.fixture(scope="module")
def odd_grid_checkpoint(tmp_path_factory, tokenizer):
    """A 5x5 patch grid, so average (2x2) and bilinear (3x3) pooling differ."""
    vision = VisionConfig(image_size=35, patch_size=7, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2)
    return make_checkpoint(tmp_path_factory.mktemp("grid5"), tiny_config(tokenizer, "original", vision=vision), tokenizer)


def test_every_slot_receives_its_own_item(original_checkpoint, image_files, clip, monkeypatch):
    """Each visual encodes to a constant (its index + 1); the merged embeddings must show them in slot order."""
    pipe = llava_interleave.load(original_checkpoint, device="cpu")
    messages = [
        {"role": "user", "content": ["First <image>, then a clip <image>, then views <image> <image>.",
                                     {"type": "image", "image": image_files[0]}, {"type": "video", "video": clip, "frames": 3},
                                     {"type": "view", "image": image_files[1]}, {"type": "view", "image": image_files[2]}]},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": [{"type": "image", "image": image_files[3]}, "and this?"]},
    ]
    encoded = pipe.processor.encode(pipe.sample(messages))
    assert [v.modality for v in encoded.visuals] == [Modality.IMAGE, Modality.VIDEO, Modality.VIEW, Modality.VIEW, Modality.IMAGE]
    hidden = pipe.config.text.hidden_size
    monkeypatch.setattr(pipe.model, "encode_visuals", lambda visuals: [torch.full((v.num_tokens, hidden), float(i + 1)) for i, v in enumerate(visuals)])
    ids = torch.tensor([encoded.input_ids])
    embeds = pipe.model.embed(ids, encoded.visuals)[0]
    slots = (ids[0] == pipe.config.image_token_id).nonzero().flatten()
    values = embeds[slots, 0].tolist()
    expected = [float(i + 1) for i, v in enumerate(encoded.visuals) for _ in range(v.num_tokens)]
    assert values == expected
    text_positions = (ids[0] != pipe.config.image_token_id).nonzero().flatten()
    torch.testing.assert_close(embeds[text_positions], pipe.model.language_model.embed_tokens(ids[0, text_positions]))
    # slots of one item are contiguous: a new item starts only right after the previous one ends
    starts = [int(slots[0])] + [int(b) for a, b in zip(slots, slots[1:]) if b != a + 1]
    assert len(starts) == len(encoded.visuals)


@pytest.mark.parametrize("pooling, per_frame", [("none", 25 + 1), ("average", 4 + 1), ("bilinear", 9 + 1)])
def test_video_token_counts_with_pooling(odd_grid_checkpoint, clip, pooling, per_frame):
    pipe = llava_interleave.load(odd_grid_checkpoint, device="cpu").with_processor(video_pooling=pooling)
    encoded = pipe.processor.encode(pipe.sample([{"role": "user", "content": [{"type": "video", "video": clip, "frames": 8}, "What moves?"]}]))
    (visual,) = encoded.visuals
    assert visual.pixel_values.shape[0] == 8 and visual.num_tokens == 8 * per_frame
    assert sum(i == pipe.config.image_token_id for i in encoded.input_ids) == 8 * per_frame
    out = pipe.engine.generate([encoded], llava_interleave.engine.SamplingConfig(max_new_tokens=3))
    assert len(out[0]) == 3  # the model consumed exactly as many features as slots


def test_video_frames_are_uniform_and_ordered(clip):
    frames = load_video(clip, num_frames=4)
    levels = [round(float(np.asarray(f.convert("L")).mean()) / 8) for f in frames]
    assert levels == [0, 8, 15, 23]  # linspace(0, 23, 4) rounded


def test_lone_image_uses_anyres_and_several_images_do_not(original_checkpoint, image_files):
    pipe = llava_interleave.load(original_checkpoint, device="cpu")
    proc, vision = pipe.config.processor, pipe.config.vision
    lone = pipe.processor.encode(pipe.sample([{"role": "user", "content": [{"type": "image", "image": image_files[4]}, "Details?"]}]))
    (visual,) = lone.visuals
    assert visual.modality == Modality.PATCHES
    assert visual.num_tokens == anyres_token_count(visual.image_size, proc.grid_pinpoints, vision.image_size, vision.grid)
    assert visual.pixel_values.shape[0] == 1 + visual.grid[0] * visual.grid[1]
    pair = pipe.processor.encode(pipe.sample([{"role": "user", "content": [{"type": "image", "image": p} for p in image_files[:2]]}]))
    assert [v.num_tokens for v in pair.visuals] == [vision.tokens_per_image + 1] * 2
    assert len(pipe.engine.generate([lone], llava_interleave.engine.SamplingConfig(max_new_tokens=2))[0]) == 2


def test_a_lone_image_is_one_image_for_a_model_without_anyres(hf_checkpoint, image_files):
    """The modality rule gives a squash model (hf layout) one crop for a lone image, and the processor refuses
    a multi-patch item it cannot cut, instead of quietly deciding again."""
    from llava_interleave.data.sample import Sample, Turn, Visual, fill_slots
    from llava_interleave.errors import PromptError

    pipe = llava_interleave.load(hf_checkpoint, device="cpu")
    encoded = pipe.processor.encode(pipe.sample([{"role": "user", "content": [{"type": "image", "image": image_files[4]}, "Details?"]}]))
    (visual,) = encoded.visuals
    assert visual.modality == Modality.IMAGE and visual.pixel_values.shape[0] == 1
    assert visual.num_tokens == pipe.config.vision.tokens_per_image
    patches = Visual((pipe.sample([{"role": "user", "content": [{"type": "image", "image": image_files[4]}]}]).visuals[0].frames[0],),
                     Modality.PATCHES)
    with pytest.raises(PromptError, match="anyres"):
        pipe.processor.encode(Sample((Turn("user", fill_slots("Details?", [patches])),)))


def test_pad_aspect_pads_with_mean_colour(tokenizer, tmp_path, image_files):
    config = tiny_config(tokenizer, "original", ProcessorConfig(image_aspect="pad", patch_merge="flat"))
    pipe = llava_interleave.load(make_checkpoint(tmp_path / "pad", config, tokenizer), device="cpu")
    wide = image_files[5]  # 65x30: padded top and bottom
    visual = pipe.processor.encode(pipe.sample([{"role": "user", "content": [{"type": "image", "image": p} for p in (wide, wide)]}])).visuals[0]
    corner = visual.pixel_values[0, :, 0, 0]
    torch.testing.assert_close(corner, torch.full((3,), 127 / 255 / 0.5 - 1.0), atol=0.02, rtol=0)


def test_with_processor_leaves_the_original_pipeline_as_it_was(odd_grid_checkpoint, clip):
    plain = llava_interleave.load(odd_grid_checkpoint, device="cpu")
    pooled = plain.with_processor(video_pooling="average")
    messages = [{"role": "user", "content": [{"type": "video", "video": clip, "frames": 4}, "What moves?"]}]
    assert plain.config.processor.video_pooling == "none" and pooled.config.processor.video_pooling == "average"
    counts = [p.processor.encode(p.sample(messages)).visuals[0].num_tokens for p in (plain, pooled)]
    assert counts == [4 * (25 + 1), 4 * (4 + 1)]
    for pipe in (plain, pooled):  # both run on the one shared model
        assert len(pipe.generate_samples([pipe.sample(messages)], SamplingConfig(max_new_tokens=2))[0].token_ids) == 2


def test_several_images_are_padded_to_square_on_an_anyres_checkpoint(original_checkpoint, image_files):
    """As the released checkpoints were trained and are evaluated: a lone image goes through anyres, several
    images (and frames, views) are padded to a square of the mean colour; `multi_aspect` squash squashes them."""
    from PIL import Image

    from llava_interleave.assets import bundled_model
    from llava_interleave.data.image_processing import pad_to_square, to_tensor

    pipe = llava_interleave.load(original_checkpoint, device="cpu")
    proc, size = pipe.config.processor, pipe.config.vision.image_size
    messages = [{"role": "user", "content": [{"type": "image", "image": p} for p in image_files[4:6]]}]
    wide = Image.open(image_files[5]).convert("RGB")
    assert wide.size[0] != wide.size[1]
    padded = pipe.processor.encode(pipe.sample(messages)).visuals[1].pixel_values[0]
    assert torch.equal(padded, to_tensor(pad_to_square(wide, proc.image_mean), size, proc.image_mean, proc.image_std))
    squashing = pipe.with_processor(multi_aspect="squash")
    squashed = squashing.processor.encode(squashing.sample(messages)).visuals[1].pixel_values[0]
    assert torch.equal(squashed, to_tensor(wide, size, proc.image_mean, proc.image_std))
    lone = pipe.processor.encode(pipe.sample([{"role": "user", "content": [{"type": "image", "image": image_files[5]}]}]))
    assert lone.visuals[0].modality == Modality.PATCHES
    assert llava_interleave.load(bundled_model(), device="cpu").config.processor.multi_aspect == "squash"
