"""Which category and split each LLaVA-Interleave Bench dataset belongs to, and the paper's numbers.

The in-domain categories group several datasets; out-domain and multi-view datasets are each their own
category (as the paper's tables and the harness list them). A dataset we do not know becomes a category of
its own, so a new set is reported rather than dropped (the harness drops it silently).

Our synthetic bench (`data synth`) is grouped by *scenario*: "Synth multi-image" (SynthSpotDiff,
SynthWhichMore, SynthCount, SynthDescribe, SynthName, SynthImageColour), "Synth video" (SynthMotion,
SynthColourChange), "Synth multi-view" (SynthScene3D, SynthSceneSide) and "Synth multi-patch"
(SynthDetail). The paper's claims are per scenario (a model trained on interleaved data should hold up
on each), and the frame-count / pooling ablation moves only the video category, so
that is the grouping the numbers should answer to. The per-dataset scores stay in every report.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SPLITS = ("in_domain", "out_domain", "multi_view")
_SPLIT_ALIASES = {"in_domain": "in_domain", "out_domain": "out_domain", "out_of_domain": "out_domain",
                  "multi_view": "multi_view", "multi_view_in_domain": "multi_view"}

IN_DOMAIN: dict[str, tuple[str, ...]] = {
    "Spot-the-Diff": ("Spot-the-Diff", "Birds-to-Words", "CLEVR-Change"),
    "Image-Edit": ("IEdit", "HQ-Edit", "MagicBrush"),
    "Visual-Story-Telling": ("AESOP", "FlintstonesSV", "PororoSV", "VIST"),
    "Visual-Cloze": ("COMICS_Dialogue", "RecipeQA_VisualCloze"),
    "Text-Rich-VQA": ("WebQA", "TQA", "OCR-VQA", "DocVQA"),
    "Multi-Image-VQA": ("MIT-States_StateCoherence", "MIT-States_PropertyCoherence", "VISION", "RecipeQA_ImageCoherence"),
    "Puzzle": ("RAVEN",),
    "NLVR2": ("NLVR2_Mantis",),
    "QBench": ("QBench",),
}
OUT_DOMAIN: dict[str, tuple[str, ...]] = {
    "Mantis": ("Mantis",), "BLINK": ("BLINK",), "MathVerse-mv": ("MathVerse-mv", "MathVerse"),
    "SciVerse-mv": ("SciVerse-mv", "SciVerse"), "MMMU-mv": ("MMMU-mv", "MMMU"),
}
MULTI_VIEW: dict[str, tuple[str, ...]] = {
    name: (name,) for name in ("ScanQA", "ALFRED", "nuscenes", "ScanNet_chat", "ScanNet_task")
}
SYNTHETIC: dict[str, tuple[str, ...]] = {
    "Synth multi-image": ("SynthSpotDiff", "SynthWhichMore", "SynthCount", "SynthDescribe", "SynthName",
                          "SynthImageColour"),
    "Synth video": ("SynthMotion", "SynthColourChange"),
    "Synth multi-view": ("SynthScene3D", "SynthSceneSide"),
    "Synth multi-patch": ("SynthDetail",),
}

# Paper (facts section 7), released 7B before / after video DPO, x100: only these bench categories have them.
PAPER_NUMBERS: dict[str, tuple[float, float]] = {
    "Mantis": (62.7, 60.8), "BLINK": (52.7, 51.7), "QBench": (73.0, 86.8), "NLVR2": (89.1, 87.7), "ScanQA": (32.2, 25.5),
}
PAPER_MODELS = ("7B", "7B-DPO")


@dataclass(frozen=True)
class Placement:
    category: str
    split: str | None  # None: the dataset's split is not known from its name


def _key(name: str) -> str:
    """Names compared without case or punctuation: "OCR-VQA" = "ocr_vqa", "nuscenes" = "NuScenes"."""
    return re.sub(r"[^0-9a-z]", "", name.lower())


_PLACEMENTS: dict[str, Placement] = {
    _key(dataset): Placement(category, split)
    for table, split in ((IN_DOMAIN, "in_domain"), (OUT_DOMAIN, "out_domain"), (MULTI_VIEW, "multi_view"), (SYNTHETIC, None))
    for category, datasets in table.items()
    for dataset in datasets
}


def place(dataset: str) -> Placement:
    """The category (and split, where the name tells it) of a dataset; an unknown one is its own category."""
    return _PLACEMENTS.get(_key(dataset), Placement(dataset, None))


def canonical_split(name: str | None) -> str | None:
    """'out_of_domain' (the parquet config) -> 'out_domain', 'multi_view_in_domain' -> 'multi_view'; None stays."""
    if name is None or not str(name).strip():
        return None
    return _SPLIT_ALIASES.get(str(name).strip().lower(), str(name).strip().lower())
