"""The released 0.5B checkpoints' published configuration files (tests/fixtures/released, sources in its README):
read as published, then as replicas with the sizes shrunk and tiny random weights, keeping every token id and
processor field, so what a user of the real weights gets is checked without downloading them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from tokenizers import AddedToken, Regex, Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

import llava_interleave
from llava_interleave.config import DEFAULT_PINPOINTS
from llava_interleave.data.sample import Modality
from llava_interleave.engine import SamplingConfig
from llava_interleave.model import layouts
from llava_interleave.model.checkpoint import GENERATION_CONFIG, read_config
from llava_interleave.model.llava import LlavaInterleave

from .conftest import RELEASED_HF as HF
from .conftest import RELEASED_ORIGINAL as ORIGINAL

ENDOFTEXT, IM_START, IM_END, IMAGE = 151643, 151644, 151645, 151646
SMALL_TEXT = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 2}
SMALL_VISION = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2}


def published_ids_tokenizer(specials: dict[str, int]) -> PreTrainedTokenizerFast:
    """A word-level tokenizer with the released special-token ids and "\\n" = 198; other text is one unknown id."""
    tok = Tokenizer(models.WordLevel({"<unk>": 0, "\n": 198, **specials}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("\n"), behavior="isolated")
    tok.add_special_tokens([AddedToken(content, special=True, normalized=False) for content in specials])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<|im_end|>", pad_token="<|endoftext|>")


def replica(fixture: Path, out: Path, shrink) -> Path:
    """The fixture's files, config.json shrunk by `shrink`, tiny random bf16 weights under the layout's names,
    and a tokenizer with the published ids (the vocabulary files are not published here)."""
    shutil.copytree(fixture, out)
    config = json.loads((fixture / "config.json").read_text())
    shrink(config)
    (out / "config.json").write_text(json.dumps(config))
    added = json.loads((fixture / "added_tokens.json").read_text())
    published_ids_tokenizer(added).save_pretrained(out)
    net = LlavaInterleave(read_config(out))
    torch.manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0.0, 0.2)
    state = {k: v.to(torch.bfloat16) for k, v in net.state_dict().items() if k != "lm_head.weight"}  # both are tied
    save_file(layouts.from_internal(state, net.config.layout, net.config), out / "model.safetensors")
    return out


def _shrink_hf(config: dict) -> None:
    config["text_config"].update(SMALL_TEXT)
    config["vision_config"].update(SMALL_VISION)


def _shrink_original(config: dict) -> None:
    """The original layout names its tower (so400m); a smaller one is described by our mm_vision_config."""
    config.update(SMALL_TEXT, mm_hidden_size=16)
    config["mm_vision_config"] = {**layouts.SO400M, **SMALL_VISION, "num_hidden_layers": 3}


@pytest.fixture(scope="module")
def hf_replica(tmp_path_factory) -> Path:
    return replica(HF, tmp_path_factory.mktemp("released") / "hf", _shrink_hf)


@pytest.fixture(scope="module")
def original_replica(tmp_path_factory) -> Path:
    return replica(ORIGINAL, tmp_path_factory.mktemp("released") / "original", _shrink_original)


def force_next_token(net: LlavaInterleave, token_id: int) -> None:
    """Make `token_id` the greedy choice after any input: the last layer's attention adds one large constant
    (its value projection reduced to its bias, whatever it attends to) along the first hidden unit, and only
    `token_id`'s output row points along that unit."""
    attention, norm = net.language_model.layers[-1].self_attn, net.language_model.norm
    with torch.no_grad():
        attention.v_proj.weight.zero_()
        attention.v_proj.bias.zero_()
        attention.v_proj.bias[0] = 1e4
        attention.o_proj.weight.zero_()
        attention.o_proj.weight[0, 0] = 1.0
        net.language_model.layers[-1].mlp.down_proj.weight.zero_()
        norm.weight[0] = 1.0
        net.lm_head.weight[:, 0] = 0.0
        net.lm_head.weight[token_id, 0] = 1.0


def test_hf_config_reads_as_published():
    config = read_config(HF)
    assert (config.layout, config.image_token_id, config.eos_token_id, config.stop_token_ids) == ("hf", IMAGE, IM_END, (IM_END,))
    assert (config.vision.num_layers, config.vision.tokens_per_image, config.vision.hidden_size) == (26, 729, 1152)
    text = config.text
    assert (text.vocab_size, text.hidden_size, text.num_layers, text.num_heads, text.num_kv_heads) == (152000, 1024, 24, 16, 16)
    assert text.tie_word_embeddings and text.rope_theta == 1e6 and text.rms_norm_eps == 1e-6 and config.max_length == 32768
    proc = config.processor
    assert (proc.image_aspect, proc.patch_merge, proc.image_mean, proc.image_std) == ("squash", "flat", (0.5,) * 3, (0.5,) * 3)


def test_original_config_reads_as_published():
    config = read_config(ORIGINAL)
    assert (config.layout, config.image_token_id, config.eos_token_id) == ("original", layouts.ORIGINAL_IMAGE_TOKEN, IM_END)
    assert config.stop_token_ids == (IM_END, ENDOFTEXT) and config.pad_token_id == ENDOFTEXT
    assert (config.vision.num_layers, config.vision.tokens_per_image, config.vision.hidden_size) == (26, 729, 1152)
    assert (config.text.vocab_size, config.text.hidden_size, config.text.num_layers) == (151936, 1024, 24)
    assert config.text.tie_word_embeddings and config.max_length == 32768
    proc = config.processor
    assert (proc.image_aspect, proc.multi_aspect, proc.patch_merge) == ("anyres", "pad", "spatial_unpad")
    assert proc.grid_pinpoints == DEFAULT_PINPOINTS == ((384, 768), (768, 384), (768, 768), (1152, 384), (384, 1152))


def test_hf_tokenizer_files_agree_with_the_config():
    """added_tokens.json, tokenizer_config.json's added_tokens_decoder, the image token and the eos agree."""
    added = json.loads((HF / "added_tokens.json").read_text())
    tokenizer_config = json.loads((HF / "tokenizer_config.json").read_text())
    decoder = {entry["content"]: int(i) for i, entry in tokenizer_config["added_tokens_decoder"].items()}
    assert decoder == added and all(entry["special"] for entry in tokenizer_config["added_tokens_decoder"].values())
    assert added["<image>"] == json.loads((HF / "config.json").read_text())["image_token_index"]
    assert added[tokenizer_config["eos_token"]] == json.loads((HF / GENERATION_CONFIG).read_text())["eos_token_id"]


def test_hf_chat_template_renders_the_published_prompt(hf_replica):
    """The template text is inferred (see the fixture README); its output is the published example, and ours."""
    template = json.loads((HF / "chat_template.json").read_text())["chat_template"]
    pipe = llava_interleave.load(hf_replica, template="hf", device="cpu")
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "What is shown?"}]}]
    rendered = pipe.tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False, add_generation_prompt=True)
    assert rendered == "<|im_start|>user\n<image><image>\nWhat is shown?<|im_end|>\n<|im_start|>assistant\n"
    images = [Image.new("RGB", (40, 30)), Image.new("RGB", (30, 40))]
    assert pipe.processor.template.render_text(pipe.sample([{"role": "user", "content": [*images, "What is shown?"]}])) == rendered


def test_hf_replica_tokens(hf_replica):
    pipe = llava_interleave.load(hf_replica, template="hf", device="cpu")
    assert pipe.stop_ids == (IM_END,)
    pair = pipe.processor.encode(pipe.sample([{"role": "user", "content": [Image.new("RGB", (60, 30)), Image.new("RGB", (30, 60)), "Compare."]}]))
    assert pair.input_ids[0] == IM_START and pair.input_ids.count(IMAGE) == 2 * 729
    assert [v.num_tokens for v in pair.visuals] == [729, 729]
    lone = pipe.processor.encode(pipe.sample([{"role": "user", "content": [Image.new("RGB", (1000, 500)), "Describe."]}]))
    assert lone.visuals[0].modality == Modality.IMAGE and lone.input_ids.count(IMAGE) == 729  # no anyres in this layout


def test_original_replica_tokens(original_replica):
    pipe = llava_interleave.load(original_replica, device="cpu")
    assert {IM_END, ENDOFTEXT} <= set(pipe.stop_ids)
    pair = pipe.processor.encode(pipe.sample([{"role": "user", "content": [Image.new("RGB", (60, 30)), Image.new("RGB", (30, 60)), "Compare."]}]))
    assert [v.num_tokens for v in pair.visuals] == [730, 730] and pair.input_ids[0] == IM_START
    lone = pipe.processor.encode(pipe.sample([{"role": "user", "content": [Image.new("RGB", (1000, 500)), "Describe."]}]))
    # 1000x500 -> pinpoint 768x384 (2x1 crops, nothing to un-pad): base 729 + 27 rows of 54 features + a newline
    assert lone.visuals[0].modality == Modality.PATCHES and lone.visuals[0].num_tokens == 729 + 27 * (54 + 1)


def test_a_replica_stops_on_endoftext_when_generation_config_lists_it(original_replica, tmp_path):
    """The original releases list [151645, 151643] in generation_config.json: an answer ends at either."""
    pipe = llava_interleave.load(original_replica, device="cpu")
    force_next_token(pipe.model, ENDOFTEXT)
    messages = [{"role": "user", "content": [Image.new("RGB", (40, 40)), "Say nothing."]}]
    answer = pipe.generate_samples([pipe.sample(messages)], SamplingConfig(max_new_tokens=4))[0]
    assert answer.token_ids == [ENDOFTEXT] and answer.text == ""

    without = tmp_path / "without"
    shutil.copytree(original_replica, without)
    (without / GENERATION_CONFIG).unlink()
    pipe = llava_interleave.load(without, device="cpu")
    assert ENDOFTEXT not in pipe.stop_ids
    force_next_token(pipe.model, ENDOFTEXT)
    assert pipe.generate_samples([pipe.sample(messages)], SamplingConfig(max_new_tokens=4))[0].token_ids == [ENDOFTEXT] * 4
