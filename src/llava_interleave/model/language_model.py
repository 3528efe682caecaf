"""The Qwen2-family language model (Qwen1.5 in the releases), built from transformers' Qwen2 blocks."""

from __future__ import annotations

from transformers import Qwen2Config
from transformers.models.qwen2.modeling_qwen2 import Qwen2Model

from ..config import TextConfig


def qwen2_config(cfg: TextConfig, attn_implementation: str = "sdpa") -> Qwen2Config:
    """No pad_token_id: the released embeddings have no padding row, padding is masked instead."""
    hf = Qwen2Config(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        rope_theta=cfg.rope_theta,
        max_position_embeddings=cfg.max_position_embeddings,
        rms_norm_eps=cfg.rms_norm_eps,
        tie_word_embeddings=cfg.tie_word_embeddings,
        use_sliding_window=False,
    )
    hf._attn_implementation = attn_implementation
    return hf


def build_language_model(cfg: TextConfig, attn_implementation: str = "sdpa") -> Qwen2Model:
    """A Qwen2 decoder without its LM head (the head lives beside it so it can be tied or not)."""
    return Qwen2Model(qwen2_config(cfg, attn_implementation))
