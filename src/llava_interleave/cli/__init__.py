"""`llava-interleave` command line: parse arguments, dispatch through one table, turn user errors into one line.

Each module here owns one group of verbs, its parsers and its handlers; the handlers only read arguments
and call library code. `COMMANDS` merges their tables, keyed by the words typed ("generate", "data stats").
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from ..errors import InterleaveError
from . import convert, data, run, serve, train
from . import eval as evaluate  # `eval` would shadow the builtin here

GROUPS = (run, convert, train, serve, evaluate, data)  # in the order `--help` lists them
COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    name: handler for group in GROUPS for name, handler in group.HANDLERS.items()
}


EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE (13): the status a shell shows for a writer whose reader left


class Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (exit status 2, as argparse's): the full usage of `generate`
    spans several lines and would bury the one that says what is wrong. Subparsers inherit the class."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="llava-interleave", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        group.add_parsers(sub)
    return parser


def command_name(args: argparse.Namespace) -> str:
    """The table key of the parsed command: a group's verb is stored as `<group>_command` ("data stats")."""
    verb = getattr(args, f"{args.command}_command", None)
    return f"{args.command} {verb}" if verb else args.command


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. User errors (`InterleaveError`) print one line and exit 1; anything else is a bug
    and keeps its traceback."""
    args = build_parser().parse_args(argv)
    try:
        code = COMMANDS[command_name(args)](args)
        sys.stdout.flush()  # so a reader that left (`| head`) is noticed here, not at exit where it cannot be caught
        return code
    except InterleaveError as err:
        if args.debug or os.environ.get("LLAVA_INTERLEAVE_DEBUG"):
            raise
        print(f"error: {err}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return _reader_left()
    except KeyboardInterrupt:
        return 130


def _reader_left() -> int:
    """End quietly when stdout's reader has gone (`data synth ... | head -1`), as a process ended by SIGPIPE
    would. stdout is pointed at devnull first, so the flush at exit cannot raise again (the Python docs' recipe)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return EXIT_BROKEN_PIPE
