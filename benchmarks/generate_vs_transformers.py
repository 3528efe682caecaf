"""Generation speed and memory: llava_interleave vs transformers' LlavaForConditionalGeneration.

Both sides load the same random hf-layout checkpoint (tens of millions of parameters, the released
vision geometry: 384 px, patch 14, 729 tokens per frame) and answer one 16-frame prompt (frames given
as images, since transformers' Llava has no video path) with greedy decoding of exactly N new tokens.

Speed: both sides in one process, runs alternated (ours, theirs, ours, ...) after a warm-up round, medians
of --repeats: time to first token (raw PIL frames -> first token: preprocessing, tower, prefill) and
decode tokens/s. Memory: each side alone in a child process, the peak of one answer over the loaded model
(CUDA: max allocated; CPU: resident memory sampled every 2 ms). Then where our time goes, stage by stage.

    python benchmarks/generate_vs_transformers.py [--device cpu|cuda] [--frames 16] [--new-tokens 32]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw

QUESTION = "What happens in these frames?"


def build_checkpoint(out: Path) -> Path:
    from llava_interleave.config import TextConfig, VisionConfig
    from llava_interleave.testing import make_checkpoint, make_tokenizer, tiny_config

    tokenizer = make_tokenizer()
    vision = VisionConfig(image_size=384, patch_size=14, hidden_size=256, intermediate_size=1024, num_layers=4, num_heads=4)
    text = TextConfig(vocab_size=len(tokenizer) + 8, hidden_size=512, intermediate_size=1408, num_layers=8, num_heads=8,
                      num_kv_heads=8, max_position_embeddings=32768, tie_word_embeddings=False)
    return make_checkpoint(out, tiny_config(tokenizer, "hf", vision=vision, text=text), tokenizer)


def frames(count: int) -> list[Image.Image]:
    images = []
    for i in range(count):
        image = Image.new("RGB", (320, 240), (230, 230, 220))
        ImageDraw.Draw(image).ellipse((10 + 15 * i, 100, 50 + 15 * i, 140), fill=(200, 40, 40))
        images.append(image)
    return images


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class Ours:
    def __init__(self, path: Path, device: str, dtype: torch.dtype) -> None:
        import llava_interleave
        from llava_interleave.engine import SamplingConfig

        self.pipe = llava_interleave.load(path, template="hf", device=device, dtype=dtype)
        self.sampling = SamplingConfig
        self.device = device

    def run(self, images: list[Image.Image], new_tokens: int) -> tuple[float, float, list[int]]:
        start = time.perf_counter()
        encoded = self.pipe.processor.encode(self.pipe.sample([{"role": "user", "content": [*images, QUESTION]}]))
        tokens: list[int] = []
        for step in self.pipe.engine.stream([encoded], self.sampling(max_new_tokens=new_tokens)):
            sync(self.device)
            tokens.append(step[0])
            if len(tokens) == 1:
                first = time.perf_counter()
        return first - start, time.perf_counter() - first, tokens

    def breakdown(self, images: list[Image.Image], new_tokens: int) -> dict[str, float]:
        """Seconds spent in each stage of one answer, timed around the same calls the engine makes."""
        from llava_interleave.model.kv_cache import preallocated_cache

        model, times = self.pipe.model, {}
        with torch.inference_mode():
            t = time.perf_counter()
            encoded = self.pipe.processor.encode(self.pipe.sample([{"role": "user", "content": [*images, QUESTION]}]))
            times["preprocess (resize, normalise, tokenise)"] = time.perf_counter() - t
            t = time.perf_counter()
            model.encode_visuals(encoded.visuals)
            sync(self.device)
            times["vision tower + projector"] = time.perf_counter() - t
            ids = torch.tensor([encoded.input_ids], device=model.device)
            embeds = model.embed(ids, encoded.visuals)
            cache = preallocated_cache(model.config.text.num_layers, ids.shape[1] + new_tokens)
            sync(self.device)
            t = time.perf_counter()
            logits = model(inputs_embeds=embeds, past_key_values=cache, logits_to_keep=1).logits[:, -1]
            sync(self.device)
            times["LM prefill"] = time.perf_counter() - t
            position = ids.shape[1]
            t = time.perf_counter()
            for _ in range(new_tokens - 1):
                token = logits.argmax(-1, keepdim=True)
                pos = torch.tensor([[position]], device=model.device)
                logits = model(None, (), None, pos, cache, model.language_model.embed_tokens(token)).logits[:, -1]
                position += 1
            sync(self.device)
            times[f"decode ({new_tokens - 1} tokens)"] = time.perf_counter() - t
        return times


class Reference:
    def __init__(self, path: Path, device: str, dtype: torch.dtype) -> None:
        from transformers import AutoProcessor, LlavaForConditionalGeneration

        try:
            from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil as Pil
        except ImportError:
            from transformers import SiglipImageProcessor as Pil
        self.model = LlavaForConditionalGeneration.from_pretrained(path, dtype=dtype, attn_implementation="sdpa").to(device).eval()
        self.processor = AutoProcessor.from_pretrained(path)
        self.processor.image_processor = Pil.from_pretrained(path)
        self.device = device

    def run(self, images: list[Image.Image], new_tokens: int) -> tuple[float, float, list[int]]:
        from transformers.generation.streamers import BaseStreamer

        device = self.device

        class FirstToken(BaseStreamer):
            calls, first = 0, 0.0

            def put(self, value: torch.Tensor) -> None:
                self.calls += 1
                if self.calls == 2:  # the first call carries the prompt
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
            out = self.model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                                      streamer=streamer, pad_token_id=0)
        sync(device)
        end = time.perf_counter()
        return streamer.first - start, end - streamer.first, out[0, inputs["input_ids"].shape[1]:].tolist()


class PeakRSS:
    """Highest resident memory seen while the block runs (sampled every 2 ms from /proc), minus the start."""

    def __enter__(self) -> "PeakRSS":
        import threading

        self.base = self.peak = self._rss()
        self.running = True
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.running = False
        self.thread.join()

    def _watch(self) -> None:
        while self.running:
            self.peak = max(self.peak, self._rss())
            time.sleep(0.002)

    @staticmethod
    def _rss() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize() / 2**20

    @property
    def mib(self) -> float:
        return self.peak - self.base


def memory_side(args: argparse.Namespace) -> float:
    """In a child process, one side only: peak memory of one answer over the loaded model, in MiB."""
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    side = (Ours if args.side == "ours" else Reference)(Path(args.checkpoint), args.device, dtype)
    images = frames(args.frames)
    side.run(images, 2)  # warm-up: one-time allocations are not the answer's
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        side.run(images, args.new_tokens)
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    with PeakRSS() as peak:
        side.run(images, args.new_tokens)
    return peak.mib


def timings(checkpoint: Path, args: argparse.Namespace) -> tuple[dict[str, dict[str, float]], bool, dict[str, float]]:
    """Both sides in this process, runs alternated so machine noise hits both alike; medians."""
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    sides = {"ours": Ours(checkpoint, args.device, dtype), "transformers": Reference(checkpoint, args.device, dtype)}
    images = frames(args.frames)
    runs: dict[str, list[tuple[float, float, list[int]]]] = {name: [] for name in sides}
    for repeat in range(args.repeats + 1):
        for name, side in sides.items():
            result = side.run(images, args.new_tokens)
            if repeat:  # the first round warms up
                runs[name].append(result)
    medians = {
        name: {
            "ttft_s": statistics.median(r[0] for r in results),
            "decode_tok_s": statistics.median((args.new_tokens - 1) / r[1] for r in results),
        }
        for name, results in runs.items()
    }
    same = runs["ours"][0][2] == runs["transformers"][0][2]
    return medians, same, sides["ours"].breakdown(images, args.new_tokens)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16"], help="default: fp32 on CPU, bf16 on GPU")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--side", choices=["ours", "transformers"], help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    if args.side:
        print(json.dumps(memory_side(args)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = build_checkpoint(Path(tmp) / "ckpt")
        from llava_interleave.model.checkpoint import load_model

        params = sum(p.numel() for p in load_model(checkpoint, "cpu")[0].parameters())
        memory = {}
        for side in ("ours", "transformers"):
            cmd = [sys.executable, __file__, "--side", side, "--checkpoint", str(checkpoint), "--device", args.device,
                   "--dtype", args.dtype, "--frames", str(args.frames), "--new-tokens", str(args.new_tokens)]
            memory[side] = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
        speed, same, breakdown = timings(checkpoint, args)
    ours, ref = speed["ours"], speed["transformers"]
    print(f"{params / 1e6:.1f}M parameters, {args.frames} frames x 729 tokens, {args.new_tokens} new tokens, "
          f"{args.device} {args.dtype}, median of {args.repeats} alternated runs; same tokens: {same}\n")
    print("| metric | llava_interleave | transformers | ratio |\n|---|---|---|---|")
    print(f"| time to first token (s) | {ours['ttft_s']:.3f} | {ref['ttft_s']:.3f} | {ref['ttft_s'] / ours['ttft_s']:.2f}x as fast |")
    print(f"| decode (tokens/s) | {ours['decode_tok_s']:.1f} | {ref['decode_tok_s']:.1f} | {ours['decode_tok_s'] / ref['decode_tok_s']:.2f}x as fast |")
    print(f"| peak memory of one answer over the loaded model (MiB) | {memory['ours']:.0f} | {memory['transformers']:.0f} | "
          f"{memory['ours'] / max(memory['transformers'], 1e-9):.2f}x |")
    print("\nWhere our time goes (one answer):\n\n| stage | seconds |\n|---|---|")
    for stage, seconds in breakdown.items():
        print(f"| {stage} | {seconds:.3f} |")


if __name__ == "__main__":
    main()
