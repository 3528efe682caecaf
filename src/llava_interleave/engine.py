"""Generation engine: prefill, then decode one token at a time with a KV cache. Knows nothing of text.

Several prompts run as one batch with left padding (positions count only real tokens). Greedy when
temperature is 0, else temperature + top-p sampling from a seeded generator. The vocabulary
projection in prefill is computed for the last position only, and the KV cache is preallocated for
prompt + answer so a decode step never copies it (see model/kv_cache.py).

With `cache_mb` > 0 two caches (model/caches.py) serve every request of the engine: visual tokens by
content, and the keys and values of earlier prompts. A prompt sharing a prefix with an earlier one (the
next turn of a chat, another question about the same images) prefills only the rest; in a batch, the
prefill starts at the first left-padded column that not every row has cached.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from transformers.cache_utils import Cache

from .data.batch import Encoded
from .errors import PromptError, SamplingError
from .model.caches import PrefixCache, PromptKey, VisionCache, fingerprint, visual_key
from .model.inputs import VisualInput
from .model.kv_cache import preallocated_cache
from .model.llava import LlavaInterleave
from .model.merge import merge_visual_tokens

MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed takes a 64-bit integer


@dataclass(frozen=True, kw_only=True)
class SamplingConfig:
    """How to pick the answer's tokens; the one set of defaults (greedy, 256 tokens) for the API, CLI,
    server and eval. `stop_token_ids` are added to the model's own stop tokens."""

    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 -> greedy
    top_p: float = 1.0
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        problems = []
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            problems.append(f"max_new_tokens must be a whole number of at least 1, got {self.max_new_tokens!r}")
        if not (isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature) and self.temperature >= 0):
            problems.append(f"temperature must be a finite number >= 0 (0 = greedy), got {self.temperature!r}")
        if not (isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1):
            problems.append(f"top_p must be in (0, 1], got {self.top_p!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)
                                      or not 0 <= self.seed <= MAX_SEED):
            problems.append(f"seed must be a whole number in 0..{MAX_SEED}, got {self.seed!r}")
        if problems:
            raise SamplingError("; ".join(problems))

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0


class Engine:
    def __init__(self, model: LlavaInterleave, cache_mb: float = 0) -> None:
        self.model = model
        self.vision_cache: VisionCache | None = None
        self.prefix_cache: PrefixCache | None = None
        self.set_cache(cache_mb)

    def set_cache(self, cache_mb: float) -> None:
        """Bound the vision and prefix caches by `cache_mb` MiB together (a quarter for visual tokens); 0 = off."""
        total = int(cache_mb * 2**20)
        self.vision_cache = VisionCache(total // 4) if total > 0 else None
        self.prefix_cache = PrefixCache(total - total // 4) if total > 0 else None

    @torch.inference_mode()
    def stream(self, prompts: Sequence[Encoded], sampling: SamplingConfig) -> Iterator[list[int | None]]:
        """Yield, per decoding step, the new token of every prompt (None once that prompt has stopped)."""
        model = self.model
        device = model.device
        lengths = [len(p.input_ids) for p in prompts]
        width = max(lengths)
        ids = torch.full((len(prompts), width), model.config.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, p in enumerate(prompts):
            ids[row, width - len(p.input_ids) :] = torch.tensor(p.input_ids)
            mask[row, width - len(p.input_ids) :] = 1
        ids, mask = ids.to(device), mask.to(device)
        padded = bool((mask == 0).any())
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, L)
        cache = preallocated_cache(model.config.text.num_layers, width + sampling.max_new_tokens)
        logits = self._prefill(prompts, ids, mask if padded else None, positions, cache)
        generator = self._generator(sampling, device)
        done = [False] * len(prompts)
        stops = set(sampling.stop_token_ids)
        for _ in range(sampling.max_new_tokens):
            token = self._pick(logits, sampling, generator)  # (B,)
            values = token.tolist()  # the step's one device-to-host sync
            yield [None if d else t for t, d in zip(values, done)]
            done = [d or t in stops for t, d in zip(values, done)]
            if all(done):
                return
            positions = positions[:, -1:] + 1
            if padded:
                mask = torch.cat([mask, mask.new_ones(len(prompts), 1)], dim=1)
            embeds = model.language_model.embed_tokens(token[:, None])
            logits = model(None, (), mask if padded else None, positions, cache, embeds).logits[:, -1]

    def _prefill(self, prompts: Sequence[Encoded], ids: torch.Tensor, mask: torch.Tensor | None,
                 positions: torch.Tensor, cache: Cache) -> torch.Tensor:
        """Last-position logits of the prompts, their keys and values written to `cache`."""
        model = self.model
        if self.vision_cache is None and self.prefix_cache is None:
            visuals = [v for p in prompts for v in p.visuals]
            return model(ids, visuals, mask, positions, cache, logits_to_keep=1).logits[:, -1]
        visual_keys = [[visual_key(v) for v in p.visuals] for p in prompts]
        prompt_keys = [self._prompt_key(p, k) for p, k in zip(prompts, visual_keys)]
        start = self._reuse(prompt_keys, ids.shape[1], cache)
        part = ids[:, start:]
        slots = part == model.config.image_token_id
        embeds = model.language_model.embed_tokens(part.masked_fill(slots, 0))
        tokens = self._visual_tokens(prompts, visual_keys, ids, start)
        if tokens is not None or slots.any():
            embeds = merge_visual_tokens(embeds, slots, tokens if tokens is not None else embeds.new_zeros(0, embeds.shape[-1]))
        logits = model(None, (), mask, positions[:, start:], cache, embeds, logits_to_keep=1).logits[:, -1]
        if self.prefix_cache is not None:
            self._store(prompt_keys, ids.shape[1], cache)
        return logits

    def _prompt_key(self, prompt: Encoded, keys: list[tuple]) -> PromptKey:
        ids = torch.tensor(prompt.input_ids, dtype=torch.long)
        slots = (ids == self.model.config.image_token_id).nonzero().flatten().tolist()
        counts = [v.num_tokens for v in prompt.visuals]
        if len(slots) != sum(counts):
            raise PromptError(f"the prompt has {len(slots)} image-token slots but the visuals give {sum(counts)} tokens")
        firsts = [sum(counts[:i]) for i in range(len(counts))]
        return PromptKey(ids, tuple((slots[f], k) for f, k in zip(firsts, keys)))

    def _reuse(self, prompt_keys: list[PromptKey], width: int, cache: Cache) -> int:
        """Load the cached keys and values of columns [0, start) of every (left-padded) row; return start."""
        if self.prefix_cache is None:
            return 0
        owner = fingerprint(self.model)
        hits = [self.prefix_cache.lookup(k, owner) for k in prompt_keys]
        offsets = [width - len(k.ids) for k in prompt_keys]
        start = min(off + n for off, (n, _) in zip(offsets, hits))
        if start <= 0:
            return 0
        rows = [(row, off, entry) for row, (off, (_, entry)) in enumerate(zip(offsets, hits)) if off < start]
        for index, layer in enumerate(cache.layers):
            layer.preload(len(prompt_keys), start, [(row, off, e.keys[index], e.values[index]) for row, off, e in rows])
        return start

    def _visual_tokens(self, prompts: Sequence[Encoded], visual_keys: list[list[tuple]], ids: torch.Tensor,
                       start: int) -> torch.Tensor | None:
        """The tokens of the image slots in columns >= start, row-major; None when there are none."""
        wanted: list[tuple[VisualInput, tuple, int]] = []  # (visual, key, leading tokens already cached)
        for row, (prompt, row_keys) in enumerate(zip(prompts, visual_keys)):
            skip = int((ids[row, :start] == self.model.config.image_token_id).sum()) if start else 0
            offset = 0
            for visual, key in zip(prompt.visuals, row_keys):
                if offset + visual.num_tokens > skip:
                    wanted.append((visual, key, max(skip - offset, 0)))
                offset += visual.num_tokens
        if not wanted:
            return None
        chosen, keys, trims = (list(column) for column in zip(*wanted))
        if self.vision_cache is not None:
            tokens = self.vision_cache.tokens(self.model, chosen, keys)
        else:
            tokens = self.model.encode_visuals(chosen)
        return torch.cat([t[trim:] for t, trim in zip(tokens, trims)])

    def _store(self, prompt_keys: list[PromptKey], width: int, cache: Cache) -> None:
        assert self.prefix_cache is not None
        for row, key in enumerate(prompt_keys):
            columns = slice(width - len(key.ids), width)
            self.prefix_cache.store(key, lambda row=row, columns=columns: (
                [layer.keys[row, :, columns].clone() for layer in cache.layers],
                [layer.values[row, :, columns].clone() for layer in cache.layers]))

    def generate(self, prompts: Sequence[Encoded], sampling: SamplingConfig) -> list[list[int]]:
        """All generated tokens per prompt, each ending with its stop token if one was produced."""
        out: list[list[int]] = [[] for _ in prompts]
        for step in self.stream(prompts, sampling):
            for row, token in enumerate(step):
                if token is not None:
                    out[row].append(token)
        return out

    @staticmethod
    def _generator(sampling: SamplingConfig, device: torch.device) -> torch.Generator | None:
        """A seeded generator for sampling; greedy decoding draws nothing, so it gets none."""
        seed = sampling.seed
        if seed is None or sampling.greedy:
            return None
        return torch.Generator(device=device).manual_seed(seed)

    @staticmethod
    def _pick(logits: torch.Tensor, sampling: SamplingConfig, generator: torch.Generator | None) -> torch.Tensor:
        if sampling.greedy:
            return logits.argmax(-1)
        probs = torch.softmax(logits.float() / sampling.temperature, dim=-1)
        if sampling.top_p < 1.0:
            sorted_probs, order = probs.sort(dim=-1, descending=True)
            keep = sorted_probs.cumsum(-1) - sorted_probs < sampling.top_p  # always keeps the top token
            sorted_probs = sorted_probs * keep
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
