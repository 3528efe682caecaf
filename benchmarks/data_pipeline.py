"""Data pipeline throughput and padding waste, on the project's synthetic M4-style data.

Loader + collator speed: samples/s of reading a record, decoding its images or video frames, rendering,
tokenising with labels and collating (images decoded, no model). Padding waste: the fraction of pad
tokens in batches of --batch-size, with dynamic padding in file order, with length-grouped batches, and
with packing into rows of --pack-tokens. Image tokens use the released layout (729 + newline per image).

    python benchmarks/data_pipeline.py [--n 200] [--batch-size 8] [--pack-tokens 16384]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from llava_interleave.assets.tiny import make_tokenizer
from llava_interleave.config import InterleaveConfig, VisionConfig
from llava_interleave.data.collate import pack_collate, pack_greedy, pad_collate
from llava_interleave.data.config import DataConfig
from llava_interleave.data.dataset import SFTDataset
from llava_interleave.data.m4 import MediaResolver, record_scenario
from llava_interleave.data.processor import Processor
from llava_interleave.data.records import JsonSource
from llava_interleave.data.sampler import LengthGroupedBatches
from llava_interleave.data.synth import write_synthetic
from llava_interleave.data.templates import get_template


def waste(batches: list[list[int]]) -> float:
    """Pad fraction when each batch (a list of row lengths) is padded to its longest row."""
    real = sum(sum(rows) for rows in batches)
    return 1 - real / sum(max(rows) * len(rows) for rows in batches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--pack-tokens", type=int, default=16384)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    tokenizer = make_tokenizer()
    config = InterleaveConfig(vision=VisionConfig(), image_token_id=-200, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    processor = Processor(tokenizer, config, get_template("qwen_1_5"))
    with tempfile.TemporaryDirectory() as tmp:
        write_synthetic(Path(tmp), args.n, seed=0)
        records = JsonSource(Path(tmp) / "train.json")
        data = SFTDataset(records, MediaResolver(Path(tmp)), processor, DataConfig(max_length=32768, num_frames=8))
        rates, encoded = [], []
        for _ in range(args.repeats):
            start = time.perf_counter()
            encoded = [data[i] for i in range(len(data))]
            for i in range(0, len(encoded), args.batch_size):
                pad_collate([e for e in encoded[i : i + args.batch_size] if e is not None], config.pad_token_id)
            rates.append(len(data) / (time.perf_counter() - start))
        samples = [e for e in encoded if e is not None]
        resolver = MediaResolver(Path(tmp))
        modalities = [record_scenario(records[i], resolver, anyres=True).value for i, e in enumerate(encoded) if e is not None]
    lengths = [len(s) for s in samples]
    in_order = [lengths[k : k + args.batch_size] for k in range(0, len(lengths), args.batch_size)]
    grouped = [[lengths[i] for i in b] for b in LengthGroupedBatches(lengths, modalities, args.batch_size).batches()]
    rows = sorted(sum(lengths[i] for i in row) for row in pack_greedy(lengths, args.pack_tokens))
    per_batch = max(1, args.batch_size // 4)  # a packed row holds several samples: fewer rows per batch
    packed = [rows[k : k + per_batch] for k in range(0, len(rows), per_batch)]
    print(f"{len(samples)} synthetic samples ({args.n} written), tokens per sample median {statistics.median(lengths):.0f}, max {max(lengths)}\n")
    print("| measure | value |\n|---|---|")
    print(f"| loader + collator, images decoded (samples/s, median of {args.repeats}) | {statistics.median(rates):.1f} |")
    print(f"| padding waste, dynamic padding in file order | {waste(in_order):.1%} |")
    print(f"| padding waste, length-grouped batches by modality | {waste(grouped):.1%} |")
    print(f"| padding waste, packed into rows of up to {args.pack_tokens} tokens, {per_batch} rows a batch | {waste(packed):.1%} |")
    pack_collate([samples[:3]], config.pad_token_id)  # the packing collator runs on real samples too


if __name__ == "__main__":
    main()
