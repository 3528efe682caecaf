"""The `data` section of a training config, also what `SFTDataset` and DPO read their settings from.

One frozen dataclass serves both, so a setting added for training reaches the dataset without being copied
field by field; the defaults are what a training YAML gets when it leaves a key out.
"""

from __future__ import annotations

from dataclasses import dataclass

from .truncate import TruncationPolicy


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    path: str = ""  # a .json/.jsonl file or a mixture .yaml
    image_root: str | None = None  # default: the data file's folder
    video_root: str | None = None
    video_map: str | None = None
    max_length: int = 4096
    truncation: TruncationPolicy = "trailing_turns"
    num_frames: int = 16
    front_fraction: float = 0.0  # share of samples whose images move in front of the text (paper: mixed)
    max_skip_ratio: float = 0.2  # stop when more than this share of samples is broken
    packing: bool = False  # pack each micro-batch's samples into fewer rows (block-diagonal attention)
    pack_tokens: int = 0  # row budget when packing; 0 = the micro-batch's longest sample (no row gets longer)
    group_by_length: bool = True  # batches of one modality and similar length
    seed: int = 0  # of each sample's placement draw; a training config sets it to the run's `seed` unless given
