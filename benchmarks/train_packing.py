"""Training throughput and peak memory with packing vs padding, same data, model and steps.

Each mode trains the same model from the same seed on the same micro-batches (random order, so lengths
mix as in real data) in a child process of its own, so peak memory is that mode's alone (CPU: peak RSS;
CUDA: max allocated). Tokens/s counts real (non-pad) tokens: what a run gets done per second.

    python benchmarks/train_packing.py [--preset tiny] [--n 160] [--steps 12] [--batch-size 8] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

MODES = {"padding": ["data.packing=false"], "packing": ["data.packing=true"]}


def child(args: argparse.Namespace) -> None:
    import torch

    from llava_interleave.train.config import load_config
    from llava_interleave.train.runlog import read_log
    from llava_interleave.train.sft import train

    out = Path(args.work) / args.child
    overrides = [f"data.path={args.data}", f"out_dir={out}", f"model.preset={args.preset}", f"batch_size={args.batch_size}",
                 f"max_steps={args.steps}", "progress=false", "data.group_by_length=false", "data.num_frames=8",
                 f"save_every={10 * args.steps}", "optim.tune=[vision_tower,projector,llm]", *MODES[args.child]]
    if args.device:
        overrides.append(f"device={args.device}")
    train(load_config(None, overrides))
    log = read_log(out)[2:] or read_log(out)  # the first steps warm up allocators and kernels
    cuda = torch.cuda.is_available() and args.device != "cpu"
    peak = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"tokens_per_s": statistics.median(r["tokens_per_s"] for r in log), "peak_mib": peak / 2**20,
                      "losses": [r["loss"] for r in read_log(out)]}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny", choices=["tiny", "nano"])
    parser.add_argument("--n", type=int, default=160, help="synthetic training samples")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default=None)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--data", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--work", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    from llava_interleave.data.synth import write_synthetic

    with tempfile.TemporaryDirectory() as work:
        data = write_synthetic(Path(work) / "data", args.n, seed=0, bench_n=1, image_size=96).train_json
        results = {}
        for mode in MODES:
            cmd = [sys.executable, __file__, "--child", mode, "--data", str(data), "--work", work,
                   "--preset", args.preset, "--steps", str(args.steps), "--batch-size", str(args.batch_size)]
            cmd += ["--device", args.device] if args.device else []
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if done.returncode:
                sys.exit(f"{mode} failed:\n{done.stderr[-3000:]}")
            results[mode] = json.loads(done.stdout.strip().splitlines()[-1])
    pad, pack = results["padding"], results["packing"]
    same = max(abs(a - b) for a, b in zip(pad["losses"], pack["losses"]))
    print(f"preset {args.preset}, {args.steps} steps of {args.batch_size} samples, random order")
    print("| mode | tokens/s (median) | peak memory (MiB) |\n|---|---|---|")
    for mode, r in results.items():
        print(f"| {mode} | {r['tokens_per_s']:,.0f} | {r['peak_mib']:,.0f} |")
    print(f"packing / padding: {pack['tokens_per_s'] / pad['tokens_per_s']:.2f}x tokens/s, "
          f"{pack['peak_mib'] / pad['peak_mib']:.2f}x peak memory; largest loss difference {same:.1e}")


if __name__ == "__main__":
    main()
