"""The Python API: `pipe = llava_interleave.load(path)`, then `pipe.chat(messages)` or `pipe.generate(...)`.

A message is {"role": "user" | "assistant" | "system", "content": str | list of parts}; a part is a
string, a PIL image, or a dict {"type": "text", "text"}, {"type": "image", "image": path | PIL},
{"type": "view", "image": ...} (one view of a 3D scene) or {"type": "video", "video": path, "frames": 16}.
Text may hold `<image>` slots: the message's visuals fill them in order; with none, visuals go first.
Messages go to the model by the one road every source takes (`data/conversation.py`); generation
options are one `SamplingConfig` (greedy, 256 new tokens unless set).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from PIL import Image

from .config import InterleaveConfig
from .data.batch import Encoded
from .data.conversation import Media, Message, Part, to_sample
from .data.processor import Processor
from .data.sample import Sample
from .data.templates import IM_END, get_template
from .data.text_stream import TextStream
from .engine import Engine, Request, SamplingConfig
from .errors import ContextLengthError, PromptError
from .model.checkpoint import load_model, stop_ids
from .model.llava import LlavaInterleave

MessageLike = Message | Mapping[str, Any]
GREEDY = SamplingConfig()


@dataclass(frozen=True)
class Generation:
    text: str
    token_ids: list[int]
    prompt_tokens: int


def parse_message(message: MessageLike) -> Message:
    """A `Message` from the API's dict form (or one already built): see the module docstring."""
    if isinstance(message, Message):
        return message
    if not isinstance(message, Mapping) or "role" not in message:
        raise PromptError("a message is a dict with 'role' and 'content'")
    content = message.get("content")
    parts = [content] if isinstance(content, str) else [] if content is None else content
    if not isinstance(parts, Sequence):
        raise PromptError(f"message content must be a string or a list of parts, not a {type(content).__name__}")
    return Message(message["role"], tuple(_part(p) for p in parts))


def _part(part: Any) -> Part:
    if isinstance(part, (str, Media)):
        return part
    if isinstance(part, Image.Image):
        return Media(kind="image", source=part)
    if isinstance(part, Mapping):
        kind = part.get("type")
        if kind == "text" and isinstance(part.get("text"), str):
            return part["text"]
        if kind in ("image", "view") and "image" in part:
            return Media(kind=kind, source=part["image"])
        if kind == "video" and "video" in part:
            return Media(kind="video", source=part["video"], frames=part.get("frames"), fps=part.get("fps"))
        raise PromptError(f"unknown content part {{'type': {kind!r}}}; use text, image, view or video with its field")
    raise PromptError(f"cannot use a {type(part).__name__} as message content")


DEFAULT_CACHE_MB = 1024


class Pipeline:
    """`cache_mb` bounds the engine's vision and prefix caches (model/caches.py); 0 turns them off, as does
    `pipe.engine.set_cache(0)` later. Pipelines made by `with_processor` share the engine and its caches."""

    def __init__(
        self, model: LlavaInterleave, tokenizer: Any, template: str = "qwen_1_5", config: InterleaveConfig | None = None,
        cache_mb: float = DEFAULT_CACHE_MB, engine: Engine | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.processor = Processor(tokenizer, config or model.config, get_template(template))
        self.engine = engine if engine is not None else Engine(model, cache_mb)
        # What the checkpoint says ends an answer (its generation_config.json included), and the chat format's turn end.
        ends = (*stop_ids(model.config, tokenizer), tokenizer.convert_tokens_to_ids(IM_END))
        self.stop_ids = tuple(dict.fromkeys(i for i in ends if isinstance(i, int)))

    @property
    def config(self) -> InterleaveConfig:
        """The model's config with this pipeline's processor settings (see `with_processor`)."""
        return self.processor.config

    def with_processor(self, **overrides: Any) -> Pipeline:
        """The same weights with processor settings changed, e.g. video_pooling="average" or num_frames=8.

        The model is shared and left as it is: each visual carries the settings it was prepared with."""
        return Pipeline(self.model, self.tokenizer, self.processor.template.name, self.config.with_overrides(**overrides),
                        engine=self.engine)

    # ------------------------------------------------------------------ building samples
    def sample(self, messages: Sequence[MessageLike], *, num_frames: int | None = None, multi_view: bool = False,
               sample_id: str = "") -> Sample:
        """Messages -> typed sample by the one road; a lone image is cut into patches when the model uses anyres."""
        proc = self.config.processor
        return to_sample([parse_message(m) for m in messages], num_frames=num_frames or proc.num_frames,
                         anyres=proc.uses_anyres, multi_view=multi_view, sample_id=sample_id)

    def prepare(self, sample: Sample, answer_tokens: int = 1) -> Encoded:
        """The sample rendered for generation, checked to leave room for `answer_tokens` in the context.

        Raises:
            ContextLengthError: the prompt (images expanded) plus `answer_tokens` exceeds the context."""
        encoded = self.processor.encode(sample, add_generation_prompt=True)
        limit = self.config.max_length
        if len(encoded) + max(answer_tokens, 1) > limit:
            wanted = f" with {answer_tokens} answer tokens" if answer_tokens > 1 else ""
            raise ContextLengthError(f"the prompt is {len(encoded)} tokens after expanding images{wanted}, over the "
                                     f"model's context of {limit} tokens")
        return encoded

    def _within_context(self, encoded: Sequence[Encoded], sampling: SamplingConfig) -> SamplingConfig:
        """The model's stop tokens added, and the answer capped by the room the longest prompt leaves."""
        room = self.config.max_length - max(len(e) for e in encoded)
        return replace(sampling, max_new_tokens=min(sampling.max_new_tokens, room),
                       stop_token_ids=tuple(dict.fromkeys((*self.stop_ids, *sampling.stop_token_ids))))

    # ------------------------------------------------------------------ generation
    def submit(self, sample: Sample, sampling: SamplingConfig = GREEDY) -> Request:
        """Queue one sample in the engine: it joins the running batch at the next `engine.step()` (continuous
        batching), with the model's stop tokens and its answer capped by the room left in the context.
        `answer(request)` is its text once `request.finish` is set."""
        encoded = self.prepare(sample)
        return self.engine.submit(encoded, self._within_context([encoded], sampling))

    def answer(self, request: Request) -> Generation:
        return Generation(self._decode(request.tokens), request.tokens, len(request.prompt))

    def generate_samples(self, samples: Sequence[Sample], sampling: SamplingConfig = GREEDY) -> list[Generation]:
        """Several samples generated together (continuous batching); the first error of one is raised."""
        encoded = [self.prepare(s) for s in samples]
        outputs = self.engine.generate(encoded, self._within_context(encoded, sampling))
        return [Generation(self._decode(ids), ids, len(e)) for ids, e in zip(outputs, encoded)]

    def chat(self, messages: Sequence[MessageLike], sampling: SamplingConfig = GREEDY) -> str:
        """The assistant's answer to a conversation."""
        return self.generate_samples([self.sample(messages)], sampling)[0].text

    def stream_chat(self, messages: Sequence[MessageLike], sampling: SamplingConfig = GREEDY) -> Iterator[str]:
        """The answer as text pieces, yielded as soon as they decode to whole characters."""
        encoded = [self.prepare(self.sample(messages))]
        stream = TextStream(self._decode)
        for step in self.engine.stream(encoded, self._within_context(encoded, sampling)):
            if step[0] is not None and (piece := stream.push(step[0])):
                yield piece
        if rest := stream.flush():
            yield rest

    def generate(
        self,
        prompt: str,
        images: Sequence[str | os.PathLike | Image.Image] = (),
        video: str | os.PathLike | None = None,
        views: Sequence[str | os.PathLike | Image.Image] = (),
        frames: int | None = None,
        sampling: SamplingConfig = GREEDY,
    ) -> Generation:
        """One question about images, a video, or the views of a 3D scene; `<image>` slots place them."""
        content: list[Part] = [Media(kind="image", source=i) for i in images]
        content += [Media(kind="view", source=v) for v in views]
        if video is not None:
            content.append(Media(kind="video", source=video, frames=frames))
        content.append(prompt)
        return self.generate_samples([self.sample([Message("user", tuple(content))])], sampling)[0]

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode([i for i in ids if i not in self.stop_ids], skip_special_tokens=True)


def load(
    model: str | os.PathLike,
    template: str = "qwen_1_5",
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    cache_mb: float = DEFAULT_CACHE_MB,
) -> Pipeline:
    """Load a checkpoint directory (either layout) or a hub id, ready to chat; `cache_mb=0` turns the
    vision and prefix caches off (same answers, slower repeated prompts)."""
    net, tokenizer = load_model(model, device, dtype)
    return Pipeline(net, tokenizer, template, cache_mb=cache_mb)
