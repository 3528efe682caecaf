"""`llava-interleave data stats`: what a data file or mixture holds, in the shape of the paper's Table 3.

Counts per (scenario, task, dataset), images per sample, and, given a checkpoint's tokenizer and
layout, tokens per sample with every image expanded to its token count. Media are not decoded: an
image's size is read from its header (anyres counts depend on it) and a video counts as `num_frames`.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..config import InterleaveConfig
from ..errors import InterleaveError
from ..model.arrange import visual_token_count
from .conversation import modalities
from .m4 import ROLES, MediaResolver, is_multi_view, record_messages, record_scenario
from .records import Record, try_record
from .sample import IMAGE_SLOT, Modality, Sample, Text, Turn
from .templates import Template

PERCENTILES = (50, 90, 99)
SCENARIOS = {Modality.IMAGE: "multi-image", Modality.VIDEO: "multi-frame", Modality.VIEW: "multi-view", Modality.PATCHES: "single-image"}


@dataclass(frozen=True)
class DataStats:
    table: list[tuple[str, str, str, int]]  # (scenario, task, dataset, samples)
    images_per_sample: list[int]
    tokens_per_sample: list[int]  # empty without a tokenizer
    unreadable: int = 0  # entries that cannot be parsed (`data validate` says why); not in the table

    def summary(self) -> dict[str, Any]:
        return {
            "samples": sum(row[3] for row in self.table),
            "unreadable": self.unreadable,
            "table": [dict(zip(("scenario", "task", "dataset", "samples"), row)) for row in self.table],
            "images_per_sample": describe(self.images_per_sample),
            "tokens_per_sample": describe(self.tokens_per_sample),
        }


def describe(values: Sequence[int]) -> dict[str, float]:
    if not values:
        return {}
    array = np.asarray(values)
    out = {f"p{p}": float(np.percentile(array, p)) for p in PERCENTILES}
    return {**out, "mean": float(array.mean()), "max": float(array.max())}


def collect(records: Sequence[Record], resolver: MediaResolver | None = None, tokens: "TokenCounter | None" = None) -> DataStats:
    """Counts per scenario/task/dataset; a lone image is "single-image" (anyres) unless the model given for
    `tokens` takes lone images whole."""
    resolver = resolver or MediaResolver(None)
    anyres = tokens.config.processor.uses_anyres if tokens is not None else True
    groups: Counter = Counter()
    images, lengths = [], []
    unreadable = 0
    for index in range(len(records)):
        record = try_record(records, index)
        if record is None:
            unreadable += 1
            continue
        modality = record_scenario(record, resolver, anyres=anyres)
        meta = record.metadata or {}
        groups[(meta.get("scenario") or SCENARIOS[modality], meta.get("task", "-"), meta.get("dataset", "-"))] += 1
        images.append(1 if record.video else len(record.images))
        if tokens is not None:
            lengths.append(tokens.count(record, resolver))
    table = [(*key, n) for key, n in sorted(groups.items())]
    return DataStats(table, images, lengths, unreadable)


class TokenCounter:
    """Tokens of a record after rendering with `template` and expanding each visual for `config`, with the
    modality rule of `data/conversation.py`; media are not decoded (image sizes come from their headers)."""

    def __init__(self, tokenizer: Any, config: InterleaveConfig, template: Template) -> None:
        self.tokenizer, self.config, self.template = tokenizer, config, template

    def count(self, record: Record, resolver: MediaResolver | None = None) -> int:
        turns = tuple(Turn(ROLES.get(who, "user"), (Text(text.replace(IMAGE_SLOT, "")),)) for who, text in record.turns)
        text = self.template.render_text(Sample(turns), add_generation_prompt=False)
        count = len(self.tokenizer.encode(text, add_special_tokens=False))
        try:
            messages = record_messages(record, resolver or MediaResolver(None), locate_video=False)
        except InterleaveError:
            return count  # a broken record is skipped with its reason when it is read
        proc = self.config.processor
        media = [m for message in messages for m in message.media]
        kinds = modalities(messages, anyres=proc.uses_anyres, multi_view=is_multi_view(record))
        newline = int(self.template.newline_after_image)
        for item, modality in zip(media, kinds):
            frames = proc.num_frames if modality == Modality.VIDEO else 1
            size = (1, 1) if modality == Modality.VIDEO else _image_size(Path(item.source))
            count += newline + visual_token_count(modality, frames, size, self.config.vision, proc)
        return count


def _image_size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return (384, 384)  # unreadable media are for `data validate` to report; count as one plain crop


def markdown(stats: DataStats) -> str:
    lines = ["| scenario | task | dataset | samples |", "|---|---|---|---|"]
    lines += [f"| {s} | {t} | {d} | {n:,} |" for s, t, d, n in stats.table]
    lines += [f"| **total** | | | **{sum(r[3] for r in stats.table):,}** |", ""]
    if stats.unreadable:
        lines += [f"{stats.unreadable:,} unreadable entries left out (`data validate` says why)", ""]
    for name, values in (("images per sample", stats.images_per_sample), ("tokens per sample", stats.tokens_per_sample)):
        if values:
            d = describe(values)
            lines.append(f"{name}: " + ", ".join(f"{k} {v:,.0f}" if k != "mean" else f"mean {v:,.1f}" for k, v in d.items()))
    return "\n".join(lines)


def plot(stats: DataStats, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("images per sample", stats.images_per_sample), ("tokens per sample (images expanded)", stats.tokens_per_sample)]
    panels = [p for p in panels if p[1]]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.5), squeeze=False)
    for ax, (title, values) in zip(axes[0], panels):
        ax.hist(values, bins=min(50, max(5, len(set(values)))), color="#4c72b0")
        ax.set_title(title)
        ax.set_ylabel("samples")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def to_json(stats: DataStats) -> str:
    return json.dumps(stats.summary(), indent=2)
