"""Load test of `llava-interleave serve`: requests/s and latency percentiles at 1, 4 and 16 concurrent clients.

The server runs in a child process (its own interpreter, as in use) on a loopback port with a tiny random
model; each client is a thread that sends its next request as soon as its answer arrives (closed loop).
Every request is one small image and a question that differs per request, greedy, a fixed token budget.
Each level stops after --requests answers or --seconds, whichever comes first. Then the highest level is
repeated against a server with --max-batch 1, which gives what batching buys.

    python benchmarks/serve_load.py [--requests 64] [--seconds 60] [--max-tokens 16] [--concurrency 1 4 16]
                                    [--max-batch 4] [--threads 1] [--device cpu]
"""

from __future__ import annotations

import argparse
import base64
import io
import itertools
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Level:
    clients: int
    answered: int
    seconds: float
    latencies: tuple[float, ...]
    tokens: int
    mean_rows: float  # requests given a token per engine step

    @property
    def per_second(self) -> float:
        return self.answered / self.seconds


def _image_url(seed: int) -> str:
    pixels = np.random.default_rng(seed).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _request(i: int, image: str, max_tokens: int) -> dict:
    question = f"Question {i}: what is in the image, and how many objects are there?"
    content = [{"type": "image_url", "image_url": {"url": image}}, {"type": "text", "text": question}]
    return {"messages": [{"role": "user", "content": content}], "max_tokens": max_tokens, "temperature": 0}


class Server:
    """`llava-interleave serve` in a child process on a free loopback port."""

    def __init__(self, model: Path, max_batch: int, threads: int, device: str, *options: str) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "llava_interleave.cli", "serve", "--model", str(model), "--port", str(self.port),
               "--max-batch", str(max_batch), "--queue-size", "1024", "--device", device, *options]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        self.process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)

    def __enter__(self) -> Server:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                sys.exit(f"the server exited:\n{self.process.stderr.read()[-3000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.2)
        sys.exit("the server did not start within 180 s")

    def __exit__(self, *_: object) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)

    def rows_per_step(self) -> Counter[int]:
        """Engine steps so far by how many requests got a token in them (from /health)."""
        rows = httpx.get(self.url + "/health", timeout=10).json()["rows_per_step"]
        return Counter({int(k): v for k, v in rows.items()})


def mean_rows(steps: Counter[int]) -> float:
    return sum(rows * n for rows, n in steps.items()) / max(1, sum(steps.values()))


def run_level(server: Server, clients: int, args: argparse.Namespace, images: list[str]) -> Level:
    """`clients` closed-loop clients until `args.requests` answers or `args.seconds` have passed."""
    numbers = itertools.count()
    lock = threading.Lock()
    latencies: list[float] = []
    tokens: list[int] = []
    before = server.rows_per_step()
    start = time.monotonic()

    def client() -> None:
        with httpx.Client(base_url=server.url, timeout=300) as http:
            while time.monotonic() - start < args.seconds:
                with lock:
                    i = next(numbers)
                if i >= args.requests:
                    return
                sent = time.monotonic()
                response = http.post("/v1/chat/completions", json=_request(i, images[i % len(images)], args.max_tokens))
                response.raise_for_status()
                with lock:
                    latencies.append(time.monotonic() - sent)
                    tokens.append(response.json()["usage"]["completion_tokens"])

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.monotonic() - start
    return Level(clients, len(latencies), seconds, tuple(latencies), sum(tokens), mean_rows(server.rows_per_step() - before))


def _row(level: Level) -> str:
    p50, p90, p99 = (float(np.percentile(level.latencies, q)) for q in (50, 90, 99))
    return (f"| {level.clients} | {level.answered} | {level.per_second:.1f} | {level.tokens / level.seconds:.0f} | "
            f"{p50:.3f} | {p90:.3f} | {p99:.3f} | {level.mean_rows:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=64, help="answers per concurrency level (at most)")
    parser.add_argument("--seconds", type=float, default=60.0, help="time per level (at most)")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--max-batch", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1, help="the server's torch threads (OMP_NUM_THREADS)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    from llava_interleave.assets.tiny import make_checkpoint, make_tokenizer, tiny_config

    images = [_image_url(seed) for seed in range(8)]
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as work:
        tokenizer = make_tokenizer()
        model = make_checkpoint(Path(work) / "tiny", tiny_config(tokenizer, "original"), tokenizer)
        with Server(model, args.max_batch, args.threads, args.device) as server:
            run_level(server, 1, argparse.Namespace(**{**vars(args), "requests": 2}), images)  # warm-up
            levels = [run_level(server, c, args, images) for c in args.concurrency]
        with Server(model, 1, args.threads, args.device) as server:
            run_level(server, 1, argparse.Namespace(**{**vars(args), "requests": 2}), images)
            single = run_level(server, max(args.concurrency), args, images)
    print(f"tiny random model, one 64x48 image + question per request, greedy, max_tokens {args.max_tokens}; "
          f"server --max-batch {args.max_batch} on {args.device} with {args.threads} torch thread(s); "
          f"{os.cpu_count()} CPUs, load average {load:.1f} before the run")
    print("| clients | answered | requests/s | tokens/s | p50 latency (s) | p90 (s) | p99 (s) | mean rows/step |")
    print("|---|---|---|---|---|---|---|---|")
    for level in levels:
        print(_row(level))
    print(_row(single).replace(f"| {single.clients} |", f"| {single.clients}, --max-batch 1 |", 1))
    best = levels[-1]
    print(f"batching: {best.clients} clients, --max-batch {args.max_batch} vs 1: "
          f"{best.per_second / single.per_second:.2f}x requests/s, p50 latency "
          f"{statistics.median(best.latencies) / statistics.median(single.latencies):.2f}x")


if __name__ == "__main__":
    main()
