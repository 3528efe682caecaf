"""The OpenAI-compatible server on a tiny random model, through the official `openai` client and raw HTTP.

Answers are compared with the same pipeline called directly (greedy), so a mixed-up, truncated or
re-ordered answer fails; bad requests must get their 4xx and leave the server answering.
"""

from __future__ import annotations

import base64
import io
import json
import struct
import threading
import zlib

import httpx
import openai
import pytest
import torch
from PIL import Image

from llava_interleave.api import load
from llava_interleave.data.conversation import Media
from llava_interleave.data.text_stream import TextStream
from llava_interleave.engine import SamplingConfig
from llava_interleave.errors import InterleaveError
from llava_interleave.serve.app import create_app
from llava_interleave.serve.settings import Limits, ServeSettings

from .conftest import random_image, write_clip
from .live_server import running, wait_until

LIMITS = Limits(max_body_bytes=1_000_000, max_images=4, max_frames=8, max_image_pixels=200 * 200)


def data_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def image_part(image: Image.Image) -> dict:
    return {"type": "image_url", "image_url": {"url": data_url(image)}}


def user(*content) -> list[dict]:
    """One user message; content parts in the OpenAI format, or strings/PIL/Media for the pipeline."""
    return [{"role": "user", "content": list(content)}]


def said(text: str) -> list[dict]:
    """One user message whose content is a plain string."""
    return [{"role": "user", "content": text}]


def alone(pipe, messages, max_tokens: int) -> str:
    """The greedy answer of the pipeline called directly, one request at a time."""
    return pipe.generate_samples([pipe.sample(messages)], SamplingConfig(max_new_tokens=max_tokens))[0].text


@pytest.fixture(scope="module")
def pipe(original_checkpoint):
    return load(original_checkpoint)


@pytest.fixture(scope="module")
def served(pipe):
    app = create_app(pipe, ServeSettings("tiny", max_batch=4, limits=LIMITS))
    with running(app) as url:
        yield url, app.state.server.worker


@pytest.fixture(scope="module")
def client(served) -> openai.OpenAI:
    return openai.OpenAI(base_url=served[0] + "/v1", api_key="unused", max_retries=0)


def ask(client: openai.OpenAI, messages: list[dict], max_tokens: int = 8, **kwargs) -> openai.types.chat.ChatCompletion:
    return client.chat.completions.create(model="tiny", messages=messages, max_tokens=max_tokens, **kwargs)


def test_plain_request_models_and_health(client, served, pipe):
    answer = ask(client, said("Describe the video."), max_tokens=12)
    assert answer.choices[0].message.content == alone(pipe, user("Describe the video."), 12)
    assert answer.choices[0].finish_reason in ("stop", "length")
    prompt = len(pipe.processor.encode(pipe.sample(user("Describe the video."))))
    assert answer.usage.prompt_tokens == prompt and 0 < answer.usage.completion_tokens <= 12
    assert [m.id for m in client.models.list().data] == ["tiny"]
    health = httpx.get(served[0] + "/health").json()
    assert health["status"] == "ok" and health["served"]


def test_streaming_matches_the_plain_answer(client, pipe):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is in the image?"}]
    chunks = list(ask(client, messages, max_tokens=16, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == alone(pipe, messages, 16) and text
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] in (["stop"], ["length"])
    assert chunks[-1].usage.completion_tokens <= 16 and not chunks[-1].choices


def test_multi_image_and_slots(client, pipe):
    left, right = random_image(1), random_image(2, (50, 20))
    content = [{"type": "text", "text": "What differs between <image> and <image>?"}, image_part(left), image_part(right)]
    answer = ask(client, [{"role": "user", "content": content}], max_tokens=10).choices[0].message.content
    assert answer == alone(pipe, user("What differs between <image> and <image>?", left, right), 10)
    swapped = [content[0], image_part(right), image_part(left)]
    answer = ask(client, [{"role": "user", "content": swapped}], max_tokens=10).choices[0].message.content
    assert answer == alone(pipe, user("What differs between <image> and <image>?", right, left), 10)
    # the order reaches the model (a tiny random model may still answer both the same way)
    logits = []
    for order in ((left, right), (right, left)):
        encoded = pipe.prepare(pipe.sample(user("What differs between <image> and <image>?", *order)))
        with torch.no_grad():
            logits.append(pipe.model(torch.tensor([encoded.input_ids]), encoded.visuals).logits[0, -1])
    assert not torch.allclose(logits[0], logits[1])


def test_video_as_frames_and_as_a_file(client, pipe, tmp_path):
    frames = [random_image(10 + i, (32, 24)) for i in range(4)]
    part = {"type": "video", "video": [data_url(f) for f in frames]}
    answer = ask(client, user(part, {"type": "text", "text": "What moves?"}), max_tokens=10).choices[0].message.content
    assert answer == alone(pipe, user(Media(kind="video", source=tuple(frames)), "What moves?"), 10)

    clip = write_clip(tmp_path / "clip.mp4", frames=12)
    url = "data:video/mp4;base64," + base64.b64encode(clip.read_bytes()).decode()
    part = {"type": "video_url", "video_url": {"url": url, "frames": 4}}
    answer = ask(client, user(part, {"type": "text", "text": "What moves?"}), max_tokens=10).choices[0].message.content
    assert answer == alone(pipe, user(Media(kind="video", source=clip, frames=4), "What moves?"), 10)


def test_stop_strings_cut_the_answer(client, pipe):
    full = alone(pipe, user("the cat sat on the mat."), 24)
    stop = full[6:9]
    expected = full[: full.find(stop)]
    answer = ask(client, user({"type": "text", "text": "the cat sat on the mat."}), max_tokens=24, stop=[stop, "\x00never"])
    assert answer.choices[0].message.content == expected and answer.choices[0].finish_reason == "stop"
    streamed = ask(client, user({"type": "text", "text": "the cat sat on the mat."}), max_tokens=24, stop=stop, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == expected


def test_text_stream_holds_back_partial_characters_and_stop_prefixes():
    chars = {0: "\ufffd"}  # an id that decodes to half a character until the next one completes it
    stream = TextStream(lambda ids: "".join(chars.get(i, chr(i)) for i in ids).replace("\ufffd" + "!", "é"), ["END"])
    pieces = [stream.push(ord(c)) for c in "abEN"] + [stream.push(0), stream.push(ord("!"))]
    assert pieces == ["a", "b", "", "", "", "ENé"] and not stream.stopped
    assert [stream.push(ord(c)) for c in "xEND"] == ["x", "", "", ""] and stream.stopped
    assert stream.text == "abENéx" and stream.flush() == ""
    tail = TextStream(lambda ids: "".join(map(chr, ids)), ["END"])
    assert [tail.push(ord(c)) for c in "aEN"] == ["a", "", ""] and tail.flush() == "EN"


def test_concurrent_requests_are_batched_and_not_mixed_up(client, served, pipe):
    prompts = [f"{word} How many views show a chair?" for word in ("cat", "mat", "red", "blue", "ball", "left", "the", "3")]
    expected = [alone(pipe, user(p), 6 + i) for i, p in enumerate(prompts)]
    assert len(set(expected)) > 4, "the prompts should give different answers"
    worker = served[1]
    before = sum(n for rows, n in worker.rows_per_step.items() if rows > 1)
    blocker = ask(client, said("Describe the video."), max_tokens=1000, stream=True)
    next(iter(blocker))  # a long answer is running: the eight join its steps, three at a time
    answers: list[str | None] = [None] * len(prompts)

    def one(i: int) -> None:
        answers[i] = ask(client, said(prompts[i]), max_tokens=6 + i).choices[0].message.content

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert answers == expected
    assert sum(n for rows, n in worker.rows_per_step.items() if rows > 1) > before, worker.rows_per_step
    assert max(worker.rows_per_step) <= 4
    blocker.close()
    wait_until(lambda: worker.running == 0, "the long answer to stop after its client left")


def test_disconnect_cancels_the_generation(client, served):
    worker = served[1]
    cancelled = worker.served["cancelled"]
    stream = ask(client, said("Describe the video."), max_tokens=4000, stream=True)
    next(iter(stream))
    stream.close()
    wait_until(lambda: worker.served["cancelled"] != cancelled, "the generation to stop after the client left", 10)
    assert worker.running == 0


def _bomb_png() -> bytes:
    """A valid 1x1 PNG whose header claims 100000 x 100000 pixels."""
    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    struct.pack_into(">II", data, 16, 100_000, 100_000)
    struct.pack_into(">I", data, 29, zlib.crc32(bytes(data[12:29])))
    return bytes(data)


BAD_REQUESTS = [
    (b"{not json", 400, "invalid_json"),
    (b"[1, 2]", 400, "invalid_request"),
    ({"messages": "hello"}, 400, "invalid_request"),
    ({"messages": []}, 400, "invalid_request"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, 400, "invalid_request"),
    ({"messages": [{"role": "user", "content": 5}]}, 400, "invalid_request"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": "many"}, 400, "invalid_request"),
    ({"messages": [{"role": "user", "content": "hi"}], "temperature": 7}, 400, "invalid_request"),
    ({"messages": [{"role": "user", "content": "hi"}], "n": 2}, 400, "unsupported_n"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5000}, 400, "context_length_exceeded"),
    ({"messages": [{"role": "user", "content": [{"type": "audio", "audio": "x"}]}]}, 400, "invalid_request"),
    ({"messages": user({"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}})}, 400, "invalid_base64"),
    ({"messages": user({"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(b"not a png").decode()}})},
     400, "invalid_image"),
    ({"messages": user({"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(_bomb_png()).decode()}})},
     400, "image_too_large"),
    ({"messages": user(image_part(random_image(0, (300, 300))))}, 400, "image_too_large"),
    ({"messages": user(*[image_part(random_image(i)) for i in range(5)])}, 400, "too_many_images"),
    ({"messages": user({"type": "video", "video": [data_url(random_image(0))] * 9})}, 400, "too_many_frames"),
    ({"messages": user({"type": "text", "text": "<image> and <image>"}, image_part(random_image(0)))}, 400, "invalid_prompt"),
    ({"messages": user(image_part(random_image(0)) | {"image_url": {"url": "https://example.com/a.png"}})}, 400, "remote_urls_disabled"),
    ({"messages": user({"type": "image_url", "image_url": "/etc/passwd"})}, 400, "local_files_disabled"),
    ({"messages": user({"type": "video_url", "video_url": {"url": "data:video/mp4;base64," + base64.b64encode(b"junk").decode()}})},
     400, "invalid_video"),
    (b"x" * 1_000_001, 413, "request_too_large"),
]


@pytest.mark.parametrize("body,status,code", BAD_REQUESTS, ids=[f"{i}-{c}" for i, (_, _, c) in enumerate(BAD_REQUESTS)])
def test_bad_request_gets_its_error_and_the_server_keeps_serving(served, client, pipe, body, status, code):
    url = served[0] + "/v1/chat/completions"
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = httpx.post(url, content=content, headers={"Content-Type": "application/json"}, timeout=30)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["message"] and error["type"]
    answer = ask(client, said("Describe the video."), max_tokens=4).choices[0].message.content
    assert answer == alone(pipe, user("Describe the video."), 4)


def test_unknown_route_is_a_json_404(served):
    response = httpx.get(served[0] + "/v1/nothing")
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"


def test_api_key_guards_every_route_but_health(pipe):
    with running(create_app(pipe, ServeSettings("tiny", api_key="s3cret"))) as url:
        assert httpx.get(url + "/health").status_code == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            assert httpx.get(url + "/v1/models", headers=headers).status_code == 401
            response = httpx.post(url + "/v1/chat/completions", json={"messages": said("hi")}, headers=headers)
            assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
        good = openai.OpenAI(base_url=url + "/v1", api_key="s3cret", max_retries=0)
        hi = said("hi")
        assert ask(good, hi, max_tokens=3).choices[0].message.content == alone(pipe, hi, 3)
        with pytest.raises(openai.AuthenticationError):
            ask(openai.OpenAI(base_url=url + "/v1", api_key="nope", max_retries=0), hi)


def test_local_files_only_under_the_root(pipe, tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    random_image(3).save(root / "sub" / "a.png")
    random_image(4).save(outside / "secret.png")
    (root / "link.png").symlink_to(outside / "secret.png")
    settings = ServeSettings("tiny", file_root=root)
    with running(create_app(pipe, settings)) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        expected = alone(pipe, user(Image.open(root / "sub" / "a.png"), "Describe it."), 6)
        for name in ("sub/a.png", str(root / "sub" / "a.png"), f"file://{root}/sub/a.png"):
            content = [{"type": "image_url", "image_url": {"url": name}}, {"type": "text", "text": "Describe it."}]
            assert ask(client, user(*content), max_tokens=6).choices[0].message.content == expected
        for name in ("../outside/secret.png", str(outside / "secret.png"), "link.png", "sub/../../outside/secret.png"):
            body = {"messages": user({"type": "image_url", "image_url": {"url": name}})}
            response = httpx.post(url + "/v1/chat/completions", json=body)
            assert response.status_code == 403 and response.json()["error"]["code"] == "path_outside_root", name
        body = {"messages": user({"type": "image_url", "image_url": {"url": "sub/missing.png"}})}
        assert httpx.post(url + "/v1/chat/completions", json=body).json()["error"]["code"] == "file_not_found"


def test_full_queue_gets_429_and_a_late_answer_504(pipe):
    settings = ServeSettings("tiny", max_batch=1, queue_size=1, timeout_s=1.0)
    app = create_app(pipe, settings)
    worker = app.state.server.worker
    with running(app) as url:
        results: dict[str, int] = {}
        body = {"messages": said("Describe the video."), "max_tokens": 4000}

        def post(name: str) -> None:
            results[name] = httpx.post(url + "/v1/chat/completions", json=body, timeout=60).status_code

        first = threading.Thread(target=post, args=("first",))
        first.start()
        wait_until(lambda: worker.running > 0, "the first request to run")
        second = threading.Thread(target=post, args=("second",))
        second.start()
        wait_until(lambda: worker.queued > 0, "the second request to queue")
        response = httpx.post(url + "/v1/chat/completions", json=body)
        assert response.status_code == 429 and response.json()["error"]["code"] == "queue_full"
        first.join(30)
        second.join(30)
        assert results == {"first": 504, "second": 504}
        quick = httpx.post(url + "/v1/chat/completions", json={"messages": said("hi"), "max_tokens": 3}, timeout=30)
        assert quick.status_code == 200
        assert worker.served["timeout"] >= 2


def test_command_line_options_become_settings(monkeypatch, tmp_path):
    from llava_interleave.cli import COMMANDS, build_parser
    from llava_interleave.cli.serve import kv_budget_mb, settings_from_args
    from llava_interleave.model.device import free_memory_mb

    assert "serve" in COMMANDS
    args = build_parser().parse_args(["serve", "--model", str(tmp_path / "ckpt"), "--max-batch", "2", "--queue-size", "3",
                                      "--timeout", "5", "--max-body-mb", "1", "--max-images", "2", "--file-root", str(tmp_path)])
    assert args.host == "127.0.0.1" and args.port == 8000
    monkeypatch.setenv("LLAVA_INTERLEAVE_API_KEY", "from-env")
    settings = settings_from_args(args)
    assert (settings.model_name, settings.api_key, settings.max_batch, settings.queue_size, settings.timeout_s) == (
        "ckpt", "from-env", 2, 3, 5.0)
    assert settings.limits.max_body_bytes == 2**20 and settings.limits.max_images == 2 and settings.file_root == tmp_path
    assert not settings.allow_remote_urls
    assert (settings.kv_mb, settings.chunk_tokens, settings.batching) == (0, 512, "continuous")
    scheduling = settings_from_args(build_parser().parse_args(["serve", "--kv-mb", "2.5", "--chunk-tokens", "64",
                                                               "--batching", "static"]))
    assert (scheduling.kv_mb, scheduling.chunk_tokens, scheduling.batching) == (2.5, 64, "static")
    for option, value in (("--max-batch", "0"), ("--chunk-tokens", "0")):
        with pytest.raises(InterleaveError, match=option):
            settings_from_args(build_parser().parse_args(["serve", "--model", "m", option, value]))
    for value in ("-1", "nan", "inf"):  # refused as it is parsed
        with pytest.raises(SystemExit):
            build_parser().parse_args(["serve", "--kv-mb", value])
    assert args.kv_mb is None  # then half the memory free once the model is loaded:
    free = free_memory_mb(torch.device("cpu"))
    assert free is not None and 0 < kv_budget_mb(None, torch.device("cpu")) <= free / 2 + 1
    assert kv_budget_mb(0, torch.device("cpu")) == 0 and kv_budget_mb(64.0, torch.device("cpu")) == 64.0
