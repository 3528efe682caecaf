"""What the `llava-interleave data ...` subcommands do; `cli.py` only parses and dispatches here."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from .data.m4 import DataError


def validate(args: Any) -> int:
    from .data.validate import run_validate

    return run_validate(
        args.path, args.image_root, args.video_root, args.fix_out, out=sys.stdout,
        video_map=args.video_map, check_media=not args.no_media,
    )


def stats(args: Any) -> int:
    from .data import stats as data_stats
    from .data.m4 import MediaResolver, open_records

    resolver = MediaResolver(_path(args.image_root), _path(args.video_root), _path(args.video_map))
    counter = None
    if args.model:
        from .data.templates import get_template
        from .model.checkpoint import load_tokenizer, read_config, resolve

        path = resolve(args.model)
        counter = data_stats.TokenCounter(load_tokenizer(path), read_config(path), get_template(args.template))
    result = data_stats.collect(open_records(args.path), resolver, counter)
    print(data_stats.to_json(result) if args.json else data_stats.markdown(result))
    if args.plot:
        print(f"wrote {data_stats.plot(result, Path(args.plot))}", file=sys.stderr)
    return 0


def synth(args: Any) -> int:
    from .data.pairs import write_pairs
    from .data.synth import write_synthetic

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
