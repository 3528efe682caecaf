"""fp32 vs bf16 on CPU: answer speed, and the memory of loading a bf16 checkpoint in either dtype.

A random original-layout checkpoint (the released structure and vision geometry: anyres, newline, 729
tokens per 384-px image; smaller widths, set below) is written in bf16, as the releases are stored. Then:
  * time to first token (raw PIL images -> first token: preprocessing, tower, prefill) and decode tokens/s
    of one greedy answer of exactly --new-tokens tokens about --images images, with the model loaded as
    fp32 and as bf16 in this process; runs alternate after a warm-up round, medians of --repeats;
  * peak RSS growth of loading a bf16 checkpoint as bf16 and as fp32, each in a fresh child process
    (the high-water RSS after the load minus the RSS before it), next to the size of the weights file; this
    checkpoint has the 0.5B's LM width and depth (--memory-hidden, --memory-layers), so the fixed costs
    of a load (tokenizer, allocator) weigh little beside the weights.
The ratios say whether bf16 pays on this CPU: it is fast where the CPU has bf16 instructions (AVX512-BF16,
AMX) and emulated, hence slower, where it has not; the CPU flags are printed with the numbers.

    python benchmarks/cpu_dtype.py [--images 2] [--new-tokens 16] [--repeats 3] [--hidden 512] [--layers 8] \
        [--memory-hidden 1024] [--memory-layers 24]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw

import llava_interleave
from llava_interleave.assets.tiny import make_checkpoint, make_tokenizer, tiny_config
from llava_interleave.config import ProcessorConfig, TextConfig, VisionConfig
from llava_interleave.engine import SamplingConfig
from llava_interleave.model.checkpoint import load_model, read_weights

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
QUESTION = "What is different between the images?"


def build_checkpoint(out: Path, hidden: int, layers: int) -> Path:
    tokenizer = make_tokenizer()
    vision = VisionConfig(image_size=384, patch_size=14, hidden_size=256, intermediate_size=1024, num_layers=4, num_heads=4)
    text = TextConfig(vocab_size=len(tokenizer) + 8, hidden_size=hidden, intermediate_size=hidden * 11 // 4,
                      num_layers=layers, num_heads=hidden // 64, num_kv_heads=hidden // 64, max_position_embeddings=32768)
    config = tiny_config(tokenizer, "original", ProcessorConfig(), vision=vision, text=text)
    return make_checkpoint(out, config, tokenizer, dtype=torch.bfloat16)


def images(count: int) -> list[Image.Image]:
    """Non-square pictures: several are padded to square (730 tokens each), a lone one is cut by anyres."""
    out = []
    for i in range(count):
        image = Image.new("RGB", (320 + 40 * i, 240), (230, 230, 220))
        ImageDraw.Draw(image).ellipse((20 + 30 * i, 80, 100 + 30 * i, 160), fill=(200, 40, 40))
        out.append(image)
    return out


def answer(pipe, pictures: list[Image.Image], new_tokens: int) -> tuple[float, float]:
    """(seconds to the first token, decode tokens/s) of one greedy answer with no stop token."""
    start = time.perf_counter()
    encoded = pipe.processor.encode(pipe.sample([{"role": "user", "content": [*pictures, QUESTION]}]))
    first = start
    for count, _ in enumerate(pipe.engine.stream([encoded], SamplingConfig(max_new_tokens=new_tokens)), 1):
        if count == 1:
            first = time.perf_counter()
    return first - start, (new_tokens - 1) / (time.perf_counter() - first)


def load_memory(checkpoint: str, dtype: str) -> tuple[float, float]:
    """Child process, imports done: (peak RSS growth of loading `checkpoint` in `dtype`, RSS growth once every
    weight has been read), MiB. Weights kept in their stored dtype stay mapped from the file until first
    read, so only the second number counts them. VmHWM, not ru_maxrss: a child inherits its parent's
    ru_maxrss across exec, VmHWM starts afresh."""
    before = _status_mib("VmRSS")
    net, _ = load_model(checkpoint, "cpu", DTYPES[dtype])
    peak = _status_mib("VmHWM") - before
    with torch.no_grad():
        for p in net.parameters():
            p.sum()
    return max(peak, _status_mib("VmHWM") - before), _status_mib("VmRSS") - before


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(f"{field}:")) / 1024


def cpu_flags() -> str:
    with open("/proc/cpuinfo") as f:
        flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    return ", ".join(flag for flag in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if flag in flags) or "none listed"


def timings(checkpoint: Path, args: argparse.Namespace) -> dict[str, list[tuple[float, float]]]:
    """Every run of both dtypes, alternated so machine noise hits both alike; the caches are off, so each
    run computes its whole prompt."""
    pipes = {name: llava_interleave.load(checkpoint, device="cpu", dtype=dtype, cache_mb=0) for name, dtype in DTYPES.items()}
    pictures = images(args.images)
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in pipes}
    for repeat in range(args.repeats + 1):  # round 0 warms up
        for name, pipe in pipes.items():
            result = answer(pipe, pictures, args.new_tokens)
            if repeat:
                runs[name].append(result)
    return runs


def report(runs: dict[str, list[tuple[float, float]]], memory: dict[str, tuple[float, float]], file_mib: float,
           params: int, args: argparse.Namespace) -> None:
    ttft = {name: statistics.median(r[0] for r in rs) for name, rs in runs.items()}
    decode = {name: statistics.median(r[1] for r in rs) for name, rs in runs.items()}
    print(f"{params / 1e6:.0f}M parameters, {args.images} images, {args.new_tokens} new tokens (greedy), "
          f"{torch.get_num_threads()} threads, CPU flags: {cpu_flags()}; median of {args.repeats} alternated runs")
    print(f"time to first token of each run: {({k: [round(r[0], 3) for r in v] for k, v in runs.items()})}; "
          f"load average {os.getloadavg()[0]:.1f}\n")
    print("| CPU | float32 | bfloat16 | ratio |\n|---|---|---|---|")
    print(f"| time to first token (s) | {ttft['float32']:.3f} | {ttft['bfloat16']:.3f} | "
          f"bf16 takes {ttft['bfloat16'] / ttft['float32']:.2f}x the time |")
    print(f"| decode (tokens/s) | {decode['float32']:.1f} | {decode['bfloat16']:.1f} | "
          f"{decode['bfloat16'] / decode['float32']:.2f}x |")
    for i, what in enumerate(("peak RSS growth of the load, then reading every weight", "RSS growth once every weight is read")):
        fp32, bf16 = memory["float32"][i], memory["bfloat16"][i]
        print(f"| {what} (MiB; bf16 weights file {file_mib:.0f} MiB) | {fp32:.0f} | {bf16:.0f} | {bf16 / fp32:.2f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--hidden", type=int, default=512, help="LM width (a multiple of 64)")
    parser.add_argument("--layers", type=int, default=8, help="LM layers")
    parser.add_argument("--memory-hidden", type=int, default=1024, help="LM width of the checkpoint whose loading is measured")
    parser.add_argument("--memory-layers", type=int, default=24, help="its LM layers")
    parser.add_argument("--memory-of", nargs=2, metavar=("CHECKPOINT", "DTYPE"), help=argparse.SUPPRESS)  # child
    args = parser.parse_args()
    if args.memory_of:
        print(json.dumps(load_memory(*args.memory_of)))
        return
    if args.new_tokens < 2 or args.hidden % 64 or args.memory_hidden % 64:
        parser.error("--new-tokens must be at least 2, --hidden and --memory-hidden multiples of 64")
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = build_checkpoint(Path(tmp) / "memory", args.memory_hidden, args.memory_layers)
        file_mib = (checkpoint / "model.safetensors").stat().st_size / 2**20
        memory = {dtype: load_memory_in_child(checkpoint, dtype) for dtype in DTYPES}
        checkpoint = build_checkpoint(Path(tmp) / "speed", args.hidden, args.layers)
        runs = timings(checkpoint, args)
        params = sum(t.numel() for t in read_weights(checkpoint).values())
    report(runs, memory, file_mib, params, args)


def load_memory_in_child(checkpoint: Path, dtype: str) -> tuple[float, float]:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}  # freed blocks leave the RSS at once
    child = subprocess.run([sys.executable, __file__, "--memory-of", str(checkpoint), dtype], check=True,
                           capture_output=True, text=True, env=env)
    return tuple(json.loads(child.stdout))


if __name__ == "__main__":
    main()
