"""`data validate`, `data stats`, `data synth`: check, describe and make training data."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import options


def add_parsers(sub: Any) -> None:
    group = sub.add_parser("data", help="check, describe and make training data")
    verbs = group.add_subparsers(dest="data_command", required=True)
    media = argparse.ArgumentParser(add_help=False)
    media.add_argument("--image-root", default=None, help="folder that relative image paths start from")
    media.add_argument("--video-root", default=None, help="folder of videos (or frame folders) named by video id")
    media.add_argument("--video-map", default=None, help="JSON file mapping video ids to paths")

    val = verbs.add_parser("validate", parents=[media], help="report broken samples (exit 1 if any)")
    val.add_argument("path", help="a .json/.jsonl file or a mixture .yaml")
    val.add_argument("--fix-out", default=None, help="write the good samples here (.json or .jsonl)")
    val.add_argument("--no-media", action="store_true", help="skip opening media files")

    st = verbs.add_parser("stats", parents=[media], help="samples per scenario/task/dataset, images and tokens per sample")
    st.add_argument("path", help="a .json/.jsonl file or a mixture .yaml")
    options.add_model(st, "checkpoint whose tokenizer and layout count tokens per sample")
    options.add_template(st)
    st.add_argument("--json", action="store_true", help="print one JSON object instead of markdown")
    st.add_argument("--plot", default=None, help="write histograms to this PNG")

    syn = verbs.add_parser("synth", help="write procedurally drawn M4-style data and a held-out bench")
    syn.add_argument("--out", required=True)
    syn.add_argument("--n", type=int, default=200, help="training samples")
    syn.add_argument("--seed", type=int, default=0)
    syn.add_argument("--bench-n", type=int, default=None, help="held-out bench samples (default n // 5)")
    syn.add_argument("--tasks", default=None, help="comma-separated task datasets to draw, e.g. SynthDescribe (default: all)")


def validate(args: argparse.Namespace) -> int:
    from ..data.validate import run_validate

    return run_validate(
        args.path, args.image_root, args.video_root, args.fix_out, out=sys.stdout,
        video_map=args.video_map, check_media=not args.no_media,
    )


def stats(args: argparse.Namespace) -> int:
    from ..data import stats as data_stats
    from ..data.m4 import MediaResolver
    from ..data.records import open_records

    resolver = MediaResolver(_path(args.image_root), _path(args.video_root), _path(args.video_map))
    counter = None
    if args.model:
        from ..data.templates import get_template
        from ..model.checkpoint import load_tokenizer, read_config, resolve

        path = resolve(args.model)
        counter = data_stats.TokenCounter(load_tokenizer(path), read_config(path), get_template(args.template))
    result = data_stats.collect(open_records(args.path), resolver, counter)
    print(data_stats.to_json(result) if args.json else data_stats.markdown(result))
    if args.plot:
        print(f"wrote {data_stats.plot(result, Path(args.plot))}", file=sys.stderr)
    return 0


def synth(args: argparse.Namespace) -> int:
    from ..data.pairs import write_pairs
    from ..data.records import DataError
    from ..data.synth import write_synthetic

    tasks = [t.strip() for t in args.tasks.split(",")] if args.tasks else None
    try:
        summary = write_synthetic(Path(args.out), args.n, args.seed, args.bench_n, tasks=tasks)
    except ValueError as err:
        raise DataError(str(err)) from err
    print(summary)
    pairs = write_pairs(summary.train_json, Path(args.out) / "dpo.jsonl", args.seed)
    print(f"  dpo.jsonl: {pairs} preference pairs (the true answer chosen, a wrong one rejected)")
    return 0


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None


HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {
    "data validate": validate, "data stats": stats, "data synth": synth,
}
