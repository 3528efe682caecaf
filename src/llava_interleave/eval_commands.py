"""`eval` and `score`: the bench commands behind the CLI."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .eval.scoring import PROTOCOLS, format_scores, score_file


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("score", help="score a predictions file (ours or the original evaluation's output)")
    p.add_argument("predictions", help="predictions.jsonl")
    p.add_argument("--protocol", default="paper", choices=PROTOCOLS, help="paper (authors' scorer, x100) or harness (0..1)")
    p.add_argument("--json", action="store_true", help='print {"protocol", "datasets", "categories", "splits", ...}')


def score(args: argparse.Namespace) -> int:
    scores = score_file(args.predictions, args.protocol)
    print(json.dumps(scores.to_json(), ensure_ascii=False) if args.json else format_scores(scores))
    return 0
