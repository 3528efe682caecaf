"""Turn a predictions file into dataset, category and split scores under either protocol.

Reads our `predictions.jsonl` and the original evaluation's output (one JSON object per line with
`dataset`, `sample_id`, `pred_response`, `gt_response`, `question_type`): ours uses the same keys and adds
`turn`, `category`, `split` and `error`. A sample that failed (missing image, prompt too long) has an
`error` and an empty prediction, so it scores 0 like any empty answer: a broken run cannot look better.

  paper:   dataset = mean of its samples; category = unweighted mean of its datasets; x100.
  harness: category = mean of all its samples, whatever their dataset; 0..1.
Both:      split = unweighted mean of the categories present in it; overall = mean of the splits.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from statistics import fmean
from typing import Any, Literal

from ..errors import InterleaveError
from .categories import canonical_split, place
from .metrics import harness_score, paper_score

Protocol = Literal["paper", "harness"]
PROTOCOLS: tuple[Protocol, ...] = ("paper", "harness")
MULTI_CHOICE = "multi-choice"


class PredictionsError(InterleaveError):
    """A predictions file is missing or a line is not a prediction."""


@dataclass(frozen=True, kw_only=True)
class Prediction:
    """One answered turn: what the model said next to the reference answer."""

    sample_id: str
    dataset: str
    category: str
    split: str
    question_type: str
    prediction: str
    answer: str
    turn: int = 0
    error: str | None = None

    @property
    def key(self) -> tuple[str, str, int]:
        """Sample ids are only unique within a dataset in some benches."""
        return self.dataset, self.sample_id, self.turn

    def to_json(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """The line written to predictions.jsonl, in the original evaluation's key names."""
        line = {"sample_id": self.sample_id, "turn": self.turn, "dataset": self.dataset, "category": self.category,
                "split": self.split, "question_type": self.question_type, "pred_response": self.prediction,
                "gt_response": self.answer, **(extra or {})}
        return line if self.error is None else {**line, "error": self.error}


def prediction_from_json(obj: Any, where: str) -> Prediction:
    """A `Prediction` from one line of either format; a missing key names the file and line."""
    if not isinstance(obj, dict):
        raise PredictionsError(f"{where}: expected a JSON object")
    missing = [k for k in ("sample_id", "dataset", "pred_response", "gt_response") if k not in obj]
    if missing:
        raise PredictionsError(f"{where}: missing {', '.join(missing)}")
    dataset = str(obj["dataset"])
    placed = place(dataset)
    split = canonical_split(obj.get("split") or obj.get("split_name")) or placed.split or "in_domain"
    return Prediction(sample_id=str(obj["sample_id"]), dataset=dataset,
                      category=str(obj.get("category") or placed.category), split=split,
                      question_type=str(obj.get("question_type") or "open-ended"),
                      prediction=str(obj["pred_response"] or ""), answer=str(obj["gt_response"] or ""),
                      turn=int(obj.get("turn", 0)), error=obj.get("error"))


def read_lines(path: Path) -> list[dict[str, Any]]:
    """The complete JSON lines of a file; an unfinished last line (a killed writer) is left out."""
    lines = path.read_text(encoding="utf-8").splitlines()
    out = []
    for number, text in enumerate(lines, 1):
        if not text.strip():
            continue
        try:
            out.append(json.loads(text))
        except json.JSONDecodeError as err:
            if number == len(lines):
                break
            raise PredictionsError(f"{path}:{number}: invalid JSON: {err}") from err
    return out


def read_predictions(path: str | Path) -> list[Prediction]:
    """Every prediction of a file (a later line for the same sample and turn replaces an earlier one)."""
    path = Path(path)
    if not path.is_file():
        raise PredictionsError(f"predictions file not found: {path}")
    by_key = {}
    for number, obj in enumerate(read_lines(path), 1):
        prediction = prediction_from_json(obj, f"{path}:{number}")
        by_key[prediction.key] = prediction
    return list(by_key.values())


@dataclass(frozen=True, kw_only=True)
class Scores:
    """Scores of one protocol: per dataset, category and split, plus the overall mean of the splits."""

    protocol: Protocol
    datasets: dict[str, float]
    categories: dict[str, float]
    splits: dict[str, float]
    overall: float
    samples: dict[str, int] = field(default_factory=dict)  # scored samples per dataset
    errors: int = 0
    category_split: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"protocol": self.protocol, "datasets": self.datasets, "categories": self.categories,
                "splits": self.splits, "overall": self.overall, "samples": self.samples, "errors": self.errors}


def score_one(prediction: Prediction, protocol: Protocol) -> float | None:
    rule = paper_score if protocol == "paper" else harness_score
    return rule(prediction.prediction, prediction.answer, prediction.question_type == MULTI_CHOICE)


def score(predictions: Iterable[Prediction], protocol: Protocol) -> Scores:
    """Aggregate per-answer scores the protocol's way (see the module docstring)."""
    if protocol not in PROTOCOLS:
        raise PredictionsError(f"unknown protocol {protocol!r}; use paper or harness")
    per_dataset: dict[str, list[float]] = defaultdict(list)
    per_category: dict[str, list[float]] = defaultdict(list)
    datasets_of: dict[str, set[str]] = defaultdict(set)
    split_of: dict[str, str] = {}
    errors = 0
    for p in predictions:
        errors += p.error is not None
        value = score_one(p, protocol)
        if value is None:
            continue
        per_dataset[p.dataset].append(value)
        per_category[p.category].append(value)
        datasets_of[p.category].add(p.dataset)
        split_of.setdefault(p.category, p.split)
    scale = 100.0 if protocol == "paper" else 1.0
    datasets = {d: scale * fmean(v) for d, v in sorted(per_dataset.items())}
    if protocol == "paper":
        categories = {c: fmean(datasets[d] for d in sorted(ds)) for c, ds in sorted(datasets_of.items())}
    else:
        categories = {c: fmean(v) for c, v in sorted(per_category.items())}
    splits = _split_means(categories, split_of)
    overall = fmean(splits.values()) if splits else 0.0
    return Scores(protocol=protocol, datasets=datasets, categories=categories, splits=splits, overall=overall,
                  samples={d: len(v) for d, v in sorted(per_dataset.items())}, errors=errors,
                  category_split=dict(sorted(split_of.items())))


def _split_means(categories: dict[str, float], split_of: dict[str, str]) -> dict[str, float]:
    grouped: dict[str, list[float]] = defaultdict(list)
    for category, value in categories.items():
        grouped[split_of[category]].append(value)
    return {s: fmean(v) for s, v in sorted(grouped.items())}


def score_file(path: str | Path, protocol: Protocol) -> Scores:
    return score(read_predictions(path), protocol)


def format_scores(scores: Scores) -> str:
    """A plain-text summary for the terminal: one line per split, category and dataset."""
    digits = 2 if scores.protocol == "paper" else 4
    rows: list[str] = [f"protocol {scores.protocol}: overall {scores.overall:.{digits}f}"]
    for kind, table in (("split", scores.splits), ("category", scores.categories), ("dataset", scores.datasets)):
        rows += [f"  {kind:<8} {name:<32} {value:.{digits}f}" for name, value in table.items()]
    if scores.errors:
        rows.append(f"  {scores.errors} answer(s) failed and score 0 (see 'error' in the predictions)")
    return "\n".join(rows)
