"""Tiny random checkpoints and tokenizers, built in milliseconds, for tests and benchmarks (no downloads)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import PreTrainedTokenizerFast

from ..config import InterleaveConfig, ProcessorConfig, TextConfig, VisionConfig
from ..data.tokenizer import train_tokenizer
from ..model.checkpoint import save_checkpoint
from ..model.layouts import ORIGINAL_IMAGE_TOKEN
from ..model.llava import LlavaInterleave

CORPUS = [
    "You are a helpful assistant. What is in the image? Describe the video. How many views show a chair?",
    "the cat sat on the mat. A red square and a blue circle. Which image has more triangles? Answer: (A) left",
    "Spot the difference between the two pictures. The ball moved to the right. There are 3 objects.",
]


def make_tokenizer(vocab_size: int = 400, corpus: list[str] | None = None) -> PreTrainedTokenizerFast:
    """A byte-level BPE with the ChatML special tokens and `<image>`, like Qwen's but small."""
    return train_tokenizer(corpus or CORPUS, vocab_size)


def tiny_config(
    tokenizer: PreTrainedTokenizerFast,
    layout: str = "hf",
    processor: ProcessorConfig | None = None,
    vision: VisionConfig | None = None,
    text: TextConfig | None = None,
) -> InterleaveConfig:
    """Small sizes with the released structure; vocabulary a little larger than the tokenizer's."""
    vision = vision or VisionConfig(image_size=28, patch_size=7, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2)
    text = text or TextConfig(
        vocab_size=len(tokenizer) + 8, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2,
        max_position_embeddings=4096, tie_word_embeddings=False,
    )
    pinpoints = tuple((w * vision.image_size, h * vision.image_size) for w, h in ((1, 2), (2, 1), (2, 2), (3, 1), (1, 3)))
    processor = processor or (
        ProcessorConfig(image_aspect="squash", patch_merge="flat", grid_pinpoints=pinpoints)
        if layout == "hf"
        else ProcessorConfig(grid_pinpoints=pinpoints)
    )
    token = tokenizer.convert_tokens_to_ids
    image_id = token("<image>") if layout == "hf" else ORIGINAL_IMAGE_TOKEN
    return InterleaveConfig(
        vision=vision, text=text, processor=processor, image_token_id=image_id,
        eos_token_id=token("<|im_end|>"), pad_token_id=token("<|endoftext|>"), max_length=text.max_position_embeddings,
        layout=layout,  # type: ignore[arg-type]
    )


def make_checkpoint(out: str | Path, config: InterleaveConfig, tokenizer: PreTrainedTokenizerFast, seed: int = 0,
                    dtype: torch.dtype = torch.float32) -> Path:
    """Write a randomly initialised model (newline included when the layout uses it) to `out`, stored in
    `dtype` (the releases store bf16)."""
    torch.manual_seed(seed)
    net = LlavaInterleave(config)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0.0, 0.2)
    return save_checkpoint(net.to(dtype), tokenizer, out, config.layout)


def main() -> None:
    """`python -m llava_interleave.assets.tiny OUT`: write a tiny random original-layout checkpoint to OUT."""
    import sys

    tokenizer = make_tokenizer()
    out = make_checkpoint(sys.argv[1], tiny_config(tokenizer, "original"), tokenizer)
    print(f"wrote a tiny random checkpoint (its answers are noise) to {out}")


if __name__ == "__main__":
    main()
