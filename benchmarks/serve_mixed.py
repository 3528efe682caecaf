"""Short and long answers mixed on one server: continuous batching against static batching.

16 closed-loop clients (threads, each sending its next request when its answer arrives); every 4th request
asks for a long answer (300 tokens), the others for short ones (4 tokens); text questions that differ per
request, greedy. The mix is per request, not per client, so both servers answer the same mix and their
tokens/s compare like with like (with long-answer clients, the continuous server's short-answer clients
would come back sooner and shift its mix towards short answers, which cost a prefill and an HTTP round
trip per 4 tokens). The same load runs against `llava-interleave serve --batching continuous` (requests join
and leave the batch between steps) and `--batching static` (a batch runs to its longest answer before
others start), each a child process with a tiny random model (as serve_load.py), for --seconds each; the
clients then stop sending and the answers in flight are awaited. Prints the short answers' p50/p99
latency, all generated tokens/s, the mean rows per engine step, and the ratios continuous / static.

    python benchmarks/serve_mixed.py [--clients 16] [--long-every 4] [--short-tokens 4] [--long-tokens 300]
                                     [--seconds 60] [--max-batch 16] [--threads 1] [--device cpu]
"""

from __future__ import annotations

import argparse
import itertools
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
from serve_load import Server, mean_rows


@dataclass(frozen=True)
class Run:
    batching: str
    short_latencies: tuple[float, ...]
    long_answers: int
    tokens: int
    seconds: float
    mean_rows: float

    def short(self, q: float) -> float:
        return float(np.percentile(self.short_latencies, q))

    @property
    def per_second(self) -> float:
        return self.tokens / self.seconds


def run(server: Server, batching: str, args: argparse.Namespace) -> Run:
    """The clients for `args.seconds`, then until their last answers arrive."""
    numbers, lock = itertools.count(), threading.Lock()
    shorts: list[float] = []
    longs, tokens = [0], [0]
    before = server.rows_per_step()
    start = time.monotonic()

    def client() -> None:
        with httpx.Client(base_url=server.url, timeout=600) as http:
            while time.monotonic() - start < args.seconds:
                with lock:
                    i = next(numbers)
                long = i % args.long_every == 0
                body = {"messages": [{"role": "user", "content": f"Question {i}: what happened next, and why?"}],
                        "max_tokens": args.long_tokens if long else args.short_tokens, "temperature": 0}
                sent = time.monotonic()
                response = http.post("/v1/chat/completions", json=body)
                response.raise_for_status()
                with lock:
                    tokens[0] += response.json()["usage"]["completion_tokens"]
                    if long:
                        longs[0] += 1
                    else:
                        shorts.append(time.monotonic() - sent)

    threads = [threading.Thread(target=client) for _ in range(args.clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.monotonic() - start
    return Run(batching, tuple(shorts), longs[0], tokens[0], seconds, mean_rows(server.rows_per_step() - before))


def _row(run: Run) -> str:
    return (f"| {run.batching} | {len(run.short_latencies)} | {run.long_answers} | {run.short(50):.3f} | "
            f"{run.short(99):.3f} | {run.per_second:.0f} | {run.mean_rows:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--long-every", type=int, default=4, help="every Nth request asks for a long answer")
    parser.add_argument("--short-tokens", type=int, default=4)
    parser.add_argument("--long-tokens", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=60.0, help="time each server is sent requests")
    parser.add_argument("--max-batch", type=int, default=16, help="the servers' --max-batch (rows decoding together)")
    parser.add_argument("--threads", type=int, default=1, help="the servers' torch threads (OMP_NUM_THREADS)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    from llava_interleave.assets.tiny import make_checkpoint, make_tokenizer, tiny_config

    load = os.getloadavg()[0]
    runs = []
    with tempfile.TemporaryDirectory() as work:
        tokenizer = make_tokenizer()
        model = make_checkpoint(Path(work) / "tiny", tiny_config(tokenizer, "original"), tokenizer)
        for batching in ("continuous", "static"):
            with Server(model, args.max_batch, args.threads, args.device, "--batching", batching) as server:
                httpx.post(server.url + "/v1/chat/completions", timeout=120,  # warm-up
                           json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}).raise_for_status()
                runs.append(run(server, batching, args))
    print(f"tiny random model, {args.clients} closed-loop clients, every {args.long_every}th request asking for "
          f"{args.long_tokens} tokens, the others for {args.short_tokens}, greedy, {args.seconds:g} s per server; --max-batch "
          f"{args.max_batch} on {args.device} with {args.threads} torch thread(s); {os.cpu_count()} CPUs, load "
          f"average {load:.1f} before the run")
    print("| batching | short answers | long answers | short p50 (s) | short p99 (s) | tokens/s | mean rows/step |")
    print("|---|---|---|---|---|---|---|")
    for run_ in runs:
        print(_row(run_))
    continuous, static = runs
    print(f"continuous / static: short p50 {continuous.short(50) / static.short(50):.2f}x (goal <= 0.3), "
          f"short p99 {continuous.short(99) / static.short(99):.2f}x, tokens/s "
          f"{continuous.per_second / static.per_second:.2f}x (goal >= 1.5)")


if __name__ == "__main__":
    main()
