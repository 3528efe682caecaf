"""SigLIP vision tower as the released checkpoints use it.

Non-standard on purpose: the pretrained tower's last layer is dropped (26 of 27 kept) and the feature is
the last kept layer's output *before* the post-layernorm; there is no pooling head. So we hold only the
patch embeddings and the kept encoder layers. 384-px input, patch 14 -> 27x27 = 729 tokens per image.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import SiglipVisionConfig
from transformers.models.siglip.modeling_siglip import SiglipEncoderLayer, SiglipVisionEmbeddings

from ..config import VisionConfig


def siglip_config(cfg: VisionConfig, attn_implementation: str = "sdpa") -> SiglipVisionConfig:
    """The transformers config for the kept part of the tower."""
    hf = SiglipVisionConfig(
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        image_size=cfg.image_size,
        patch_size=cfg.patch_size,
        layer_norm_eps=cfg.layer_norm_eps,
        hidden_act=cfg.hidden_act,
        vision_use_head=False,
    )
    hf._attn_implementation = attn_implementation
    return hf


class _Encoder(nn.Module):
    """Holds the layers under `encoder.layers.N` so weight names match SigLIP's."""

    def __init__(self, hf: SiglipVisionConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(SiglipEncoderLayer(hf) for _ in range(hf.num_hidden_layers))


class VisionTower(nn.Module):
    """`gradient_checkpointing`: in training mode, keep only each encoder layer's input and recompute the
    layer in the backward pass (training with `grad_checkpointing=true`), trading compute for the memory of
    the tower's activations, which a batch of many images or frames would otherwise fill."""

    def __init__(self, cfg: VisionConfig, attn_implementation: str = "sdpa") -> None:
        super().__init__()
        hf = siglip_config(cfg, attn_implementation)
        self.embeddings = SiglipVisionEmbeddings(hf)
        self.encoder = _Encoder(hf)
        self.gradient_checkpointing = False

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) pixels -> (N, (S/p)^2, C) features of the last kept layer, pre-layernorm."""
        dtype = self.embeddings.patch_embedding.weight.dtype
        hidden = self.embeddings(pixel_values.to(dtype))  # (N, 729, 1152)
        recompute = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for layer in self.encoder.layers:
            hidden = checkpoint(layer, hidden, None, use_reentrant=False) if recompute else layer(hidden, None)
        return hidden
