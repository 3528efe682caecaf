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
