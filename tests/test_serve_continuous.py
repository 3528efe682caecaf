"""The server's scheduling (issue 16): requests join a running batch between decode steps and leave when done;
the static mode (for benchmarks) keeps the old batch-at-a-time order; the KV budget (--kv-mb).

Orders are taken from the server (which job finished first), not from clocks, and a gate holds the engine
until the requests a test sends together have all arrived, so the tests mean the same on a fast machine and
on a loaded one.
"""

from __future__ import annotations

import json
import threading

import httpx
import pytest

from llava_interleave.api import load
from llava_interleave.engine import SamplingConfig
from llava_interleave.model.kv_cache import bytes_per_token
from llava_interleave.serve.app import create_app
from llava_interleave.serve.settings import ServeSettings

from .live_server import running, wait_until
from .test_serve_api import alone, said, user

LONG, SHORTS = "Describe the video.", ("red ball", "blue cat", "the mat")


@pytest.fixture(scope="module")
def pipe(original_checkpoint):
    return load(original_checkpoint)


@pytest.fixture(scope="module")
def answers(pipe) -> dict[str, str]:
    """Greedy answers alone: the long one (300 tokens) and the short ones (4)."""
    long = pipe.generate_samples([pipe.sample(user(LONG))], SamplingConfig(max_new_tokens=300))[0]
    assert len(long.token_ids) == 300, "the long answer must run to its budget"
    return {LONG: long.text, **{p: alone(pipe, user(p), 4) for p in SHORTS}}


@pytest.fixture(autouse=True)
def engine_settings(pipe):
    """A server configures the shared engine; give the next test (and `alone`) the engine as it was."""
    engine = pipe.engine
    kept = engine.max_rows, engine.kv_budget / 2**20, engine.chunk_tokens
    yield
    engine.configure(max_rows=kept[0], kv_mb=kept[1], chunk_tokens=kept[2])


class Streamed(threading.Thread):
    """A streamed chat request read in its own thread; `leave()` makes the client go at the next line."""

    def __init__(self, url: str, body: dict) -> None:
        super().__init__(daemon=True)
        self.url, self.body = url, {**body, "stream": True}
        self.lines: list[str] = []
        self.status = 0
        self._leave = threading.Event()

    def run(self) -> None:
        with httpx.stream("POST", self.url + "/v1/chat/completions", json=self.body, timeout=120) as response:
            self.status = response.status_code
            for line in response.iter_lines():
                if self._leave.is_set():
                    return
                self.lines.append(line)

    def leave(self) -> None:
        self._leave.set()
        self.join(60)

    @property
    def text(self) -> str:
        chunks = [json.loads(line[6:]) for line in self.lines if line.startswith("data: {")]
        return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


def pause_until_submitted(monkeypatch, engine, worker, count: int) -> None:
    """Hold the engine's next step until `count` more requests have reached the worker (once): requests sent
    together then reach the engine together, however slowly this machine handles them."""
    step, submit, passed = engine.step, worker.submit, threading.Event()
    submitted: list[object] = []

    def counted(job) -> None:
        submit(job)
        submitted.append(job)

    def held():
        if not passed.is_set():
            wait_until(lambda: len(submitted) >= count, f"{count} requests to arrive", 60)
            passed.set()
        return step()

    monkeypatch.setattr(worker, "submit", counted)
    monkeypatch.setattr(engine, "step", held)


def record_finishes(monkeypatch, worker) -> list[int]:
    """The max_tokens of each job, in the order the worker ends them."""
    order: list[int] = []
    answer = worker._answer

    def recording(row, reason):
        order.append(row.job.sampling.max_new_tokens)
        answer(row, reason)

    monkeypatch.setattr(worker, "_answer", recording)
    return order


def _long_then_shorts(pipe, monkeypatch, settings: ServeSettings) -> tuple[Streamed, dict[str, str], list[int], object]:
    """A 300-token answer streams; once it runs, three 4-token requests are sent. Returns the long stream,
    the short answers, the order jobs finished in (by max_tokens), and the worker."""
    app = create_app(pipe, settings)
    worker = app.state.server.worker
    finished = record_finishes(monkeypatch, worker)
    shorts: dict[str, str] = {}
    with running(app) as url:
        long = Streamed(url, {"messages": said(LONG), "max_tokens": 300})
        long.start()
        wait_until(lambda: worker.running == 1, "the long answer to start")
        pause_until_submitted(monkeypatch, pipe.engine, worker, len(SHORTS))

        def ask(prompt: str) -> None:
            response = httpx.post(url + "/v1/chat/completions", json={"messages": said(prompt), "max_tokens": 4},
                                  timeout=120)
            shorts[prompt] = response.json()["choices"][0]["message"]["content"]

        threads = [threading.Thread(target=ask, args=(p,)) for p in SHORTS]
        for thread in threads:
            thread.start()
        for thread in threads + [long]:
            thread.join(120)
    return long, shorts, finished, worker


def test_short_requests_join_a_long_answer_and_finish_before_it(pipe, answers, monkeypatch):
    long, shorts, finished, worker = _long_then_shorts(pipe, monkeypatch, ServeSettings("tiny", max_batch=4))
    assert finished == [4, 4, 4, 300]  # the long stream was still open when all three short answers were done
    assert long.status == 200 and long.text == answers[LONG] and [x for x in long.lines if x][-1] == "data: [DONE]"
    assert shorts == {p: answers[p] for p in SHORTS}
    assert max(worker.rows_per_step) == 4  # the three joined the long one's steps


def test_static_batching_makes_short_requests_wait_and_still_batches(pipe, answers, monkeypatch):
    settings = ServeSettings("tiny", max_batch=4, batching="static")
    long, shorts, finished, worker = _long_then_shorts(pipe, monkeypatch, settings)
    assert finished[0] == 300 and sorted(finished[1:]) == [4, 4, 4]  # the short ones waited for the long one
    assert long.text == answers[LONG] and shorts == {p: answers[p] for p in SHORTS}
    assert worker.rows_per_step[3] >= 1 and max(worker.rows_per_step) == 3  # then ran as one batch


def test_kv_budget_refuses_what_never_fits_and_runs_the_rest_in_turn(pipe, monkeypatch):
    per_token = bytes_per_token(pipe.model.config.text, pipe.model.dtype)
    expected = {p: alone(pipe, user(p), 20) for p in SHORTS[:2]}
    prompt = len(pipe.prepare(pipe.sample(user(SHORTS[0]))))
    with running(create_app(pipe, ServeSettings("tiny", kv_mb=20 * per_token / 2**20))) as url:
        response = httpx.post(url + "/v1/chat/completions", json={"messages": said(SHORTS[0]), "max_tokens": 4})
        error = response.json()["error"]
        assert response.status_code == 400 and error["code"] == "context_length_exceeded", response.text
        assert "budget holds (20 tokens, --kv-mb" in error["message"]

    budget = 80  # tokens: one request (prompt + 20) fits, two do not
    app = create_app(pipe, ServeSettings("tiny", max_batch=4, kv_mb=budget * per_token / 2**20))
    worker, engine = app.state.server.worker, pipe.engine
    seen: list[tuple[int, int]] = []  # (running, waiting) in the engine before each step
    step = engine.step
    monkeypatch.setattr(engine, "step", lambda: seen.append((len(engine.running), len(engine.waiting))) or step())
    results: dict[str, str] = {}
    with running(app) as url:
        pause_until_submitted(monkeypatch, engine, worker, 2)  # both arrive before the first step

        def ask(prompt: str) -> None:
            body = {"messages": said(prompt), "max_tokens": 20}
            results[prompt] = httpx.post(url + "/v1/chat/completions", json=body, timeout=120).json()["choices"][0]["message"]["content"]

        threads = [threading.Thread(target=ask, args=(p,)) for p in expected]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        unset = httpx.post(url + "/v1/chat/completions", json={"messages": said(SHORTS[0])}, timeout=120).json()
    assert results == expected
    assert (1, 1) in seen and max(worker.rows_per_step) == 1  # one waited for KV memory while the other ran
    assert unset["usage"]["completion_tokens"] == budget - prompt  # no max_tokens: what the budget leaves
