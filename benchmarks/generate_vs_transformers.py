"""Generation speed and memory: llava_interleave vs transformers' LlavaForConditionalGeneration.

Both sides load the same random hf-layout checkpoint, built here in a temp dir (tens of millions of
parameters, the released vision geometry: 384 px, patch 14 -> 729 tokens per frame, small widths), and
answer one prompt of --frames synthetic frames (given as images: transformers' Llava has no video path)
with greedy decoding of exactly --new-tokens tokens (no EOS stopping on either side).

Measured, medians of --repeats runs after one warm-up round (the two sides alternate, so machine noise
hits both alike):
  * time to first token: raw PIL frames -> first generated token (preprocessing, tower, prefill), our caches
    off (each run answers the same frames again);
  * time to first token of a second question about the same frames with our caches on (one run): what a
    caller asking several questions about one video waits; transformers has no such cache;
  * decode tokens/s: the remaining N-1 tokens over their time;
  * whether both sides produce the same token ids;
  * peak memory of one answer over the loaded model, each side alone in a child process
    (CUDA: max_memory_allocated; CPU: peak RSS growth, ru_maxrss plus 2 ms /proc sampling, with glibc's
    MALLOC_MMAP_THRESHOLD_ fixed so that freed tensors leave the RSS);
  * where our time goes: preprocessing, vision tower + projector, LM prefill, decode (explicit timers).

    python benchmarks/generate_vs_transformers.py [--device cpu|cuda] [--frames 16] [--new-tokens 32] \
        [--repeats 3] [--dtype float32|bfloat16]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image, ImageDraw

QUESTION = "What happens in these frames?"
SECOND = "And what happens last?"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
Result = tuple[float, float, list[int]]  # (ttft seconds, decode seconds, token ids)


def build_checkpoint(out: Path) -> Path:
    from llava_interleave.assets.tiny import make_checkpoint, make_tokenizer, tiny_config
    from llava_interleave.config import TextConfig, VisionConfig

    tokenizer = make_tokenizer()
    vision = VisionConfig(image_size=384, patch_size=14, hidden_size=256, intermediate_size=1024, num_layers=4, num_heads=4)
    text = TextConfig(vocab_size=len(tokenizer) + 8, hidden_size=512, intermediate_size=1408, num_layers=8, num_heads=8,
                      num_kv_heads=8, max_position_embeddings=32768, tie_word_embeddings=False)
    return make_checkpoint(out, tiny_config(tokenizer, "hf", vision=vision, text=text), tokenizer)


def frames(count: int) -> list[Image.Image]:
    """320x240 frames: a red disc moving right, a blue square moving down."""
    images = []
    for i in range(count):
        image = Image.new("RGB", (320, 240), (230, 230, 220))
        draw = ImageDraw.Draw(image)
        draw.ellipse((10 + 15 * i, 100, 50 + 15 * i, 140), fill=(200, 40, 40))
        draw.rectangle((200, 10 + 12 * i, 230, 40 + 12 * i), fill=(40, 60, 200))
        images.append(image)
    return images


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class Ours:
    def __init__(self, path: Path, device: str, dtype: torch.dtype) -> None:
        import llava_interleave

        # caches off: every timed run answers the same frames, which the caches would otherwise remember
        self.pipe = llava_interleave.load(path, template="hf", device=device, dtype=dtype, cache_mb=0)
        self.device = device

    def run(self, images: list[Image.Image], new_tokens: int) -> Result:
        from llava_interleave.engine import SamplingConfig

        start = time.perf_counter()
        encoded = self.pipe.processor.encode(self.pipe.sample([{"role": "user", "content": [*images, QUESTION]}]))
        tokens: list[int] = []
        first = start
        for step in self.pipe.engine.stream([encoded], SamplingConfig(max_new_tokens=new_tokens)):  # no stop ids
            tokens.append(step[0])  # int(): the step has been computed
            if len(tokens) == 1:
                first = time.perf_counter()
        sync(self.device)
        return first - start, time.perf_counter() - first, tokens

    def breakdown(self, images: list[Image.Image], new_tokens: int) -> dict[str, float]:
        """Seconds per stage of one answer (caches off), timers around what the engine does for a request."""
        from llava_interleave.engine import Engine, SamplingConfig
        from llava_interleave.model.caches import visual_key

        model, times = self.pipe.model, {}

        def timed(name: str, start: float) -> None:
            sync(self.device)
            times[name] = time.perf_counter() - start

        t = time.perf_counter()
        encoded = self.pipe.processor.encode(self.pipe.sample([{"role": "user", "content": [*images, QUESTION]}]))
        timed("preprocessing (resize, normalise, tokenise)", t)
        engine = Engine(model, cache_mb=4096, chunk_tokens=self.pipe.engine.chunk_tokens)
        with torch.inference_mode():
            t = time.perf_counter()
            keys = [visual_key(v) for v in encoded.visuals]
            engine.vision_cache.tokens(model, encoded.visuals, keys)  # the request below finds them here
            timed("vision tower + projector (+ hashing the pixels)", t)
        request = engine.submit(encoded, SamplingConfig(max_new_tokens=new_tokens))
        t = time.perf_counter()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
            while not request.tokens:
                engine.step()
        timed(f"LM prefill ({len(encoded)} tokens, chunks of {engine.chunk_tokens})", t)
        prefill = times.popitem()
        for part, share in prefill_shares(profiler).items():
            times[f"{prefill[0]}: {part}"] = prefill[1] * share
        t = time.perf_counter()
        while request.finish is None:
            engine.step()
        timed(f"decode ({new_tokens - 1} tokens)", t)
        return times

    def second_question(self, images: list[Image.Image], new_tokens: int) -> float:
        """Time to the first token of another question about the same frames, caches on (as `load` sets them):
        the frames' tokens and the prompt's keys and values come from the first question's."""
        from llava_interleave.engine import SamplingConfig

        self.pipe.engine.set_cache(4096)
        try:
            self.run(images, new_tokens)
            start = time.perf_counter()
            encoded = self.pipe.processor.encode(self.pipe.sample([{"role": "user", "content": [*images, SECOND]}]))
            for _ in self.pipe.engine.stream([encoded], SamplingConfig(max_new_tokens=1)):
                pass
            sync(self.device)
            return time.perf_counter() - start
        finally:
            self.pipe.engine.set_cache(0)


def prefill_shares(profiler: torch.profiler.profile) -> dict[str, float]:
    """The prefill's operator time (self CPU time of each aten op) split into matrix products, the attention
    kernel, and everything else (norms, rotary embedding, activations, cache writes), as fractions."""
    parts = {"matrix products": 0.0, "attention kernel": 0.0, "everything else": 0.0}
    for event in profiler.key_averages():
        if not event.key.startswith("aten::"):
            continue
        part = ("attention kernel" if "scaled_dot_product" in event.key or "flash_attention" in event.key else
                "matrix products" if event.key in ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm") else
                "everything else")
        parts[part] += event.self_cpu_time_total
    total = sum(parts.values()) or 1.0
    return {part: seconds / total for part, seconds in parts.items()}


class Reference:
    def __init__(self, path: Path, device: str, dtype: torch.dtype) -> None:
        from transformers import AutoProcessor, LlavaForConditionalGeneration
        from transformers.utils import logging

        logging.set_verbosity_error()  # the eos_token_id=-1 warning, on every generate()
        logging.disable_progress_bar()

        try:  # transformers >= 5: the PIL backend resizes exactly as ours does (see tests/test_parity.py)
            from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil as Pil
        except ImportError:
            from transformers import SiglipImageProcessor as Pil
        self.model = LlavaForConditionalGeneration.from_pretrained(path, dtype=dtype, attn_implementation="sdpa").to(device).eval()
        self.processor = AutoProcessor.from_pretrained(path)
        self.processor.image_processor = Pil.from_pretrained(path)
        self.device = device

    def run(self, images: list[Image.Image], new_tokens: int) -> Result:
        from transformers.generation.streamers import BaseStreamer

        device = self.device

        class FirstToken(BaseStreamer):
            """Records when the first generated token arrives (the first put() carries the prompt)."""

            def __init__(self) -> None:
                self.calls, self.first = 0, 0.0

            def put(self, value: torch.Tensor) -> None:
                self.calls += 1
                if self.calls == 2:
                    sync(device)
                    self.first = time.perf_counter()

            def end(self) -> None:
                pass

        streamer = FirstToken()
        start = time.perf_counter()
        content = [*({"type": "image"} for _ in images), {"type": "text", "text": QUESTION}]
        prompt = self.processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
        inputs = self.processor(images=images, text=prompt, return_tensors="pt").to(device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        with torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=new_tokens, do_sample=False, eos_token_id=-1,
                                      pad_token_id=0, streamer=streamer)
        sync(device)
        end = time.perf_counter()
        return streamer.first - start, end - streamer.first, out[0, inputs["input_ids"].shape[1]:].tolist()


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def cpu_peak_growth(work: Callable[[], object]) -> float:
    """Peak RSS while `work` runs minus the RSS before it, in MiB: ru_maxrss when the run raised it (exact),
    else a 2 ms sampler (ru_maxrss may still hold a higher transient peak from model loading)."""
    base, maxrss_before, peak, running = rss_mib(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, [0.0], [True]

    def watch() -> None:
        while running[0]:
            peak[0] = max(peak[0], rss_mib())
            time.sleep(0.002)

    sampler = threading.Thread(target=watch, daemon=True)
    sampler.start()
    work()
    running[0] = False
    sampler.join()
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    if maxrss > maxrss_before:
        peak[0] = max(peak[0], maxrss / 1024)
    return peak[0] - base


def memory_side(args: argparse.Namespace) -> float:
    """Child process, one side only: peak memory of one answer over the loaded model, in MiB."""
    side = (Ours if args.side == "ours" else Reference)(Path(args.checkpoint), args.device, DTYPES[args.dtype])
    images = frames(args.frames)
    side.run(images[:1], 2)  # small warm-up: lazy imports and kernel set-up are not the answer's
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        side.run(images, args.new_tokens)
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    return cpu_peak_growth(lambda: side.run(images, args.new_tokens))


def timings(checkpoint: Path, args: argparse.Namespace) -> tuple[dict[str, list[Result]], dict[str, float], float]:
    """Both sides in this process, runs alternated so machine noise hits both alike; round 0 warms up."""
    sides = {"ours": Ours(checkpoint, args.device, DTYPES[args.dtype]),
             "transformers": Reference(checkpoint, args.device, DTYPES[args.dtype])}
    images = frames(args.frames)
    runs: dict[str, list[Result]] = {name: [] for name in sides}
    for repeat in range(args.repeats + 1):
        for name, side in sides.items():
            result = side.run(images, args.new_tokens)
            if repeat:
                runs[name].append(result)
    ours = sides["ours"]
    assert isinstance(ours, Ours)
    return runs, ours.breakdown(images, args.new_tokens), ours.second_question(images, args.new_tokens)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, choices=list(DTYPES), help="default: float32 on CPU, bfloat16 on CUDA")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--side", choices=["ours", "transformers"], help=argparse.SUPPRESS)  # memory child
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    if args.new_tokens < 2:
        parser.error("--new-tokens must be at least 2 (one first token, then decode)")
    if args.side:
        print(json.dumps(memory_side(args)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = build_checkpoint(Path(tmp) / "ckpt")
        from llava_interleave.model.checkpoint import load_model

        params = sum(p.numel() for p in load_model(checkpoint, "cpu")[0].parameters())
        print(f"checkpoint: {params / 1e6:.1f}M parameters", flush=True)
        memory = {}
        # A fixed mmap threshold makes glibc hand every large freed block straight back to the OS, so RSS
        # follows live tensors; with its default (adaptive) threshold, RSS keeps freed heap and swings by 100s of MiB.
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
        for side in ("ours", "transformers"):
            cmd = [sys.executable, __file__, "--side", side, "--checkpoint", str(checkpoint), "--device", args.device,
                   "--dtype", args.dtype, "--frames", str(args.frames), "--new-tokens", str(args.new_tokens)]
            child = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
            memory[side] = json.loads(child.stdout.splitlines()[-1])
        load_before = os.getloadavg()[0]
        runs, breakdown, second = timings(checkpoint, args)
    same = all(a[2] == b[2] for a, b in zip(runs["ours"], runs["transformers"]))
    ttft = {name: statistics.median(r[0] for r in rs) for name, rs in runs.items()}
    decode = {name: statistics.median((args.new_tokens - 1) / r[1] for r in rs) for name, rs in runs.items()}
    print(f"{args.frames} frames x 729 tokens, {args.new_tokens} new tokens (greedy), {args.device} {args.dtype}, "
          f"{torch.get_num_threads()} threads, median of {args.repeats} alternated runs; same token ids: {same}")
    print(f"time to first token of each run: ours {[round(r[0], 3) for r in runs['ours']]}, transformers "
          f"{[round(r[0], 3) for r in runs['transformers']]}; load average {load_before:.1f} -> {os.getloadavg()[0]:.1f}\n")
    ours, ref = "llava_interleave", "transformers"
    print(f"| metric | {ours} | {ref} | ratio |\n|---|---|---|---|")
    print(f"| time to first token (s, lower is better) | {ttft['ours']:.3f} | {ttft['transformers']:.3f} | "
          f"{ttft['ours'] / ttft['transformers']:.2f} (ours/theirs time) |")
    print(f"| decode (tokens/s, higher is better) | {decode['ours']:.1f} | {decode['transformers']:.1f} | "
          f"{decode['ours'] / decode['transformers']:.2f} (ours/theirs throughput) |")
    print(f"| peak memory of one answer over the loaded model (MiB) | {memory['ours']:.0f} | {memory['transformers']:.0f} | "
          f"{memory['ours'] / max(memory['transformers'], 1e-9):.2f} (ours/theirs) |")
    print(f"| time to first token of a second question about the same frames, caches on (s) | {second:.3f} | "
          f"{ttft['transformers']:.3f} | {second / ttft['transformers']:.2f} (ours/theirs time; transformers "
          f"recomputes everything) |")
    total = sum(breakdown.values())
    print(f"\nWhere our time goes (one answer, {total:.3f} s in all):\n\n| stage | seconds | share |\n|---|---|---|")
    for stage, seconds in breakdown.items():
        print(f"| {stage} | {seconds:.3f} | {seconds / total:.0%} |")

if __name__ == "__main__":
    main()
