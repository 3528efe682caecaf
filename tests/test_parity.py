"""Oracle: transformers' own LlavaForConditionalGeneration and processor on the same tiny hf checkpoint."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from transformers import AutoProcessor, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

import llava_interleave
from llava_interleave.assets.tiny import tiny_config
from llava_interleave.data.sample import Modality
from llava_interleave.model.checkpoint import HUB_CHAT_TEMPLATE, load_model
from llava_interleave.model.language_model import qwen2_config
from llava_interleave.model.vision_tower import siglip_config

try:  # transformers >= 5 has backends; the PIL one resizes exactly as the original code did
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil as PilImageProcessor
except ImportError:  # older releases: the slow processor is the PIL one
    from transformers import SiglipImageProcessor as PilImageProcessor


@pytest.fixture(scope="module")
def transformers_checkpoint(tmp_path_factory, tokenizer):
    """A tiny hf-layout checkpoint written by transformers itself (model, processor, chat template)."""
    config = tiny_config(tokenizer, "hf")
    llava = LlavaConfig(
        vision_config=siglip_config(config.vision), text_config=qwen2_config(config.text),
        image_token_index=config.image_token_id, projector_hidden_act="gelu", vision_feature_layer=-1,
        vision_feature_select_strategy="full", image_seq_length=config.vision.tokens_per_image,
    )
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(llava)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)  # far from uniform logits, so greedy choices are clear-cut
    size = config.vision.image_size
    processor = LlavaProcessor(
        image_processor=PilImageProcessor(size={"height": size, "width": size}, image_mean=[0.5] * 3, image_std=[0.5] * 3),
        tokenizer=tokenizer, patch_size=config.vision.patch_size, vision_feature_select_strategy="full",
        num_additional_image_tokens=0, chat_template=HUB_CHAT_TEMPLATE,
    )
    out = tmp_path_factory.mktemp("transformers_saved")
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def reference(transformers_checkpoint):
    """The saved processor, with its PIL backend: the torchvision backend's bicubic differs by 1/255 here and there."""
    model = LlavaForConditionalGeneration.from_pretrained(transformers_checkpoint, attn_implementation="sdpa").eval()
    processor = AutoProcessor.from_pretrained(transformers_checkpoint)
    processor.image_processor = PilImageProcessor.from_pretrained(transformers_checkpoint)
    return model, processor


@pytest.mark.parametrize("count", [1, 2, 5])
def test_greedy_tokens_match_transformers(transformers_checkpoint, image_files, reference, count):
    ref_model, ref_processor = reference
    images = [Image.open(p).convert("RGB") for p in image_files[:count]]
    messages = [{"role": "user", "content": [*({"type": "image"} for _ in images), {"type": "text", "text": "What is in the image?"}]}]
    prompt = ref_processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = ref_processor(images=images, text=prompt, return_tensors="pt")
    expected = ref_model.generate(**inputs, max_new_tokens=12, do_sample=False, eos_token_id=-1, pad_token_id=0)
    expected = expected[0, inputs["input_ids"].shape[1] :].tolist()

    pipe = llava_interleave.load(transformers_checkpoint, template="hf", device="cpu")
    sample = pipe.sample([{"role": "user", "content": [*images, "What is in the image?"]}])
    assert pipe.processor.template.render_text(sample) == prompt
    encoded = pipe.processor.encode(sample)
    assert encoded.input_ids == inputs["input_ids"][0].tolist()
    got = pipe.engine.generate([encoded], llava_interleave.engine.SamplingConfig(max_new_tokens=12))[0]
    assert len(got) == 12 and got == expected


def test_forward_logits_match_transformers(transformers_checkpoint, image_files, reference):
    ref_model, ref_processor = reference
    images = [Image.open(p).convert("RGB") for p in image_files[:2]]
    text = "<|im_start|>user\n<image><image>\nCompare them.<|im_end|>\n<|im_start|>assistant\n"
    inputs = ref_processor(images=images, text=text, return_tensors="pt")
    with torch.no_grad():
        expected = ref_model(**inputs).logits
    net, _ = load_model(transformers_checkpoint, "cpu")
    pipe = llava_interleave.Pipeline(net, ref_processor.tokenizer, "hf")
    visuals = [pipe.processor.prepare_visual(v) for v in pipe.sample([{"role": "user", "content": images}]).visuals]
    assert all(v.modality == Modality.IMAGE for v in visuals)
    torch.testing.assert_close(torch.cat([v.pixel_values for v in visuals]), inputs["pixel_values"], atol=1e-5, rtol=0)
    with torch.no_grad():
        got = net(inputs["input_ids"], visuals).logits
    assert (got - expected).abs().max().item() < 1e-4


def test_original_layout_same_weights_same_logits(transformers_checkpoint, image_files, tmp_path):
    """hf -> original (flat) conversion keeps the function: same expanded sequence, same logits."""
    from llava_interleave.cli import main

    assert main(["convert", str(transformers_checkpoint), str(tmp_path / "orig"), "--to", "original"]) == 0
    hf_pipe = llava_interleave.load(transformers_checkpoint, template="qwen_1_5", device="cpu")
    orig_pipe = llava_interleave.load(tmp_path / "orig", template="qwen_1_5", device="cpu")
    assert orig_pipe.config.layout == "original" and orig_pipe.config.processor.patch_merge == "flat"
    messages = [{"role": "user", "content": [{"type": "image", "image": image_files[0]}, {"type": "image", "image": image_files[1]}, "Which is brighter?"]}]
    hf_in = hf_pipe.processor.encode(hf_pipe.sample(messages))
    orig_in = orig_pipe.processor.encode(orig_pipe.sample(messages))
    slot_hf = [i == hf_pipe.config.image_token_id for i in hf_in.input_ids]
    slot_orig = [i == orig_pipe.config.image_token_id for i in orig_in.input_ids]
    assert slot_hf == slot_orig and sum(slot_hf) == 2 * hf_pipe.config.vision.tokens_per_image
    with torch.no_grad():
        a = hf_pipe.model(torch.tensor([hf_in.input_ids]), hf_in.visuals).logits
        b = orig_pipe.model(torch.tensor([orig_in.input_ids]), orig_in.visuals).logits
    assert (a - b).abs().max().item() < 1e-5


def test_converted_bf16_original_checkpoint_answers_the_same_in_transformers(tokenizer, image_files, tmp_path):
    """`convert --to hf` of a bf16 original-layout checkpoint: still bf16, `<image>` one special token for
    transformers' AutoProcessor, and LlavaForConditionalGeneration's greedy tokens (its own processor, its
    generation_config) equal ours on the same files."""
    import json

    from llava_interleave.assets.tiny import make_checkpoint
    from llava_interleave.cli import main

    source = make_checkpoint(tmp_path / "orig", tiny_config(tokenizer, "original"), tokenizer, seed=5, dtype=torch.bfloat16)
    assert main(["convert", str(source), str(tmp_path / "hf"), "--to", "hf"]) == 0
    out = tmp_path / "hf"
    decoder = json.loads((out / "tokenizer_config.json").read_text())["added_tokens_decoder"]
    image_id = json.loads((out / "config.json").read_text())["image_token_index"]
    assert decoder[str(image_id)]["content"] == "<image>" and decoder[str(image_id)]["special"]
    assert "llava_interleave" not in json.loads((out / "config.json").read_text())

    processor = AutoProcessor.from_pretrained(out)
    processor.image_processor = PilImageProcessor.from_pretrained(out)
    assert processor.tokenizer.tokenize("a<image>b")[1] == "<image>" and processor.tokenizer.convert_tokens_to_ids("<image>") == image_id
    model = LlavaForConditionalGeneration.from_pretrained(out, dtype=torch.bfloat16, attn_implementation="sdpa").eval()
    assert model.dtype == torch.bfloat16
    images = [Image.open(p).convert("RGB") for p in image_files[:2]]
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "What is in the image?"}]}]
    inputs = processor(images=images, text=processor.apply_chat_template(messages, add_generation_prompt=True), return_tensors="pt")
    expected = model.generate(**inputs, max_new_tokens=12, do_sample=False)[0, inputs["input_ids"].shape[1]:].tolist()

    pipe = llava_interleave.load(out, template="hf", device="cpu", dtype=torch.bfloat16)
    got = pipe.generate_samples([pipe.sample([{"role": "user", "content": [*images, "What is in the image?"]}])],
                                llava_interleave.engine.SamplingConfig(max_new_tokens=12))[0].token_ids
    assert len(got) == 12 and got == expected
