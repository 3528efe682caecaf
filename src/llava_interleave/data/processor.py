"""From a typed `Sample` to model inputs: pixels per visual, and token ids with every slot expanded.

Each visual's slot becomes exactly `visual_token_count(...)` copies of the image token id, so the
model's merge is a plain scatter. Labels are -100 except on supervised (assistant) text.
"""

from __future__ import annotations

from itertools import groupby

import torch
from transformers import PreTrainedTokenizerBase

from ..config import InterleaveConfig
from ..errors import PromptError
from ..model.anyres import grid_shape
from ..model.arrange import visual_token_count
from .batch import Encoded, VisualInput
from .image_processing import anyres_pictures, pad_to_square, to_tensor
from .sample import IMAGE_SLOT, Modality, Sample, Visual
from .templates import Template

IGNORE_INDEX = -100


class Processor:
    def __init__(self, tokenizer: PreTrainedTokenizerBase, config: InterleaveConfig, template: Template) -> None:
        self.tokenizer = tokenizer
        self.config = config
        self.template = template

    def prepare_visual(self, visual: Visual) -> VisualInput:
        vision, proc = self.config.vision, self.config.processor
        if visual.modality == Modality.PATCHES and not proc.uses_anyres:
            # the modality rule (data/conversation.py) never makes one for such a model: cutting an image into
            # the default 384-px grid pinpoints would give hundreds of crops
            raise PromptError(f"a multi-patch image needs a model that uses anyres (this one uses {proc.image_aspect})")
        size = vision.image_size
        first = visual.frames[0]
        grid = None
        if visual.modality == Modality.PATCHES:
            pictures = anyres_pictures(first, proc.grid_pinpoints, size)
            grid = grid_shape(first.size, proc.grid_pinpoints, size)
        elif proc.whole_image_aspect == "pad":
            pictures = [pad_to_square(frame, proc.image_mean) for frame in visual.frames]
        else:
            pictures = list(visual.frames)
        pixels = torch.stack([to_tensor(p, size, proc.image_mean, proc.image_std) for p in pictures])
        count = visual_token_count(visual.modality, len(visual.frames), first.size, vision, proc)
        return VisualInput(pixel_values=pixels, modality=visual.modality, image_size=first.size, grid=grid, num_tokens=count,
                           pooling=proc.video_pooling)

    def encode(self, sample: Sample, add_generation_prompt: bool = True) -> Encoded:
        """Render with the template, tokenise text runs, expand slots; labels mark supervised tokens."""
        ids: list[int] = []
        labels: list[int] = []
        visuals: list[VisualInput] = []
        turn_ends: list[int] = []
        starts: list[int] = []
        pieces = self.template.render(sample, add_generation_prompt)
        for (is_visual, trainable, end), run in groupby(pieces, key=lambda p: (p.visual is not None, p.trainable, p.turn_end)):
            if is_visual:
                for piece in run:
                    assert piece.visual is not None
                    visual = self.prepare_visual(piece.visual)
                    visuals.append(visual)
                    starts.append(len(ids))
                    ids += [self.config.image_token_id] * visual.num_tokens
                    labels += [IGNORE_INDEX] * visual.num_tokens
                continue
            text = "".join(p.text for p in run)
            if IMAGE_SLOT in text:
                raise PromptError(f"text contains an {IMAGE_SLOT} that is not bound to an image: {text[:80]!r}")
            tokens = self.tokenizer.encode(text, add_special_tokens=False)
            ids += tokens
            labels += tokens if trainable else [IGNORE_INDEX] * len(tokens)
            if end:
                turn_ends.append(len(ids))
        return Encoded(ids, labels, tuple(visuals), tuple(turn_ends), tuple(starts))
