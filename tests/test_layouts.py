"""Checkpoint layouts: weight-name variants, sparse configs, tied heads, detection, and bad directories."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from llava_interleave.errors import CheckpointError
from llava_interleave.model import layouts
from llava_interleave.model.checkpoint import load_model, read_config

from .conftest import RELEASED_HF, RELEASED_ORIGINAL

IDS = torch.tensor([[5, 6, 7, 8, 9]])


def _logits(path):
    net, _ = load_model(path, "cpu")
    with torch.no_grad():
        return net(IDS).logits


def _copy_with(src, dst, rename=None, drop=(), config_edit=None):
    shutil.copytree(src, dst)
    state = load_file(src / "model.safetensors")
    state = {(rename(k) if rename else k): v for k, v in state.items() if k not in drop}
    save_file(state, dst / "model.safetensors")
    if config_edit:
        config = json.loads((dst / "config.json").read_text())
        config_edit(config)
        (dst / "config.json").write_text(json.dumps(config))
    return dst


def test_newer_hf_weight_names_load_the_same(hf_checkpoint, tmp_path):
    """Files written with the `model.` prefix (model.language_model.*, model.vision_tower.*) load identically."""

    def newer(key: str) -> str:
        key = key.replace("language_model.model.", "model.language_model.").replace("language_model.lm_head.", "lm_head.")
        key = key.replace("vision_tower.vision_model.", "model.vision_tower.")
        return key.replace("multi_modal_projector.", "model.multi_modal_projector.")

    other = _copy_with(hf_checkpoint, tmp_path / "newer", rename=newer)
    assert any(k.startswith("model.language_model.") for k in load_file(other / "model.safetensors"))
    torch.testing.assert_close(_logits(other), _logits(hf_checkpoint), atol=0, rtol=0)


def test_sparse_text_config_takes_qwen2_defaults(hf_checkpoint, tmp_path):
    """Older configs store only non-default keys; a missing rms_norm_eps means Qwen2's default (1e-6)."""
    other = _copy_with(hf_checkpoint, tmp_path / "sparse", config_edit=lambda c: c["text_config"].pop("rms_norm_eps"))
    assert read_config(other).text.rms_norm_eps == 1e-6
    torch.testing.assert_close(_logits(other), _logits(hf_checkpoint), atol=0, rtol=0)


def test_missing_lm_head_means_tied(original_checkpoint, tmp_path):
    other = _copy_with(original_checkpoint, tmp_path / "tied", drop={"lm_head.weight"})
    net, _ = load_model(other, "cpu")
    assert net.lm_head.weight.data_ptr() == net.language_model.embed_tokens.weight.data_ptr()


def test_original_tower_with_all_27_layers_drops_the_last(original_checkpoint, tmp_path):
    """A file holding the whole pretrained tower (one layer more than used) loads, ignoring that layer."""
    state = load_file(original_checkpoint / "model.safetensors")
    prefix = "model.vision_tower.vision_tower.vision_model.encoder.layers."
    kept = 1 + max(int(k[len(prefix):].split(".")[0]) for k in state if k.startswith(prefix))
    extra = {k.replace(f"layers.{kept - 1}.", f"layers.{kept}."): torch.full_like(v, 9.0) for k, v in state.items() if k.startswith(f"{prefix}{kept - 1}.")}
    other = tmp_path / "full_tower"
    shutil.copytree(original_checkpoint, other)
    save_file({**state, **extra}, other / "model.safetensors")
    torch.testing.assert_close(_logits(other), _logits(original_checkpoint), atol=0, rtol=0)


def test_detect_layout():
    assert layouts.detect_layout({"model_type": "llava"}) == "hf"
    assert layouts.detect_layout({"model_type": "llava_qwen"}) == "original"
    with pytest.raises(CheckpointError, match="neither"):
        layouts.detect_layout({"model_type": "llama"})


def test_weights_that_do_not_match_the_config(original_checkpoint, tmp_path):
    other = _copy_with(original_checkpoint, tmp_path / "broken", drop={"model.mm_projector.0.weight"})
    with pytest.raises(CheckpointError, match="missing"):
        load_model(other, "cpu")


def test_missing_weights_file(original_checkpoint, tmp_path):
    other = tmp_path / "noweights"
    shutil.copytree(original_checkpoint, other)
    (other / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no weights file"):
        load_model(other, "cpu")


@pytest.mark.parametrize("value, stops", [(7, (7,)), ([7, 5], (7, 5)), (None, ())])
def test_generation_config_stop_ids_are_one_id_or_a_list(original_checkpoint, tmp_path, value, stops):
    other = tmp_path / "generation"
    shutil.copytree(original_checkpoint, other)
    (other / "generation_config.json").write_text(json.dumps({"eos_token_id": value}))
    assert read_config(other).stop_token_ids == stops
    from llava_interleave import load

    assert set(stops) <= set(load(other, device="cpu").stop_ids)


def test_a_bad_generation_config_is_named(original_checkpoint, tmp_path):
    other = tmp_path / "bad_generation"
    shutil.copytree(original_checkpoint, other)
    (other / "generation_config.json").write_text(json.dumps({"eos_token_id": ["end"]}))
    with pytest.raises(CheckpointError, match="generation_config.json: eos_token_id must be a token id"):
        read_config(other)


def test_saved_checkpoints_write_their_stop_ids(original_checkpoint, tokenizer):
    written = json.loads((original_checkpoint / "generation_config.json").read_text())
    assert written == {"eos_token_id": tokenizer.convert_tokens_to_ids("<|im_end|>"), "pad_token_id": tokenizer.pad_token_id}


def test_written_configs_agree_with_the_published_ones():
    """A released model's config read and written again: every key the published file has, we write the same,
    without our own keys (no `llava_interleave`, no `mm_vision_config` for the so400m tower)."""
    hf = read_config(RELEASED_HF)
    ours = {RELEASED_ORIGINAL: layouts.config_to_original(read_config(RELEASED_ORIGINAL)),
            RELEASED_HF: layouts.config_to_hf(hf, hf.image_token_id)}
    for folder, written in ours.items():
        published = json.loads((folder / "config.json").read_text())
        assert layouts.EXTRA_KEY not in written and "mm_vision_config" not in written
        for key in published.keys() & written.keys():
            if isinstance(published[key], dict):
                shared = published[key].keys() & written[key].keys()
                assert {k: written[key][k] for k in shared} == {k: published[key][k] for k in shared}, key
            else:
                assert written[key] == published[key], key


def test_the_original_layout_says_square_for_squash_and_keeps_only_what_it_cannot_say(original_flat_checkpoint, tmp_path):
    """`image_aspect_ratio` takes the original code's values only: squash is "square" (its training default, which
    its image processor squashes); settings no standard key can hold stay in `llava_interleave`."""
    from llava_interleave.assets import bundled_model
    from llava_interleave.cli import main

    assert main(["convert", str(original_flat_checkpoint), str(tmp_path / "flat"), "--to", "original"]) == 0
    written = json.loads((tmp_path / "flat" / "config.json").read_text())
    assert written["image_aspect_ratio"] == "square" and layouts.EXTRA_KEY not in written
    assert read_config(tmp_path / "flat").processor.image_aspect == "squash"
    for layout, extra in (("original", {"video_pooling": "average", "num_frames": 8, "multi_aspect": "squash"}),
                          ("hf", {"video_pooling": "average", "num_frames": 8})):
        assert main(["convert", str(bundled_model()), str(tmp_path / layout), "--to", layout]) == 0
        assert json.loads((tmp_path / layout / "config.json").read_text())[layouts.EXTRA_KEY] == extra
        assert read_config(tmp_path / layout).processor.video_pooling == "average"
    assert read_config(tmp_path / "original").processor.multi_aspect == "squash"
