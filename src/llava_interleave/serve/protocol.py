"""The OpenAI chat-completions format: request validation, conversion to pipeline messages, response bodies.

Content parts: {"type": "text", "text"}, {"type": "image_url", "image_url": {"url"}} (or the URL as a
string), and two for video, which OpenAI's format lacks: {"type": "video", "video": [frame URLs]} and
{"type": "video_url", "video_url": {"url", "frames"}} for a whole file. Each video fills one `<image>` slot.

A body is checked in order of cost: its nesting depth and number sizes before the JSON parser runs (it
recurses once per level, and Python's int() of a long digit string is quadratic), the schema with a range
for every field, then the request's own rules; media are decoded last (`media.py`). An error names the
field at fault as a path, e.g. "messages[0].content[1].image_url.url".
"""

from __future__ import annotations

import json
import re
import time
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from ..data.conversation import Media, Message
from ..engine import MAX_SEED
from .errors import ApiError, Deadline, bad_request
from .media import MediaLoader
from .settings import Limits, ServeSettings

MAX_JSON_DEPTH = 64
MAX_NUMBER_DIGITS = 20  # 2**63 - 1 has 19
MAX_MESSAGES = 1024
MAX_PARTS = 1024  # per message
MAX_STOPS, MAX_STOP_CHARS = 4, 256  # each stop string is matched against the answer's tail at every token
DEFAULT_VIDEO_FRAMES = 16
_SURROGATE = re.compile("[\ud800-\udfff]")
_STEP = np.zeros(256, np.int8)  # +1 for a byte that opens an array or object, -1 for one that closes it
_STEP[list(b"[{")], _STEP[list(b"]}")] = 1, -1


def _unicode(text: str) -> str:
    """JSON can carry a lone surrogate ("\\ud800"), which is no character: nothing can encode or tokenise it."""
    if _SURROGATE.search(text):
        raise ValueError("not valid Unicode text: it holds a lone surrogate (\\ud800-\\udfff)")
    return text


def _as_url(value: Any) -> Any:
    return {"url": value} if isinstance(value, str) else value


def _as_parts(value: Any) -> Any:
    return [{"type": "text", "text": value}] if isinstance(value, str) else [] if value is None else value


def _as_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else [] if value is None else value


Text = Annotated[str, AfterValidator(_unicode)]


class Strict(BaseModel):
    """No coercion ("5" is not a number, true is not 1.0); fields that OpenAI clients send and we do not
    read (user, logprobs=false ...) are ignored."""

    model_config = ConfigDict(strict=True, extra="ignore")


class Url(Strict):
    url: Annotated[Text, Field(min_length=1)]
    frames: Annotated[int, Field(ge=1)] | None = None  # video_url only


UrlField = Annotated[Url, BeforeValidator(_as_url)]  # a bare string is the URL


class TextPart(Strict):
    type: Literal["text"]
    text: Text


class ImagePart(Strict):
    type: Literal["image_url"]
    image_url: UrlField


class VideoFramesPart(Strict):
    type: Literal["video"]
    video: Annotated[list[UrlField], Field(min_length=1)]


class VideoPart(Strict):
    type: Literal["video_url"]
    video_url: UrlField


Part = Annotated[TextPart | ImagePart | VideoFramesPart | VideoPart, Field(discriminator="type")]
MediaPart = ImagePart | VideoFramesPart | VideoPart


class ChatMessage(Strict):
    role: Literal["system", "user", "assistant"]
    content: Annotated[list[Part], BeforeValidator(_as_parts), Field(max_length=MAX_PARTS)] = []  # a string: one part

    @property
    def has_media(self) -> bool:
        return any(not isinstance(p, TextPart) for p in self.content)


class StreamOptions(Strict):
    include_usage: bool = False


class ChatRequest(Strict):
    model: Annotated[Text, Field(max_length=256)] | None = None
    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=MAX_MESSAGES)]
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] = 0.0  # greedy unless asked, like the CLI
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    n: int = 1
    stop: Annotated[list[Annotated[Text, Field(max_length=MAX_STOP_CHARS)]], BeforeValidator(_as_list),
                    Field(max_length=MAX_STOPS)] = []
    seed: Annotated[int, Field(ge=0, le=MAX_SEED)] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None

    @property
    def stops(self) -> tuple[str, ...]:
        return tuple(s for s in self.stop if s)

    @property
    def requested_tokens(self) -> int | None:
        return self.max_tokens or self.max_completion_tokens

    @property
    def characters(self) -> int:
        """Characters of text in all messages: a bound on the prompt's length known before tokenising."""
        return sum(len(p.text) for m in self.messages for p in m.content if isinstance(p, TextPart))

    @property
    def has_media(self) -> bool:
        return any(m.has_media for m in self.messages)


def parse_request(body: bytes) -> ChatRequest:
    """Validated request, or a 400 that names the first bad field."""
    data = parse_json(body)
    try:
        request = ChatRequest.model_validate(data)
    except ValidationError as err:
        found = ((_path(e["loc"]), e["msg"].removeprefix("Value error, ")) for e in err.errors())
        problems = list(dict.fromkeys(found))[:3]  # a field that fails two ways of a union, once
        message = "; ".join(f"{where}: {msg}" if where else msg for where, msg in problems)
        raise ApiError(400, message, "invalid_request", param=problems[0][0] or None) from None
    if request.n != 1:
        raise bad_request("only n=1 is supported", "unsupported_n", "n")
    if not any(m.role == "user" for m in request.messages):
        raise bad_request("there must be at least one message with the role user", "no_user_message", "messages")
    for i, message in enumerate(request.messages):
        if message.role != "user" and message.has_media:
            raise bad_request(f"only user messages may hold images or videos, not a {message.role} message",
                              "invalid_prompt", f"messages[{i}]")
    return request


def parse_json(body: bytes) -> Any:
    """The body as JSON, its nesting and its integers bounded before the parser meets them."""
    if body.count(b"[") + body.count(b"{") > MAX_JSON_DEPTH and _nesting(body) > MAX_JSON_DEPTH:
        raise bad_request(f"the JSON nests deeper than {MAX_JSON_DEPTH} levels", "json_too_deep")
    try:
        return json.loads(body.decode("utf-8"), parse_int=_integer, parse_constant=_constant)
    except UnicodeDecodeError:
        raise bad_request("the body is not UTF-8 text", "invalid_json") from None
    except json.JSONDecodeError as err:
        raise bad_request(f"the body is not valid JSON: {err}", "invalid_json") from None


def _nesting(body: bytes) -> int:
    """How deeply arrays and objects nest, found without parsing: escapes are blanked so that every quote
    left opens or closes a string, and the brackets outside strings are summed. numpy, a megabyte at a
    time, keeps it to ~10 ms and a few MB of memory a megabyte, and lets other threads run meanwhile."""
    plain = np.frombuffer(body.replace(b"\\\\", b"__").replace(b'\\"', b"__"), np.uint8)
    inside = False  # in a string at the chunk's start
    depth = peak = 0
    for start in range(0, len(plain), 2**20):
        chunk = plain[start : start + 2**20]
        quoted = np.logical_xor.accumulate(chunk == ord('"')) ^ inside  # from an opening quote to its closing one
        steps = _STEP[chunk[~quoted]]
        steps = steps[steps != 0]
        if len(steps):
            running = np.cumsum(steps, dtype=np.int64) + depth
            peak, depth = max(peak, int(running.max())), int(running[-1])
        inside = bool(quoted[-1])
    return peak


def _integer(digits: str) -> int:
    if len(digits.lstrip("-")) > MAX_NUMBER_DIGITS:
        raise bad_request(f"a number in the body has more than {MAX_NUMBER_DIGITS} digits", "number_too_large")
    return int(digits)


def _constant(name: str) -> float:
    raise bad_request(f"the body is not valid JSON: {name} is not a JSON value", "invalid_json")


def _path(loc: tuple[int | str, ...]) -> str:
    """A pydantic location as a path: ("messages", 0, "content", 1, "image_url", "image_url", "url") ->
    "messages[0].content[1].image_url.url" (a part's type tag, repeated by its field of the same name, once)."""
    path = ""
    for i, step in enumerate(loc):
        if isinstance(step, int):
            path += f"[{step}]"
        elif i + 1 == len(loc) or loc[i + 1] != step:
            path += f".{step}" if path else step
    return path


def to_messages(request: ChatRequest, settings: ServeSettings, deadline: Deadline | None = None) -> list[Message]:
    """The request as the conversation every source hands to the one road (`data/conversation.py`), its
    media counted first, then fetched and decoded under the server's limits by `deadline` (default: the
    server's timeout from now)."""
    _check_counts(request, settings.limits)
    loader = MediaLoader(settings, deadline or Deadline.after(settings.timeout_s))
    return [Message(message.role, tuple(_part(part, f"messages[{i}].content[{j}]", loader)
                                        for j, part in enumerate(message.content)))
            for i, message in enumerate(request.messages)]


def _check_counts(request: ChatRequest, limits: Limits) -> None:
    """Images and frames counted before any is decoded."""
    media = [(f"messages[{i}].content[{j}]", p) for i, m in enumerate(request.messages) for j, p in enumerate(m.content)
             if not isinstance(p, TextPart)]
    if len(media) > limits.max_images:
        raise bad_request(f"{len(media)} images/videos, over the limit of {limits.max_images} per request",
                          "too_many_images", "messages")
    for where, part in media:
        frames = _frames_asked(part)
        if frames > limits.max_frames:
            raise bad_request(f"{frames} video frames, over the limit of {limits.max_frames}", "too_many_frames", where)


def _frames_asked(part: MediaPart) -> int:
    """Frames a part names (0 where it names none: an image, or a video file sampled by default)."""
    if isinstance(part, VideoFramesPart):
        return len(part.video)
    return (part.video_url.frames or 0) if isinstance(part, VideoPart) else 0


def _part(part: TextPart | MediaPart, where: str, loader: MediaLoader) -> str | Media:
    if isinstance(part, TextPart):
        return part.text
    if isinstance(part, ImagePart):
        return Media(kind="image", source=loader.image(part.image_url.url, f"{where}.image_url"))
    if isinstance(part, VideoFramesPart):
        frames = (loader.image(u.url, f"{where}.video[{k}]") for k, u in enumerate(part.video))
        return Media(kind="video", source=tuple(frames))
    wanted = part.video_url.frames or min(DEFAULT_VIDEO_FRAMES, loader.limits.max_frames)
    return Media(kind="video", source=tuple(loader.video(part.video_url.url, wanted, f"{where}.video_url")))


def completion_body(
    request_id: str, model: str, text: str, finish: str, prompt_tokens: int, completion_tokens: int
) -> dict[str, Any]:
    return {
        "id": request_id, "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
        "usage": usage(prompt_tokens, completion_tokens),
    }


def chunk(request_id: str, model: str, delta: dict[str, Any], finish: str | None = None) -> str:
    """One server-sent event in the chat.completion.chunk format."""
    body = {
        "id": request_id, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return sse(body)


def usage_chunk(request_id: str, model: str, prompt_tokens: int, completion_tokens: int) -> str:
    body = {"id": request_id, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "choices": [], "usage": usage(prompt_tokens, completion_tokens)}
    return sse(body)


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens}


def sse(body: dict[str, Any]) -> str:
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


def error_event(error: ApiError) -> str:
    """A failure after the stream started (its status line is already sent): an error object as the last event."""
    return sse(error.body())
