"""Eval throughput: bench items answered per second by `run_eval`, the bundled model on the synthetic bench.

A synthetic bench is drawn into a temp dir (--tasks, --items per task, a fixed seed); the model is loaded
once; then, for each --batch-sizes value, `run_eval` answers every item into a fresh run dir, --repeats
times (sizes alternated), and the median items/s is printed with the scores (which must not depend on the
batch size). The script uses only APIs that have been stable across versions, so the same file can be run
against an older checkout to compare code before and after a change:

    python benchmarks/eval_throughput.py [--items 40] [--batch-sizes 1 16] [--repeats 3] [--max-new-tokens 16]
    PYTHONPATH=/path/to/old/checkout/src python benchmarks/eval_throughput.py ...   # the same, older code
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import llava_interleave
from llava_interleave.assets import BUNDLED_MODEL
from llava_interleave.cli import main as cli
from llava_interleave.eval.runner import EvalSettings, run_eval

TASKS = "SynthImageColour,SynthColourChange,SynthSceneSide,SynthDetail,SynthName"


def version() -> str:
    """Which code is measured, for labelling the numbers: its commit when it is a git checkout, else its path."""
    package = Path(llava_interleave.__file__).parent
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=package, capture_output=True, text=True)
    except OSError:
        out = None
    return out.stdout.strip() if out is not None and out.returncode == 0 and out.stdout.strip() else str(package)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=40, help="items per task")
    parser.add_argument("--tasks", default=TASKS)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tasks = args.tasks.split(",")
        with contextlib.redirect_stdout(io.StringIO()):
            cli(["data", "synth", "--out", str(root / "synth"), "--n", "0", "--seed", "4242",
                 "--bench-n", str(args.items * len(tasks)), "--tasks", args.tasks])
        bench = root / "synth" / "bench.json"
        pipe = llava_interleave.load(BUNDLED_MODEL)
        seconds: dict[int, list[float]] = {size: [] for size in args.batch_sizes}
        scores: dict[int, float] = {}
        for repeat in range(args.repeats):
            for size in args.batch_sizes:
                settings = EvalSettings(model="bundled", bench=str(bench), out_dir=root / f"run-{size}-{repeat}",
                                        protocol="harness", batch_size=size, max_new_tokens=args.max_new_tokens)
                start = time.perf_counter()
                with contextlib.redirect_stderr(io.StringIO()):
                    result = run_eval(settings, pipe)
                seconds[size].append(time.perf_counter() - start)
                assert result.scores is not None
                scores[size] = result.scores.overall
        items = args.items * len(tasks)
    print(f"code at {version()}: {items} items ({args.tasks}), harness protocol, --max-new-tokens "
          f"{args.max_new_tokens}, median of {args.repeats}")
    print("| --batch-size | seconds | items/s | overall score |\n|---|---|---|---|")
    for size in args.batch_sizes:
        median = statistics.median(seconds[size])
        print(f"| {size} | {median:.2f} | {items / median:.1f} | {scores[size]:.4f} |")
    if len(args.batch_sizes) > 1:
        first, last = args.batch_sizes[0], args.batch_sizes[-1]
        print(f"items/s at --batch-size {last} / at {first}: "
              f"{statistics.median(seconds[first]) / statistics.median(seconds[last]):.2f}x")


if __name__ == "__main__":
    main()
