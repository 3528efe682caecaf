"""The Python API: `pipe = llava_interleave.load(path)`, then `pipe.chat(messages)` or `pipe.generate(...)`.

A message is {"role": "user" | "assistant" | "system", "content": str | list of parts}; a part is a
string, a PIL image, or a dict {"type": "text", "text"}, {"type": "image", "image": path | PIL},
{"type": "view", "image": ...} (one view of a 3D scene) or {"type": "video", "video": path, "frames": 16}.
Text may hold `<image>` slots: the message's visuals fill them in order; with none, visuals go first.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from PIL import Image

from .config import InterleaveConfig
from .data.batch import Encoded
from .data.media import load_image, load_video
from .data.processor import Processor
from .data.sample import Modality, Sample, Text, Turn, Visual, fill_slots
from .data.templates import IM_END, get_template
from .engine import Engine, SamplingConfig
from .errors import PromptError
from .model.checkpoint import load_model
from .model.llava import LlavaInterleave

Message = dict[str, Any]


@dataclass(frozen=True)
class Generation:
    text: str
    token_ids: list[int]
    prompt_tokens: int


def image_visual(source: str | os.PathLike | Image.Image, modality: Modality = Modality.IMAGE) -> Visual:
    return Visual((load_image(source),), modality, str(source) if not isinstance(source, Image.Image) else "")


def video_visual(source: str | os.PathLike, frames: int = 16, fps: float | None = None) -> Visual:
    return Visual(tuple(load_video(source, frames, fps)), Modality.VIDEO, str(source))


class Pipeline:
    def __init__(
        self, model: LlavaInterleave, tokenizer: Any, template: str = "qwen_1_5", config: InterleaveConfig | None = None
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.processor = Processor(tokenizer, config or model.config, get_template(template))
        self.engine = Engine(model)
        self.stop_ids = tuple({model.config.eos_token_id, tokenizer.convert_tokens_to_ids(IM_END)} - {None})

    @property
    def config(self) -> InterleaveConfig:
        """The model's config with this pipeline's processor settings (see `with_processor`)."""
        return self.processor.config

    def with_template(self, name: str) -> Pipeline:
        return Pipeline(self.model, self.tokenizer, name, self.config)

    def with_processor(self, **overrides: Any) -> Pipeline:
        """The same weights with processor settings changed, e.g. video_pooling="average" or num_frames=8.

        The model is shared and left as it is: each visual carries the settings it was prepared with."""
        return Pipeline(self.model, self.tokenizer, self.processor.template.name, self.config.with_overrides(**overrides))

    # ------------------------------------------------------------------ building samples
    def sample(self, messages: Sequence[Message]) -> Sample:
        """Messages -> typed sample; a lone image becomes a multi-patch (anyres) item when the model uses anyres."""
        turns = tuple(Turn(m["role"], self._segments(m["content"])) for m in messages)
        visuals = [v for t in turns for v in t.visuals]
        if len(visuals) == 1 and visuals[0].modality == Modality.IMAGE and self.config.processor.image_aspect == "anyres":
            lone = visuals[0]
            patches = replace(lone, modality=Modality.PATCHES)
            turns = tuple(Turn(t.role, tuple(patches if s is lone else s for s in t.segments)) for t in turns)
        return Sample(turns)

    def _segments(self, content: str | Sequence[Any]) -> tuple[Text | Visual, ...]:
        parts = [content] if isinstance(content, str) else list(content)
        texts: list[str] = []
        visuals: list[Visual] = []
        for part in parts:
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, Image.Image):
                visuals.append(image_visual(part))
            elif isinstance(part, Visual):
                visuals.append(part)
            elif isinstance(part, dict):
                kind = part.get("type")
                if kind == "text":
                    texts.append(part["text"])
                elif kind in ("image", "view"):
                    visuals.append(image_visual(part["image"], Modality(kind)))
                elif kind == "video":
                    frames = part.get("frames") or self.config.processor.num_frames
                    visuals.append(video_visual(part["video"], frames, part.get("fps")))
                else:
                    raise PromptError(f"unknown content part type {kind!r}; use text, image, view or video")
            else:
                raise PromptError(f"cannot use a {type(part).__name__} as message content")
        return fill_slots("".join(texts), visuals)

    # ------------------------------------------------------------------ generation
    def encode(self, sample: Sample, max_new_tokens: int) -> Encoded:
        encoded = self.processor.encode(sample, add_generation_prompt=True)
        limit = self.config.max_length
        if len(encoded) >= limit:
            raise PromptError(
                f"the prompt is {len(encoded)} tokens after expanding images, over the model's context of {limit} tokens"
            )
        return encoded

    def _sampling(self, encoded: Sequence[Encoded], **kwargs: Any) -> SamplingConfig:
        room = self.config.max_length - max(len(e) for e in encoded)
        kwargs["max_new_tokens"] = min(kwargs.get("max_new_tokens", 256), room)
        return SamplingConfig(stop_token_ids=self.stop_ids, **kwargs)

    def generate_samples(self, samples: Sequence[Sample], **sampling: Any) -> list[Generation]:
        """Batched generation (left padding) of several samples."""
        encoded = [self.encode(s, sampling.get("max_new_tokens", 256)) for s in samples]
        outputs = self.engine.generate(encoded, self._sampling(encoded, **sampling))
        return [Generation(self._decode(ids), ids, len(e)) for ids, e in zip(outputs, encoded)]

    def chat(self, messages: Sequence[Message], **sampling: Any) -> str:
        """The assistant's answer to a conversation. Sampling: max_new_tokens, temperature, top_p, seed."""
        return self.generate_samples([self.sample(messages)], **sampling)[0].text

    def stream_chat(self, messages: Sequence[Message], **sampling: Any) -> Iterator[str]:
        """The answer as text pieces, yielded as soon as they decode to whole characters."""
        encoded = [self.encode(self.sample(messages), sampling.get("max_new_tokens", 256))]
        ids: list[int] = []
        shown = ""
        for step in self.engine.stream(encoded, self._sampling(encoded, **sampling)):
            if step[0] is None:
                break
            ids.append(step[0])
            text = self._decode(ids)
            if len(text) > len(shown) and not text.endswith("\ufffd"):  # else a character is still incomplete
                yield text[len(shown) :]
                shown = text
        final = self._decode(ids)
        if len(final) > len(shown):
            yield final[len(shown) :]

    def generate(
        self,
        prompt: str,
        images: Sequence[str | os.PathLike | Image.Image] = (),
        video: str | os.PathLike | None = None,
        views: Sequence[str | os.PathLike | Image.Image] = (),
        frames: int | None = None,
        **sampling: Any,
    ) -> Generation:
        """One question about images, a video, or the views of a 3D scene; `<image>` slots place them."""
        content: list[Any] = [{"type": "image", "image": i} for i in images]
        content += [{"type": "view", "image": v} for v in views]
        if video is not None:
            content.append({"type": "video", "video": video, "frames": frames})
        content.append(prompt)
        return self.generate_samples([self.sample([{"role": "user", "content": content}])], **sampling)[0]

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode([i for i in ids if i not in self.stop_ids], skip_special_tokens=True)


def load(
    model: str | os.PathLike,
    template: str = "qwen_1_5",
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> Pipeline:
    """Load a checkpoint directory (either layout) or a hub id, ready to chat."""
    net, tokenizer = load_model(model, device, dtype)
    return Pipeline(net, tokenizer, template)
