"""`train`, `dpo` and `plot`: fine-tune from a YAML config (plus KEY=VALUE overrides) and draw a run's curves."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from ..train.config import load_config


def add_parsers(sub: Any) -> None:
    for name, text in (("train", "supervised fine-tuning (SFT) from a YAML config"),
                       ("dpo", "DPO preference tuning from a YAML config")):
        p = sub.add_parser(name, help=text, description=text + ". Every key can be set as section.key=value.")
        p.add_argument("config", nargs="?", default=None, help="YAML config (optional when everything is given as KEY=VALUE)")
        p.add_argument("overrides", nargs="*", default=[], help="e.g. optim.lr=2e-5 data.packing=true out_dir=runs/x")
        p.add_argument("--resume", action="store_true", help="continue from the newest intact checkpoint in out_dir")
        p.add_argument("--allow-config-change", action="store_true",
                       help="with --resume: continue although the config differs from the checkpoint's "
                            "(config.yaml keeps the original; the new one goes to config.history/)")
    p.add_argument("--write-reference", default=None, metavar="JSONL",
                   help="only score the pairs with the reference model and write their log-probs here")
    p = sub.add_parser("plot", help="draw a run's loss and learning-rate curves to PNG")
    p.add_argument("run_dir")
    p.add_argument("--out", default=None, help="PNG path (default RUN_DIR/curves.png)")


def _split(args: argparse.Namespace) -> tuple[str | None, list[str]]:
    """A first positional with '=' is an override, not a config file."""
    if args.config is not None and "=" in args.config:
        return None, [args.config, *args.overrides]
    return args.config, list(args.overrides)


def train(args: argparse.Namespace) -> int:
    from ..train.sft import train as run

    path, overrides = _split(args)
    run(load_config(path, overrides), resume=args.resume, allow_config_change=args.allow_config_change)
    return 0


def dpo(args: argparse.Namespace) -> int:
    from ..train.dpo import train as run
    from ..train.dpo import write_reference

    path, overrides = _split(args)
    config = load_config(path, overrides)
    if args.write_reference:
        write_reference(config, args.write_reference)
    else:
        run(config, resume=args.resume, allow_config_change=args.allow_config_change)
    return 0


def plot(args: argparse.Namespace) -> int:
    from ..train.plot import plot_run

    print(plot_run(args.run_dir, args.out))
    return 0


HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {"train": train, "dpo": dpo, "plot": plot}
