"""Oracle for the anyres path: transformers' own `LlavaNextForConditionalGeneration` (SigLIP + Qwen2, a learned
image newline, the interleave grid pinpoints) on the same random weights gives the same logits as our model
for a lone image of several aspect ratios: best resolution, crop grid, un-padding and a newline per row.

Both are fed the same pixel crops (ours): transformers' LlavaNextImageProcessor differs from the original
code's preprocessing (it resizes the base image and crops with its own rules), which is not what the released
interleave checkpoints were trained with, so only the model side is compared here.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration

from llava_interleave.api import Pipeline
from llava_interleave.assets.tiny import tiny_config
from llava_interleave.model import layouts
from llava_interleave.model.inputs import Modality
from llava_interleave.model.language_model import qwen2_config
from llava_interleave.model.llava import LlavaInterleave
from llava_interleave.model.vision_tower import siglip_config

from .conftest import random_image

SIZES = [(40, 30), (30, 50), (90, 20), (20, 90), (28, 28), (61, 17)]  # width x height


@pytest.fixture(scope="module")
def pair(tokenizer):
    """The same random weights as transformers' LlavaNext and as our original-layout (anyres) model."""
    # the original layout's slot id (-200) lives only inside that code; transformers needs a real token id
    config = replace(tiny_config(tokenizer, "original"), image_token_id=tokenizer.convert_tokens_to_ids("<image>"))
    next_config = LlavaNextConfig(
        vision_config=siglip_config(config.vision), text_config=qwen2_config(config.text),
        image_token_index=config.image_token_id, projector_hidden_act="gelu", vision_feature_layer=-1,
        vision_feature_select_strategy="full", multimodal_projector_bias=True,
        image_grid_pinpoints=[[h, w] for w, h in config.processor.grid_pinpoints],  # transformers: (height, width)
    )
    torch.manual_seed(0)
    reference = LlavaNextForConditionalGeneration(next_config).eval()
    with torch.no_grad():
        for p in reference.parameters():
            p.normal_(0.0, 0.2)
    weights = reference.state_dict()
    newline = weights.pop("model.image_newline")
    state = layouts.to_internal(weights, "hf", config.vision.num_layers)
    state["image_newline"] = newline
    ours = LlavaInterleave(config).eval()
    missing, unexpected = ours.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= {"vision_tower.embeddings.position_ids"}, (missing, unexpected)
    if config.text.tie_word_embeddings:
        ours.lm_head.weight = ours.language_model.embed_tokens.weight
    return reference, Pipeline(ours, tokenizer)


@pytest.mark.parametrize("size", SIZES)
def test_anyres_logits_match_llava_next(pair, size):
    reference, pipe = pair
    image = random_image(sum(size), size)
    sample = pipe.sample([{"role": "user", "content": [image, "What is in the image?"]}])
    encoded = pipe.prepare(sample)
    (visual,) = encoded.visuals
    assert visual.modality == Modality.PATCHES
    ids = torch.tensor([encoded.input_ids])
    with torch.no_grad():
        ours = pipe.model(ids, encoded.visuals).logits
        theirs = reference(input_ids=ids, pixel_values=visual.pixel_values.unsqueeze(0),
                           image_sizes=torch.tensor([[size[1], size[0]]])).logits
    assert ours.shape == theirs.shape
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


def test_the_oracle_sees_a_wrong_grid(pair):
    """The comparison can fail: the same crops declared with another image size un-pad differently."""
    reference, pipe = pair
    image = random_image(3, (90, 20))
    encoded = pipe.prepare(pipe.sample([{"role": "user", "content": [image, "Hi"]}]))
    ids = torch.tensor([encoded.input_ids])
    with torch.no_grad():
        ours = pipe.model(ids, encoded.visuals).logits
        with pytest.raises(Exception):  # transformers counts another number of image tokens, or other logits
            theirs = reference(input_ids=ids, pixel_values=encoded.visuals[0].pixel_values.unsqueeze(0),
                               image_sizes=torch.tensor([[90, 20]])).logits  # width and height swapped
            torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
