"""Generation engine: continuous batching over per-request KV caches. Knows nothing of text.

Requests are `submit`ted and advanced together by `step()`. Each step admits waiting requests while the
row limit and the KV budget allow, then runs one packed forward pass (model/packed.py) over the next token
of every decoding request and the next prompt chunk (at most `chunk_tokens`) of requests still being
prefilled, and samples each row by its own settings (temperature, top-p, its own seeded generator, stop
ids, token budget). A request leaves the step it stops, and the next one joins the step after: a short
question asked while a long answer streams is answered at once, and a long prompt, cut into chunks, only
slows running streams by one chunk per step instead of stopping them.

KV memory: a request reserves its prompt + answer tokens when admitted (exactly; its buffer never grows or
moves). With a budget (`kv_mb`) a request waits until its reservation fits; one that could never fit is
refused by `submit` (KVBudgetError), so the batch never runs out of memory mid-answer.

With `cache_mb` > 0 two caches (model/caches.py) serve every request: visual tokens by content, and the
keys and values of earlier prompts. A prompt sharing a prefix with an earlier one (the next turn of a chat,
another question about the same images) prefills only the rest.

Batching does not change answers: a prompt is cut into the same chunks alone or in a batch, and attention
runs over each row's own keys only. The matrix products of a packed step still see other rows, so their
last bits may round differently; the greedy tokens are the same alone and batched (tested).
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

from .data.batch import Encoded
from .errors import KVBudgetError, PromptError, SamplingError
from .model.caches import PrefixCache, PromptKey, VisionCache, fingerprint, visual_key
from .model.kv_cache import RowCache, bytes_per_token
from .model.llava import LlavaInterleave
from .model.merge import merge_visual_tokens
from .model.packed import Span, packed_forward

MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed takes a 64-bit integer
log = logging.getLogger("llava_interleave.engine")


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


@dataclass(eq=False)
class Request:
    """One prompt in the engine. `tokens` grow as it decodes; `finish` is set when it leaves:
    "stop" (a stop id, kept as the last token), "length" (its budget), "cancelled", or "error" (`error`)."""

    prompt: Encoded
    sampling: SamplingConfig
    tokens: list[int] = field(default_factory=list)
    finish: str | None = None
    error: BaseException | None = None
    reserved: int = 0  # bytes of KV memory held
    cache: RowCache | None = field(default=None, repr=False)
    pending: torch.Tensor | None = field(default=None, repr=False)  # (n, H) prompt embeddings not yet prefilled
    key: PromptKey | None = field(default=None, repr=False)
    generator: torch.Generator | None = field(default=None, repr=False)


class Engine:
    """`max_rows` requests decode at once; `kv_mb` (0 = unbounded) bounds their keys and values together;
    a step prefills at most `chunk_tokens` prompt tokens; `cache_mb` bounds the vision and prefix caches."""

    def __init__(self, model: LlavaInterleave, cache_mb: float = 0, *, max_rows: int = 16, kv_mb: float = 0,
                 chunk_tokens: int = 2048) -> None:
        self.model = model
        self.vision_cache: VisionCache | None = None
        self.prefix_cache: PrefixCache | None = None
        self.set_cache(cache_mb)
        self.max_rows, self.kv_budget, self.chunk_tokens = 1, 0, 1
        self.configure(max_rows=max_rows, kv_mb=kv_mb, chunk_tokens=chunk_tokens)
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.reserved = 0

    def set_cache(self, cache_mb: float) -> None:
        """Bound the vision and prefix caches by `cache_mb` MiB together (a quarter for visual tokens); 0 = off."""
        total = int(cache_mb * 2**20)
        self.vision_cache = VisionCache(total // 4) if total > 0 else None
        self.prefix_cache = PrefixCache(total - total // 4) if total > 0 else None

    def configure(self, *, max_rows: int | None = None, kv_mb: float | None = None,
                  chunk_tokens: int | None = None) -> None:
        """Scheduling limits (the server sets them from its options)."""
        for name, value in (("max_rows", max_rows), ("chunk_tokens", chunk_tokens)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise SamplingError(f"{name} must be a whole number of at least 1, got {value!r}")
        if kv_mb is not None and not (isinstance(kv_mb, (int, float)) and math.isfinite(kv_mb) and kv_mb >= 0):
            raise SamplingError(f"the KV budget must be a number of MiB >= 0 (0 = unbounded), got {kv_mb!r}")
        self.max_rows = max_rows or self.max_rows
        self.chunk_tokens = chunk_tokens or self.chunk_tokens
        self.kv_budget = int(kv_mb * 2**20) if kv_mb is not None else self.kv_budget

    # ------------------------------------------------------------------ requests
    def submit(self, prompt: Encoded, sampling: SamplingConfig) -> Request:
        """Queue a prompt; it joins the batch at a coming step.

        Raises:
            KVBudgetError: its keys and values could never fit in the budget, even alone."""
        if not len(prompt):
            raise PromptError("the prompt is empty")
        request = Request(prompt, sampling)
        request.reserved = self._need(request)
        if self.kv_budget and request.reserved > self.kv_budget:
            raise KVBudgetError(f"the prompt ({len(prompt)} tokens) with {sampling.max_new_tokens} answer tokens needs "
                                f"{request.reserved / 2**20:.1f} MiB of keys and values, over the engine's budget of "
                                f"{self.kv_budget / 2**20:.1f} MiB")
        self.waiting.append(request)
        return request

    def cancel(self, request: Request) -> None:
        """Take a request out (its memory is free for the next step); a finished one is left as it is."""
        if request.finish is None:
            request.finish = "cancelled"
        self._release(request)

    @property
    def idle(self) -> bool:
        return not self.waiting and not self.running

    def stats(self) -> dict[str, object]:
        return {"running": len(self.running), "waiting": len(self.waiting), "kv_reserved_mb": self.reserved / 2**20}

    def _need(self, request: Request) -> int:
        tokens = len(request.prompt) + request.sampling.max_new_tokens
        return tokens * bytes_per_token(self.model.config.text, self.model.dtype)

    def _release(self, request: Request) -> None:
        if request in self.running:
            self.running.remove(request)
            self.reserved -= request.reserved
        elif request in self.waiting:
            self.waiting.remove(request)
        request.cache = request.pending = None

    def _fail(self, request: Request, error: BaseException) -> None:
        request.finish, request.error = "error", error
        self._release(request)

    # ------------------------------------------------------------------ stepping
    @torch.inference_mode()
    def step(self) -> list[tuple[Request, int]]:
        """Admit what fits, run one packed forward pass, sample: the (request, new token) pairs of this step.
        A pass that fails runs again row by row, so a row that breaks the model fails alone ("error")."""
        self._admit()
        rows = self._plan()
        if not rows:
            return []
        try:
            return self._forward(rows)
        except Exception as err:  # a fault of the model or of one row: find the row, keep the others going
            if len(rows) == 1:
                log.exception("generation failed for one request")
                self._fail(rows[0][0], err)
                return []
        produced: list[tuple[Request, int]] = []
        for row in rows:
            try:
                produced += self._forward([row])
            except Exception as err:
                log.exception("generation failed for one request of a batch of %d", len(rows))
                self._fail(row[0], err)
        return produced

    def _admit(self) -> None:
        """Start waiting requests in order while a row is free and their KV reservation fits."""
        while self.waiting and len(self.running) < self.max_rows:
            request = self.waiting[0]
            if self.kv_budget and self.reserved + request.reserved > self.kv_budget:
                return
            self.waiting.popleft()
            try:
                self._start(request)
            except Exception as err:  # e.g. a visual that does not fit its slots: this request only
                self._fail(request, err)
                continue
            self.running.append(request)
            self.reserved += request.reserved

    def _plan(self) -> list[tuple[Request, int]]:
        """(request, new positions) of this step: every decoding row's one token, then prompt chunks in
        arrival order up to `chunk_tokens` (each prompt's chunks are cut the same way however it is batched)."""
        rows = [(r, 1) for r in self.running if r.pending is None]
        budget = self.chunk_tokens
        for request in self.running:
            if request.pending is None:
                continue
            size = min(len(request.pending), self.chunk_tokens)
            if size > budget and budget < self.chunk_tokens:
                break
            rows.append((request, size))
            budget -= size
            if budget <= 0:
                break
        return rows

    def _forward(self, rows: list[tuple[Request, int]]) -> list[tuple[Request, int]]:
        model = self.model
        decoding = [r for r, _ in rows if r.pending is None]
        parts = []
        if decoding:
            last = torch.tensor([r.tokens[-1] for r in decoding], device=model.device)
            parts.append(model.language_model.embed_tokens(last))
        parts += [r.pending[:n] for r, n in rows if r.pending is not None]
        spans, offset = [], 0
        for request, size in rows:
            assert request.cache is not None
            spans.append(Span(request.cache, offset, size))
            offset += size
        hidden = packed_forward(model.language_model, torch.cat(parts), spans)
        ends, sampled = [], []
        for (request, size), span in zip(rows, spans):
            if request.pending is not None:
                request.pending = request.pending[size:] if size < len(request.pending) else None
                if request.pending is not None:
                    continue
                self._store(request)
            ends.append(span.offset + size - 1)
            sampled.append(request)
        if not sampled:
            return []
        logits = model.lm_head(hidden[ends])
        tokens = self._pick(logits, sampled).tolist()  # the step's one device-to-host sync
        for request, token in zip(sampled, tokens):
            self._append(request, token)
        return list(zip(sampled, tokens))

    def _append(self, request: Request, token: int) -> None:
        request.tokens.append(token)
        if token in request.sampling.stop_token_ids:
            request.finish = "stop"
        elif len(request.tokens) >= request.sampling.max_new_tokens:
            request.finish = "length"
        if request.finish is not None:
            self._release(request)

    # ------------------------------------------------------------------ a request's start
    def _start(self, request: Request) -> None:
        """Reserve the row's cache, reuse a cached prefix, and embed the rest of the prompt (visuals merged)."""
        model, prompt = self.model, request.prompt
        cache = RowCache(model.config.text, len(prompt) + request.sampling.max_new_tokens, model.dtype, model.device)
        ids = torch.tensor(prompt.input_ids, dtype=torch.long)
        keys = [visual_key(v) for v in prompt.visuals] if self.vision_cache or self.prefix_cache else []
        start = 0
        if self.prefix_cache is not None:
            request.key = self._prompt_key(prompt, keys)
            start, entry = self.prefix_cache.lookup(request.key, fingerprint(model))
            if entry is not None:
                cache.preload(entry.keys, entry.values, start)
        request.pending = self._embed(prompt, ids, start, keys)
        request.cache = cache
        request.generator = self._generator(request.sampling, model.device)

    def _embed(self, prompt: Encoded, ids: torch.Tensor, start: int, keys: list[tuple]) -> torch.Tensor:
        """(L - start, H) embeddings of the prompt from `start`, with the tokens of its visuals in their slots."""
        model = self.model
        image = model.config.image_token_id
        part = ids[start:].to(model.device)
        slots = part == image
        embeds = model.language_model.embed_tokens(part.masked_fill(slots, 0))
        skip = int((ids[:start] == image).sum())  # visual tokens already in the cached prefix
        wanted, trims, offset = [], [], 0
        for index, visual in enumerate(prompt.visuals):
            if offset + visual.num_tokens > skip:
                wanted.append(index)
                trims.append(max(skip - offset, 0))
            offset += visual.num_tokens
        if not wanted and not slots.any():
            return embeds
        visuals = [prompt.visuals[i] for i in wanted]
        if self.vision_cache is not None:
            tokens = self.vision_cache.tokens(model, visuals, [keys[i] for i in wanted])
        else:
            tokens = model.encode_visuals(visuals) if visuals else []
        merged = torch.cat([t[trim:] for t, trim in zip(tokens, trims)]) if tokens else embeds.new_zeros(0, embeds.shape[-1])
        return merge_visual_tokens(embeds[None], slots[None], merged)[0]

    def _prompt_key(self, prompt: Encoded, keys: list[tuple]) -> PromptKey:
        ids = torch.tensor(prompt.input_ids, dtype=torch.long)
        slots = (ids == self.model.config.image_token_id).nonzero().flatten().tolist()
        counts = [v.num_tokens for v in prompt.visuals]
        if len(slots) != sum(counts):
            raise PromptError(f"the prompt has {len(slots)} image-token slots but the visuals give {sum(counts)} tokens")
        firsts = [sum(counts[:i]) for i in range(len(counts))]
        return PromptKey(ids, tuple((slots[f], k) for f, k in zip(firsts, keys)))

    def _store(self, request: Request) -> None:
        """Keep a fully prefilled prompt's keys and values for later prompts that share a prefix with it."""
        if self.prefix_cache is not None and request.key is not None and request.cache is not None:
            cache, length = request.cache, len(request.prompt)
            self.prefix_cache.store(request.key, lambda: cache.prefix(length))

    # ------------------------------------------------------------------ whole prompts
    def stream(self, prompts: Sequence[Encoded], sampling: SamplingConfig | Sequence[SamplingConfig]
               ) -> Iterator[list[int | None]]:
        """Run prompts to their end; yield, per step that produced any of their tokens, each prompt's new token
        (None: none this step). Raises the first error of one of them (the others are then cancelled)."""
        settings = [sampling] * len(prompts) if isinstance(sampling, SamplingConfig) else list(sampling)
        requests = [self.submit(p, s) for p, s in zip(prompts, settings)]
        try:
            while any(r.finish is None for r in requests):
                produced = dict(self.step())
                for request in requests:
                    if request.error is not None:
                        raise request.error
                if any(r in produced for r in requests):
                    yield [produced.get(r) for r in requests]
        finally:
            for request in requests:
                self.cancel(request)

    def generate(self, prompts: Sequence[Encoded], sampling: SamplingConfig | Sequence[SamplingConfig]
                 ) -> list[list[int]]:
        """All generated tokens per prompt, each ending with its stop token if one was produced."""
        out: list[list[int]] = [[] for _ in prompts]
        for step in self.stream(prompts, sampling):
            for row, token in enumerate(step):
                if token is not None:
                    out[row].append(token)
        return out

    # ------------------------------------------------------------------ sampling
    @staticmethod
    def _generator(sampling: SamplingConfig, device: torch.device) -> torch.Generator | None:
        """A seeded generator per request; greedy decoding draws nothing, so it gets none."""
        if sampling.seed is None or sampling.greedy:
            return None
        return torch.Generator(device=device).manual_seed(sampling.seed)

    @staticmethod
    def _pick(logits: torch.Tensor, requests: Sequence[Request]) -> torch.Tensor:
        """(R, V) logits -> (R,) tokens, each row by its own request's settings."""
        tokens = logits.argmax(-1)
        for row, request in enumerate(requests):
            sampling = request.sampling
            if sampling.greedy:
                continue
            probs = torch.softmax(logits[row].float() / sampling.temperature, dim=-1)
            if sampling.top_p < 1.0:
                sorted_probs, order = probs.sort(descending=True)
                keep = sorted_probs.cumsum(-1) - sorted_probs < sampling.top_p  # always keeps the top token
                probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs * keep)
            tokens[row] = torch.multinomial(probs, 1, generator=request.generator)[0]
        return tokens
