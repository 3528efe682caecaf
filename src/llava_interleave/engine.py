"""Generation engine: prefill, then decode one token at a time with a KV cache. Knows nothing of text.

Several prompts run as one batch with left padding (positions count only real tokens). Greedy when
temperature is 0, else temperature + top-p sampling from a seeded generator. The vocabulary
projection in prefill is computed for the last position only, and the KV cache is preallocated for
prompt + answer so a decode step never copies it (see model/kv_cache.py).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from .data.batch import Encoded
from .errors import SamplingError
from .model.kv_cache import preallocated_cache
from .model.llava import LlavaInterleave

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
    def __init__(self, model: LlavaInterleave) -> None:
        self.model = model

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
        visuals = [v for p in prompts for v in p.visuals]
        logits = model(ids, visuals, mask if padded else None, positions, cache, logits_to_keep=1).logits[:, -1]
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
