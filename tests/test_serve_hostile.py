"""The server under hostile input (issue 13): no 5xx, no user harms another, bounded work per request.

Every probe must get its 4xx with a message that names the input and shows no server internals, and the
same kept-alive connection must then answer a good request. Batching, head-of-line and timeout cases use
patched stages (a model that fails on one row, a slow tokeniser, a slow decoder) so that they are quick
and certain on any machine.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from llava_interleave import engine as engine_module
from llava_interleave.api import load
from llava_interleave.data.conversation import Media
from llava_interleave.engine import SamplingConfig
from llava_interleave.errors import InterleaveError
from llava_interleave.serve import media
from llava_interleave.serve.app import create_app
from llava_interleave.serve.errors import ApiError
from llava_interleave.serve.protocol import parse_json
from llava_interleave.serve.settings import ANY_HOST, LOOPBACK_HOSTS, Limits, ServeSettings

from .conftest import random_image, write_clip
from .live_server import running, wait_until
from .test_serve_api import alone, data_url, image_part, said, user
from .test_serve_continuous import Streamed, pause_until_submitted

LIMITS = Limits(max_body_bytes=1_000_000, max_images=4, max_frames=8, max_image_pixels=200 * 200,
                max_request_pixels=100_000, max_video_frames=20)
JSON = {"Content-Type": "application/json"}
GOOD = {"messages": said("Describe the video."), "max_tokens": 3}
INTERNALS = re.compile(r"0x[0-9a-f]{4,}|object at|/tmp|/home|/root|Traceback|Errno|site-packages", re.IGNORECASE)


@pytest.fixture(scope="module")
def pipe(original_checkpoint):
    return load(original_checkpoint)


@pytest.fixture(scope="module")
def served(pipe):
    app = create_app(pipe, ServeSettings("tiny", max_batch=4, limits=LIMITS))
    with running(app) as url:
        yield url, app.state.server.worker


def text(words: str) -> dict:
    return {"type": "text", "text": words}


def connect(url: str) -> http.client.HTTPConnection:
    host, port = url.removeprefix("http://").split(":")
    return http.client.HTTPConnection(host, int(port), timeout=60)


def exchange(conn: http.client.HTTPConnection, body: bytes | dict | None, headers: dict | None = None,
             method: str = "POST", path: str = "/v1/chat/completions") -> tuple[int, dict, http.client.HTTPResponse]:
    """One request on `conn`; the status, the JSON body and the response (for its headers)."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    conn.request(method, path, body=data, headers=JSON if headers is None else headers)
    response = conn.getresponse()
    return response.status, json.loads(response.read() or b"null"), response


def _video_url(path: Path) -> str:
    return "data:video/mp4;base64," + base64.b64encode(path.read_bytes()).decode()


def _probes(tmp: Path) -> list[tuple[str, bytes | dict, dict | None, int, str]]:
    """(name, body, headers, status, code): what a hostile or buggy client sends, and the answer it must get."""
    clip = write_clip(tmp / "clip.mp4", frames=12).read_bytes()
    broken = bytearray(clip)
    broken[broken.find(b"ftyp") + 6] ^= 0xFF  # the corrupted ftyp: still a video, so it is answered
    long_mp4, long_mkv = write_clip(tmp / "long.mp4", frames=30), write_clip(tmp / "long.mkv", frames=30)
    png = data_url(random_image(0))

    def video(url: str) -> dict:
        return {"messages": user({"type": "video_url", "video_url": {"url": url, "frames": 4}}, text("What moves?")), "max_tokens": 3}

    def chat(**fields) -> dict:
        return {**GOOD, **fields}

    return [
        ("seed 2^70", chat(seed=2**70), None, 400, "number_too_large"),
        ("seed over 2^63-1", chat(seed=2**63), None, 400, "invalid_request"),
        ("negative seed", chat(seed=-1), None, 400, "invalid_request"),
        ("4301-digit integer", f'{{"messages": [], "max_tokens": {"9" * 4301}}}'.encode(), None, 400, "number_too_large"),
        ("nested 100k deep", b'{"messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", None, 400, "json_too_deep"),
        ("NaN", b'{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}', None, 400, "invalid_json"),
        ("not UTF-8", b'{"messages": [{"role": "user", "content": "\xff"}]}', None, 400, "invalid_json"),
        ("lone surrogate in text", b'{"messages": [{"role": "user", "content": "hi \\ud800"}]}', None, 400, "invalid_request"),
        ("lone surrogate in stop", chat(stop=["\ud800"]), None, 400, "invalid_request"),
        ("lone surrogate in a path", chat(messages=user({"type": "image_url", "image_url": "a\udc80.png"})), None, 400,
         "invalid_request"),
        ("true as a number", chat(temperature=True), None, 400, "invalid_request"),
        ("string as a number", chat(max_tokens="3"), None, 400, "invalid_request"),
        ("long stop string", chat(stop="x" * 257), None, 400, "invalid_request"),
        ("five stop strings", chat(stop=["a", "b", "c", "d", "e"]), None, 400, "invalid_request"),
        ("system message only", {"messages": [{"role": "system", "content": "hi"}]}, None, 400, "no_user_message"),
        ("assistant message only", {"messages": [{"role": "assistant", "content": "hi"}]}, None, 400, "no_user_message"),
        ("image in an assistant message", {"messages": [*said("hi"), {"role": "assistant", "content": [image_part(random_image(0))]}]},
         None, 400, "invalid_prompt"),
        ("another model", chat(model="gpt-4o"), None, 404, "model_not_found"),
        ("text/plain body", GOOD, {"Content-Type": "text/plain"}, 415, "unsupported_media_type"),
        ("form body", GOOD, {"Content-Type": "application/x-www-form-urlencoded"}, 415, "unsupported_media_type"),
        ("no content type", GOOD, {}, 415, "unsupported_media_type"),
        ("foreign Host (DNS rebinding)", GOOD, {**JSON, "Host": "attacker.example:8000"}, 400, "invalid_host"),
        ("foreign Origin (cross-site POST)", GOOD, {**JSON, "Origin": "https://attacker.example"}, 403, "forbidden_origin"),
        ("Origin null", GOOD, {**JSON, "Origin": "null"}, 403, "forbidden_origin"),
        ("prompt far over the context", chat(messages=said("word " * 12_000)), None, 400, "context_length_exceeded"),
        ("max_tokens over the context", chat(max_tokens=10**19), None, 400, "context_length_exceeded"),
        ("not base64", chat(messages=user({"type": "image_url", "image_url": "data:image/png;base64,@@"})), None, 400,
         "invalid_base64"),
        ("not an image", chat(messages=user({"type": "image_url", "image_url": "data:image/png;base64,"
                                             + base64.b64encode(b"GIF89a junk").decode()})), None, 400, "invalid_image"),
        ("over the pixels per request", chat(messages=user(*[image_part(random_image(i, (190, 190))) for i in range(3)])),
         None, 400, "too_many_pixels"),
        ("an image as a video", video(png.replace("image/png", "video/mp4")), None, 400, "invalid_video"),
        ("truncated mp4", video("data:video/mp4;base64," + base64.b64encode(clip[:150]).decode()), None, 400, "invalid_video"),
        ("30-frame mp4 (header count)", video(_video_url(long_mp4)), None, 400, "video_too_long"),
        ("30-frame mkv (no header count)", video(_video_url(long_mkv)), None, 400, "video_too_long"),
        ("corrupted ftyp byte", video("data:video/mp4;base64," + base64.b64encode(bytes(broken)).decode()), None, 200, ""),
        ("local path with no file root", chat(messages=user({"type": "image_url", "image_url": "/etc/passwd"})), None, 400,
         "local_files_disabled"),
        ("body over the limit", b"x" * 1_000_001, None, 413, "request_too_large"),
    ]


@pytest.fixture(scope="module")
def probes(tmp_path_factory) -> list[tuple[str, bytes | dict, dict | None, int, str]]:
    return _probes(tmp_path_factory.mktemp("probes"))


def test_every_probe_gets_its_answer_and_the_connection_keeps_working(served, probes, pipe):
    conn = connect(served[0])
    assert exchange(conn, GOOD)[0] == 200
    sock = conn.sock
    expected = alone(pipe, user("Describe the video."), 3)
    wrong = []
    for name, body, headers, status, code in probes:
        got, answer, _ = exchange(conn, body, headers)
        error = (answer or {}).get("error") or {}
        if got != status or error.get("code", "") != code or INTERNALS.search(error.get("message", "")):
            wrong.append(f"{name}: {got} {answer}")
        again, answer, _ = exchange(conn, GOOD)
        if again != 200 or answer["choices"][0]["message"]["content"] != expected or conn.sock is not sock:
            wrong.append(f"after {name}: {again}, same connection: {conn.sock is sock}")
    assert not wrong, "\n".join(wrong)
    health = httpx.get(served[0] + "/health").json()
    assert health["status"] == "ok"


def test_json_nesting_is_measured_outside_strings():
    deep = "[" * 70 + "]" * 70
    assert parse_json(json.dumps({"a": deep, "b": '\\"' + deep, "c": "\\", "d": [[1]]}).encode())["a"] == deep
    assert parse_json(("[" * 64 + "]" * 64).encode())  # 64 levels are allowed
    for body in ("[" * 65 + "]" * 65, '["\\\\", ' + "[" * 65, "[" * 100_000):
        with pytest.raises(ApiError) as refused:
            parse_json(body.encode())
        assert refused.value.code == "json_too_deep", body[:20]


def test_errors_name_the_field_at_fault(served):
    conn = connect(served[0])
    cases = [
        (user(text("hi"), {"type": "image_url", "image_url": {"url": 5}}), "messages[0].content[1].image_url.url"),
        (user(text("hi"), {"type": "image_url", "image_url": "data:image/png;base64,@@"}), "messages[0].content[1].image_url"),
        (user({"type": "text"}), "messages[0].content[0].text"),
        (user({"type": "video", "video": [data_url(random_image(0)), "data:image/png;base64,AAAA"]}),
         "messages[0].content[0].video[1]"),
    ]
    for messages, param in cases:
        status, answer, _ = exchange(conn, {"messages": messages})
        assert status == 400 and answer["error"]["param"] == param, answer
        assert answer["error"]["message"].startswith(param), answer


def test_a_server_fault_is_a_500_that_keeps_the_connection(pipe, monkeypatch):
    app = create_app(pipe, ServeSettings("tiny"))
    check = app.state.server.check

    def faulty(chat):
        if chat.model == "fault":
            raise RuntimeError("a bug at /srv/secret/path")
        check(chat)

    monkeypatch.setattr(app.state.server, "check", faulty)
    with running(app) as url:
        conn = connect(url)
        assert exchange(conn, GOOD)[0] == 200
        sock = conn.sock
        status, answer, _ = exchange(conn, {**GOOD, "model": "fault"})
        assert status == 500 and answer["error"]["code"] == "internal_error" and "secret" not in json.dumps(answer)
        assert exchange(conn, GOOD)[0] == 200 and conn.sock is sock


def test_wrong_method_says_what_is_allowed(served):
    conn = connect(served[0])
    for method, path, allowed in (("GET", "/v1/chat/completions", "POST"), ("OPTIONS", "/v1/chat/completions", "POST"),
                                  ("POST", "/v1/models", "GET"), ("DELETE", "/health", "GET")):
        status, answer, response = exchange(conn, None, {}, method, path)
        assert status == 405 and answer["error"]["code"] == "method_not_allowed", (method, path)
        assert allowed in response.getheader("Allow", ""), (method, path)


def test_same_origin_and_allowed_hosts_pass(pipe, served):
    url = served[0]
    for headers in ({"Origin": url}, {"Host": "localhost:1"}, {"Host": "LOCALHOST"}, {"Host": "[::1]:80"}, {"Origin": "http://localhost:3000"}):
        assert httpx.post(url + "/v1/chat/completions", json=GOOD, headers=headers).status_code == 200, headers
    with running(create_app(pipe, ServeSettings("tiny", allowed_hosts=("chat.example.org",)))) as other:
        ok = httpx.post(other + "/v1/chat/completions", json=GOOD, headers={"Host": "chat.example.org"})
        assert ok.status_code == 200
        assert httpx.get(other + "/health").status_code == 400  # 127.0.0.1 is not in the list it was given
    with running(create_app(pipe, ServeSettings("tiny", allowed_hosts=(ANY_HOST,)))) as anywhere:
        assert httpx.get(anywhere + "/health", headers={"Host": "any.example"}).status_code == 200


def test_data_urls_with_line_breaks_and_any_case(served, pipe):
    image = random_image(5)
    plain = data_url(image)
    header, payload = plain.split(",")
    wrapped = "DATA:image/PNG;BASE64," + "\r\n".join(payload[i : i + 76] for i in range(0, len(payload), 76))
    expected = alone(pipe, user(image, "What is it?"), 4)
    for url in (plain, wrapped, header.replace("data:", "Data:") + "," + payload):
        body = {"messages": user({"type": "image_url", "image_url": url}, text("What is it?")), "max_tokens": 4}
        response = httpx.post(served[0] + "/v1/chat/completions", json=body)
        assert response.status_code == 200 and response.json()["choices"][0]["message"]["content"] == expected, url[:40]


def test_model_field_names_the_served_model_or_nothing(served):
    for fields in ({}, {"model": "tiny"}, {"model": None}):
        assert httpx.post(served[0] + "/v1/chat/completions", json={**GOOD, **fields}).status_code == 200, fields


def test_file_root_refuses_what_is_not_a_regular_file(pipe, tmp_path):
    root = tmp_path / "root"
    (root / "folder").mkdir(parents=True)
    random_image(3).save(root / "ok.png")
    os.mkfifo(root / "fifo.png")
    (root / "fifo-link.png").symlink_to(root / "fifo.png")
    (root / "zero.png").symlink_to("/dev/zero")
    cases = [("fifo.png", 400, "not_a_file"), ("fifo-link.png", 400, "not_a_file"), ("folder", 400, "not_a_file"),
             (".", 400, "not_a_file"), ("", 400, "invalid_request"), ("a\x00.png", 400, "invalid_path"),
             (f"file://{root}/ok%00.png", 400, "invalid_path"), (f"file://{root}/%ED%A0%80.png", 400, "file_not_found"),
             ("zero.png", 403, "path_outside_root"), ("x" * 5000, 400, "file_not_found"), ("ok.png", 200, "")]
    with running(create_app(pipe, ServeSettings("tiny", file_root=root, timeout_s=10))) as url:
        conn = connect(url)
        for name, status, code in cases:  # a FIFO that blocked would end in the connection's timeout instead
            got, answer, _ = exchange(conn, {**GOOD, "messages": user({"type": "image_url", "image_url": name}, text("hi"))})
            assert (got, (answer.get("error") or {}).get("code", "")) == (status, code), (name, answer)
            assert str(root) not in json.dumps(answer), name
        clip = write_clip(root / "clip.mp4", frames=12)
        for kind, part in (("fifo", {"url": "fifo.png"}), ("clip", {"url": "clip.mp4", "frames": 4})):
            got, answer, _ = exchange(conn, {**GOOD, "messages": user({"type": "video_url", "video_url": part}, text("hi"))})
            assert got == (200 if kind == "clip" else 400), answer
        assert answer["choices"][0]["message"]["content"] == alone(pipe, user(Media(kind="video", source=clip, frames=4),
                                                                              "hi"), 3)


def test_a_row_that_breaks_the_model_fails_alone(pipe, monkeypatch):
    """A poison row in a step with six others: the model fails whenever it is in the forward pass; the innocent
    rows still get their own answers, and sampled requests, each with its own seed, the answers they get alone."""
    prompts = ["red ball", "POISON", "blue cat", "the mat"]
    expected = {p: alone(pipe, user(p), 5) for p in prompts if p != "POISON"}
    seeds = {f"seed {seed}": seed for seed in (1, 2)}
    sampled = {key: pipe.generate_samples([pipe.sample(user("red ball"))], SamplingConfig(
        max_new_tokens=5, temperature=1.0, seed=seed))[0].text for key, seed in seeds.items()}
    forward, failed_with = engine_module.packed_forward, []

    def packed_forward(lm, embeds, spans):
        poisoned = {id(r.cache) for r in pipe.engine.running if "POISON" in pipe.tokenizer.decode(r.prompt.input_ids)}
        if any(id(span.cache) in poisoned for span in spans):
            failed_with.append(len(spans))
            raise RuntimeError("the model broke on this row")
        return forward(lm, embeds, spans)

    monkeypatch.setattr(engine_module, "packed_forward", packed_forward)
    app = create_app(pipe, ServeSettings("tiny", max_batch=8))
    worker = app.state.server.worker
    with running(app) as url:
        results: dict[str, httpx.Response] = {}

        def post(key: str, body: dict) -> None:
            results[key] = httpx.post(url + "/v1/chat/completions", json=body, timeout=60)

        blocker = Streamed(url, {"messages": said("Describe the video."), "max_tokens": 3000})
        blocker.start()
        wait_until(lambda: worker.running == 1, "the long answer to start")
        pause_until_submitted(monkeypatch, pipe.engine, worker, len(prompts) + len(seeds))  # then all join at once
        threads = [threading.Thread(target=post, args=(p, {"messages": said(p), "max_tokens": 5})) for p in prompts]
        threads.append(threading.Thread(target=post, args=("seed", {**GOOD, "seed": 2**70})))
        threads += [threading.Thread(target=post, args=(key, {"messages": said("red ball"), "max_tokens": 5,
                                                              "temperature": 1.0, "seed": seed}))
                    for key, seed in seeds.items()]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        blocker.leave()
    assert results["POISON"].status_code == 500 and results["POISON"].json()["error"]["code"] == "generation_failed"
    assert "broke" not in results["POISON"].text and not INTERNALS.search(results["POISON"].text)
    assert results["seed"].status_code == 400
    assert {p: results[p].json()["choices"][0]["message"]["content"] for p in expected} == expected
    assert {key: results[key].json()["choices"][0]["message"]["content"] for key in seeds} == sampled
    assert max(failed_with) == 7, failed_with  # the poison shared its step with the blocker and the five others
    assert blocker.status == 200 and worker.served["error"] == 1


def test_a_huge_prompt_delays_nobody(pipe, monkeypatch):
    """A 30 MB prompt is refused from its length; a slow tokenisation holds no lock a small request needs."""
    original = pipe.tokenizer.encode
    tokenising, release = threading.Event(), threading.Event()

    def encode(text, *args, **kwargs):
        if "SLOW" in text:  # held mid-tokenisation until the small request has its answer
            tokenising.set()
            release.wait(60)
        return original(text, *args, **kwargs)

    app = create_app(pipe, ServeSettings("tiny"))
    monkeypatch.setattr(pipe.tokenizer, "encode", encode)
    with running(app) as url, httpx.Client(base_url=url, timeout=60) as http:
        # tokenised, 30 MB would take ~100 s and end in the client's timeout; refused from its length it does not
        huge = http.post("/v1/chat/completions", json={"messages": said("x" * 30_000_000)})
        assert huge.status_code == 400 and huge.json()["error"]["code"] == "context_length_exceeded"

        slow: dict[str, int] = {}
        thread = threading.Thread(target=lambda: slow.update(status=http.post("/v1/chat/completions",
                                                                              json={"messages": said("SLOW"), "max_tokens": 2}).status_code))
        thread.start()
        assert tokenising.wait(30), "the slow request never reached the tokenizer"
        try:
            assert http.post("/v1/chat/completions", json=GOOD).status_code == 200  # while the other still tokenises
            assert thread.is_alive() and not slow
        finally:
            release.set()
        thread.join(30)
        assert slow == {"status": 200}


def test_timeout_covers_decoding_and_waiting_to_decode(pipe, monkeypatch):
    """With one decoding slot: a slow decode is cut at its deadline, the request waiting for the slot gets
    its 504 at its own deadline, and a text-only request is answered meanwhile."""
    decode = media.MediaLoader._decode_image

    def slow_decode(self, file, where):
        time.sleep(0.4)
        return decode(self, file, where)

    monkeypatch.setattr(media.MediaLoader, "_decode_image", slow_decode)
    images = {"messages": user(*[image_part(random_image(i)) for i in range(4)], text("hi")), "max_tokens": 2}
    with running(create_app(pipe, ServeSettings("tiny", timeout_s=1.0, max_decoding=1))) as url:
        results: dict[str, int] = {}

        def post(key: str, body: dict) -> None:
            results[key] = httpx.post(url + "/v1/chat/completions", json=body, timeout=30).status_code

        threads = [threading.Thread(target=post, args=(k, b)) for k, b in (("first", images), ("second", images))]
        for t in threads:
            t.start()
            time.sleep(0.1)
        post("text", GOOD)
        for t in threads:
            t.join(30)
    assert results == {"first": 504, "second": 504, "text": 200}, results


def test_tokenising_from_many_threads_at_once_gives_the_same_tokens(pipe):
    prompts = [f"{i} the cat sat on the mat " * (1 + i % 7) for i in range(32)]
    alone_ids = [pipe.tokenizer.encode(p, add_special_tokens=False) for p in prompts]
    results: list[list[int] | None] = [None] * len(prompts)
    errors: list[Exception] = []

    def work(start: int) -> None:
        try:
            for _ in range(10):
                for i in range(start, len(prompts), 4):
                    results[i] = pipe.tokenizer.encode(prompts[i], add_special_tokens=False)
                    pipe.tokenizer.decode(results[i])
        except Exception as err:  # noqa: BLE001 - reported by the assertion below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and results == alone_ids


def test_serve_options_become_settings(tmp_path):
    from llava_interleave.cli import build_parser
    from llava_interleave.cli.serve import settings_from_args

    def settings(*extra: str) -> ServeSettings:
        return settings_from_args(build_parser().parse_args(["serve", "--model", str(tmp_path), *extra]))

    defaults = settings()
    assert defaults.allowed_hosts == LOOPBACK_HOSTS and defaults.max_decoding == 2
    assert (defaults.limits.max_request_pixels, defaults.limits.max_video_frames) == (2**25, 3600)
    assert settings("--host", "0.0.0.0").allowed_hosts == (ANY_HOST,)
    assert settings("--host", "127.0.0.2").allowed_hosts == (*LOOPBACK_HOSTS, "127.0.0.2")
    given = settings("--allowed-hosts", "a.example", "b.example", "--max-decoding", "3", "--max-request-pixels", "1000",
                     "--max-video-frames", "10")
    assert given.allowed_hosts == ("a.example", "b.example") and given.max_decoding == 3
    assert (given.limits.max_request_pixels, given.limits.max_video_frames) == (1000, 10)
    with pytest.raises(InterleaveError, match="at least 1"):
        settings("--max-video-frames", "0")


@pytest.mark.subprocess  # runs the README's curl command
def test_readme_requests_get_the_bundled_models_answers(capsys, monkeypatch):
    """The README's curl and openai examples, run as written against the bundled model, get the answers it says."""
    from llava_interleave.assets import bundled_model
    from llava_interleave.cli import build_parser
    from llava_interleave.cli.serve import settings_from_args

    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    curl = re.search(r"```text\n(curl http://127\.0\.0\.1:8000/.*?)```", readme, re.DOTALL).group(1)
    client = re.search(r"```py\n(.*?client\.chat\.completions\.create.*?)```", readme, re.DOTALL).group(1)
    settings = settings_from_args(build_parser().parse_args(["serve"]))  # what `llava-interleave serve` runs
    with running(create_app(load(bundled_model()), settings)) as url:
        done = subprocess.run(["bash", "-c", curl.replace("http://127.0.0.1:8000", url)], check=True, cwd=root,
                              capture_output=True, text=True, timeout=120)
        answer = json.loads(done.stdout)
        assert answer["choices"][0]["message"]["content"] == "F" and answer["model"] == settings.model_name, answer
        monkeypatch.chdir(root)
        exec(compile(client.replace("http://127.0.0.1:8000", url), "README.md", "exec"), {})  # noqa: S102 - the README example
        assert capsys.readouterr().out == "E"
    assert "gets `F`" in readme and "streams `E`" in readme
