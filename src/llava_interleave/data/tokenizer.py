"""Train a small byte-level BPE tokenizer with Qwen's ChatML special tokens and `<image>`.

New models (the tiny test models, the bundled nano model) need a vocabulary that fits their data: a
150k-token Qwen vocabulary would be most of a small model's weights.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>"]
MAX_TRAINING_CHARS = 20_000  # of one text: enough to learn its words
MAX_WORD_CHARS = 64  # BPE training time grows with the square of a word's length; longer runs are cut up
_LONG_WORD = re.compile(r"\S{%d,}" % (MAX_WORD_CHARS + 1))


def bounded(texts: Iterable[str]) -> Iterator[str]:
    """Each text cut to `MAX_TRAINING_CHARS` and its words to `MAX_WORD_CHARS`, so one pathological text
    (a 50 MB word) costs no more than an ordinary one."""
    for text in texts:
        text = text[:MAX_TRAINING_CHARS]
        yield _LONG_WORD.sub(lambda m: " ".join(m[0][k : k + MAX_WORD_CHARS] for k in range(0, len(m[0]), MAX_WORD_CHARS)), text)


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE (any text encodes) with pad <|endoftext|>, eos <|im_end|>, <|im_start|> and <image>."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(bounded(texts), trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>", "<image>"],
    )
