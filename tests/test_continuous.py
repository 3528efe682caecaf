"""Continuous batching: requests that join and leave a running batch get their alone answers; long prompts
are prefilled in chunks while other rows keep decoding; each row keeps its own sampling; the KV budget makes
requests wait or refuses them; a row that breaks the model fails alone."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

import llava_interleave
import llava_interleave.engine as engine_module
from llava_interleave.engine import Engine, SamplingConfig
from llava_interleave.errors import KVBudgetError, PromptError
from llava_interleave.model.kv_cache import bytes_per_token

QUESTIONS = [(1, "Hi"), (3, "Which one is the largest of all of them, and why?"), (2, "Why?"), (0, "Say a word.")]


@pytest.fixture(scope="module")
def pipe(original_checkpoint):
    return llava_interleave.load(original_checkpoint, device="cpu", cache_mb=0)


@pytest.fixture(scope="module")
def prompts(pipe, image_files):
    return [pipe.processor.encode(pipe.sample([{"role": "user", "content": [
        *({"type": "image", "image": p} for p in image_files[:n]), text]}])) for n, text in QUESTIONS]


def greedy(tokens: int) -> SamplingConfig:
    return SamplingConfig(max_new_tokens=tokens)  # no stop ids: every row runs its whole budget


def alone(model, prompt, sampling, chunk_tokens=7) -> list[int]:
    return Engine(model, chunk_tokens=chunk_tokens).generate([prompt], sampling)[0]


def run(engine: Engine, joins: dict[int, list[tuple]]) -> tuple[list, int]:
    """Submit (prompt, sampling) pairs at the given step numbers, step until all are done; the requests in
    submission order and the most rows any step ran."""
    requests, step, widest = [], 0, 0
    while step <= max(joins) or not engine.idle:
        requests += [engine.submit(p, s) for p, s in joins.get(step, [])]
        unfinished = [r for r in requests if r.finish is None]
        engine.step()
        widest = max(widest, len(engine.running) + sum(r.finish is not None for r in unfinished))
        step += 1
    return requests, widest


def test_chunked_prefill_matches_full_recompute(pipe, prompts):
    prompt = prompts[1]
    tokens = alone(pipe.model, prompt, greedy(6), chunk_tokens=5)
    assert len(prompt) > 20  # several chunks
    ids = list(prompt.input_ids)
    for _ in range(6):
        with torch.no_grad():
            ids.append(int(pipe.model(torch.tensor([ids]), prompt.visuals).logits[0, -1].argmax()))
    assert tokens == ids[len(prompt):]


def test_requests_joining_a_running_batch_get_their_alone_answers(pipe, prompts):
    budgets = [12, 3, 8, 5]
    expected = [alone(pipe.model, p, greedy(b)) for p, b in zip(prompts, budgets)]
    engine = Engine(pipe.model, chunk_tokens=7)  # prompts longer than 7 tokens are prefilled over several steps
    pairs = [(p, greedy(b)) for p, b in zip(prompts, budgets)]
    requests, widest = run(engine, {0: pairs[:1], 2: pairs[1:2], 3: pairs[2:]})
    assert [r.tokens for r in requests] == expected
    assert [r.finish for r in requests] == ["length"] * 4
    assert widest >= 3 and engine.reserved == 0


def test_a_long_prompt_is_prefilled_in_chunks_while_a_running_row_keeps_decoding(pipe, prompts, monkeypatch):
    engine = Engine(pipe.model, chunk_tokens=8)
    running = engine.submit(prompts[3], greedy(60))
    while not running.tokens:
        engine.step()
    encoded = []  # the images of the joining prompt are encoded as their slots come up, not all at once
    real = pipe.model.encode_visuals
    monkeypatch.setattr(pipe.model, "encode_visuals", lambda visuals: encoded.append(len(visuals)) or real(visuals))
    joining = engine.submit(prompts[1], greedy(4))
    steps = 0
    while not joining.tokens:
        before = len(running.tokens)
        engine.step()
        assert len(running.tokens) == before + 1  # a token every step, prefill or not
        steps += 1
    assert steps == -(-len(prompts[1]) // 8)
    assert sum(encoded) == len(prompts[1].visuals) == 3 and len(encoded) > 1
    engine.cancel(running)
    while not engine.idle:
        engine.step()
    assert joining.tokens == alone(pipe.model, prompts[1], greedy(4), chunk_tokens=8)


def test_each_row_keeps_its_own_sampling(pipe, prompts):
    settings = [greedy(6), SamplingConfig(max_new_tokens=6, temperature=1.0, seed=5),
                SamplingConfig(max_new_tokens=6, temperature=1.3, top_p=0.9, seed=6), greedy(2)]
    expected = [alone(pipe.model, prompts[0], s) for s in settings]
    requests, widest = run(Engine(pipe.model, chunk_tokens=7), {0: [(prompts[0], s) for s in settings]})
    assert [r.tokens for r in requests] == expected and widest == 4
    assert expected[1] != expected[2]  # the seeds draw differently: the rows did not share a generator


def test_a_stop_id_ends_only_its_row(pipe, prompts):
    first = alone(pipe.model, prompts[0], greedy(1))[0]
    stopping = SamplingConfig(max_new_tokens=9, stop_token_ids=(first,))
    requests, _ = run(Engine(pipe.model, chunk_tokens=7), {0: [(prompts[0], stopping), (prompts[2], greedy(9))]})
    assert requests[0].tokens == [first] and requests[0].finish == "stop"
    assert requests[1].tokens == alone(pipe.model, prompts[2], greedy(9))


def test_the_kv_budget_makes_requests_wait_or_refuses_them(pipe, prompts):
    per_token = bytes_per_token(pipe.model.config.text, pipe.model.dtype)
    sampling = greedy(5)
    need = max((len(p) + 5) * per_token for p in prompts[:2])
    engine = Engine(pipe.model, chunk_tokens=7, kv_mb=1.5 * need / 2**20)  # room for one request at a time
    with pytest.raises(KVBudgetError, match="MiB of keys and values"):
        engine.submit(prompts[1], greedy(100_000))
    requests, widest = run(engine, {0: [(prompts[0], sampling), (prompts[1], sampling)]})
    assert widest == 1  # the second waited for the first to leave
    assert [r.tokens for r in requests] == [alone(pipe.model, p, sampling) for p in prompts[:2]]
    assert engine.reserved == 0


def test_cancel_frees_the_row_and_the_others_go_on(pipe, prompts):
    engine = Engine(pipe.model, chunk_tokens=7)
    doomed, kept = engine.submit(prompts[1], greedy(50)), engine.submit(prompts[2], greedy(6))
    engine.step()
    engine.cancel(doomed)
    assert doomed.finish == "cancelled" and doomed not in engine.running
    while not engine.idle:
        engine.step()
    assert kept.tokens == alone(pipe.model, prompts[2], greedy(6)) and engine.reserved == 0


def test_a_row_that_breaks_the_model_fails_alone(pipe, prompts, monkeypatch):
    engine = Engine(pipe.model, chunk_tokens=7)
    original = engine_module.packed_forward
    poisoned: list = []

    def packed_forward(lm, embeds, spans):
        if any(span.cache is poisoned[0].cache for span in spans):
            raise RuntimeError("the model broke on this row")
        return original(lm, embeds, spans)

    monkeypatch.setattr(engine_module, "packed_forward", packed_forward)
    poisoned.append(engine.submit(prompts[1], greedy(4)))
    innocent = [engine.submit(p, greedy(4)) for p in (prompts[0], prompts[2])]
    while not engine.idle:
        engine.step()
    assert poisoned[0].finish == "error" and "broke" in str(poisoned[0].error)
    monkeypatch.setattr(engine_module, "packed_forward", original)
    assert [r.tokens for r in innocent] == [alone(pipe.model, p, greedy(4)) for p in (prompts[0], prompts[2])]


def test_stream_raises_a_bad_prompt_and_leaves_the_engine_clean(pipe, prompts):
    engine = Engine(pipe.model, chunk_tokens=7)
    broken = replace(prompts[1], visuals=prompts[1].visuals[:1])  # slots left without a visual
    with pytest.raises(PromptError, match="slots"):
        engine.generate([prompts[0], broken], greedy(3))
    assert engine.idle and engine.reserved == 0
    assert engine.generate([prompts[0]], greedy(3)) == [alone(pipe.model, prompts[0], greedy(3))]


@pytest.mark.parametrize("settings", [{"max_rows": 0}, {"chunk_tokens": -1}, {"kv_mb": float("nan")}, {"max_rows": True}])
def test_engine_limits_are_checked(pipe, settings):
    with pytest.raises(llava_interleave.errors.SamplingError):
        Engine(pipe.model, **settings)


@pytest.mark.parametrize("heads, kv_heads", [(4, 4), (8, 2)])
def test_a_chunk_after_a_past_attends_as_with_a_causal_mask(heads, kv_heads):
    """The split attention (past, then the chunk's own causal block, merged by log-sum-exp) equals masked SDPA."""
    from llava_interleave.model.packed import _attend, _mask

    torch.manual_seed(0)
    q = torch.randn(1, heads, 5, 16)
    keys, values = torch.randn(1, kv_heads, 12, 16), torch.randn(1, kv_heads, 12, 16)
    causal = torch.ones(5, 12, dtype=torch.bool).tril(7)
    expected = torch.nn.functional.scaled_dot_product_attention(q, keys, values, attn_mask=causal, scale=0.25,
                                                                enable_gqa=heads != kv_heads)
    got = _attend(q, keys, values, 7, _mask(5, 7, q), 0.25)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(_attend(q, keys, values, 6, _mask(5, 6, q), 0.25), expected, atol=1e-3)  # the past matters


def test_an_empty_prompt_is_refused_at_submit(pipe, prompts):
    with pytest.raises(PromptError, match="empty"):
        Engine(pipe.model).submit(replace(prompts[3], input_ids=[], labels=[]), greedy(1))
