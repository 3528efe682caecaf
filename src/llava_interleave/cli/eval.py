"""`eval` and `score`: answer a bench and score it, or score a predictions file that already exists."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..assets import bundled_model
from ..eval.scoring import PROTOCOLS, format_scores, score_file
from . import options


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("eval", help="answer a LLaVA-Interleave-style bench, score it and write a report",
                       description="Greedy answers appended to OUT/predictions.jsonl (a rerun resumes); "
                                   "OUT/report.md, report.json and scores.png at the end. Runs sharded under torchrun.")
    options.add_loading(p, device_help="cpu, cuda, cuda:1 ... (under torchrun: one GPU per rank)")
    p.add_argument("--bench", required=True, help="bench JSON/JSONL or parquet file, or a folder of the original JSON files or parquet configs")
    p.add_argument("--split", default=None, choices=["in_domain", "out_domain", "multi_view"],
                   help="which file / parquet config of a bench folder (default in_domain)")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--protocol", default="paper", choices=PROTOCOLS, help="scoring protocol, also sets the new-token cap")
    p.add_argument("--max-new-tokens", type=int, default=None, help="default: 1024 (paper) or 16 (harness)")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--limit", type=int, default=None, help="only the first N samples (after --datasets)")
    p.add_argument("--datasets", default=None, help="comma-separated dataset names to keep")
    options.add_frames(p, "frames sampled per video (default: the model's, 16)")
    p.add_argument("--image-root", default=None, help="folder of the bench images (default: the JSON's folder)")

    p = sub.add_parser("score", help="score a predictions file (ours or the original evaluation's output)")
    p.add_argument("predictions", help="predictions.jsonl")
    p.add_argument("--protocol", default="paper", choices=PROTOCOLS, help="paper (authors' scorer, x100) or harness (0..1)")
    p.add_argument("--json", action="store_true", help='print {"protocol", "datasets", "categories", "splits", ...}')


def evaluate(args: argparse.Namespace) -> int:
    from ..eval.runner import EvalSettings, run_eval

    datasets = tuple(d.strip() for d in (args.datasets or "").split(",") if d.strip())
    model = str(args.model or bundled_model())
    settings = EvalSettings(model=model, bench=args.bench, out_dir=Path(args.out), split=args.split,
                            protocol=args.protocol, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                            limit=args.limit, datasets=datasets, frames=args.frames, video_pooling=args.video_pooling,
                            image_aspect=args.image_aspect, multi_aspect=args.multi_aspect,
                            template=args.template, image_root=args.image_root, device=args.device, dtype=args.dtype)
    result = run_eval(settings)
    if result.scores is not None:
        print(format_scores(result.scores))
        print(f"predictions: {result.predictions}\nreport: {result.report}")
    return 0


def score(args: argparse.Namespace) -> int:
    scores = score_file(args.predictions, args.protocol)
    print(json.dumps(scores.to_json(), ensure_ascii=False) if args.json else format_scores(scores))
    return 0


HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {"eval": evaluate, "score": score}
