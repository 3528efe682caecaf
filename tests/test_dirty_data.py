"""Dirty data: every defect of a sample is the sample's problem, found on the one road with one reason, so
`data validate` and training reach the same verdict on every entry; nothing raises anything but a one-line
`InterleaveError`, and start-up passes (stats, tokenizer texts, lengths) survive every defect."""

from __future__ import annotations

import json
import random
import struct
import zlib
from pathlib import Path

import pytest

import llava_interleave
from llava_interleave.data import defects
from llava_interleave.data.config import DataConfig
from llava_interleave.data.dataset import SFTDataset
from llava_interleave.data.m4 import MediaResolver
from llava_interleave.data.records import JsonSource, try_record
from llava_interleave.data.stats import TokenCounter, collect
from llava_interleave.data.tokenizer import bounded
from llava_interleave.data.validate import validate
from llava_interleave.errors import InterleaveError

from .conftest import random_image, write_clip

QA = [{"from": "human", "value": "<image>\nWhat colour?"}, {"from": "gpt", "value": "Red."}]


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels but holds one row: a decompression bomb's shape."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 7)) + chunk(b"IEND", b"")


def entry(sample_id: object, **fields: object) -> str:
    return json.dumps({"id": sample_id, "image": "ok.png", "conversations": QA, **fields})


# (a JSONL line, the reason training and validate give, or None for a good sample)
LINES: list[tuple[str, str | None]] = [
    (entry("good"), None),
    ('{"id": "bad-utf8", "conversations": "\xff"}', defects.UNREADABLE_JSON),  # replaced by raw bytes below
    ('{"id": "broken json", ', defects.UNREADABLE_JSON),
    ("[" * 100_000 + "]" * 100_000, defects.UNREADABLE_JSON),
    (entry("surrogate", conversations=[{"from": "human", "value": "<image> hi \ud800"}, QA[1]]), defects.BAD_TEXT),
    (entry("nul", conversations=[QA[0], {"from": "gpt", "value": "a\x00b"}]), defects.BAD_TEXT),
    (entry("huge", conversations=[QA[0], {"from": "gpt", "value": "x" * (defects.MAX_TEXT_CHARS + 1)}]), defects.BAD_TEXT),
    (entry("meta-list", metadata={"dataset": ["a", "b"]}), defects.MALFORMED_ENTRY),
    (entry(["id", "as", "list"]), defects.MALFORMED_ENTRY),
    (entry("image-number", image=7), defects.MALFORMED_ENTRY),
    (json.dumps({"id": "no-conv", "image": "ok.png"}), defects.MISSING_CONVERSATIONS),
    (entry("only-human", conversations=[QA[0]]), defects.NO_ANSWER),
    (entry("first-gpt", conversations=[QA[1], QA[0]]), defects.FIRST_NOT_HUMAN),
    (entry("slots", image=["ok.png", "ok.png"]), defects.IMAGE_COUNT),
    (entry("missing", image="nope.png"), defects.MISSING_MEDIA),
    (entry("folder", image="folder"), defects.UNREADABLE_MEDIA),  # a folder is a video of frames: none here
    (entry("garbage", image="garbage.png"), defects.UNREADABLE_MEDIA),
    (entry("bomb", image="bomb.png"), defects.IMAGE_TOO_LARGE),
    (json.dumps({"id": "empty-video", "video": "empty.mp4", "conversations": QA}), defects.UNREADABLE_MEDIA),
    (json.dumps({"id": "video", "video": "clip.mp4", "conversations": QA}), None),
    (entry("good"), defects.DUPLICATE_ID),
    ("42", defects.UNREADABLE_JSON),
]


@pytest.fixture
def dirty(tmp_path) -> Path:
    random_image(0).save(tmp_path / "ok.png")
    (tmp_path / "folder").mkdir()
    (tmp_path / "garbage.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"rubbish" * 30)
    (tmp_path / "bomb.png").write_bytes(png_header(20_000, 20_000))
    (tmp_path / "empty.mp4").write_bytes(b"")
    write_clip(tmp_path / "clip.mp4", frames=6)
    raw = [line.encode("utf-8", "surrogatepass") for line, _ in LINES]
    raw[1] = b'{"id": "bad-utf8", "conversations": "\xff\xfe"}'
    path = tmp_path / "dirty.jsonl"
    path.write_bytes(b"\n".join(raw) + b"\n")
    return path


def test_validate_and_training_give_every_entry_the_same_verdict(dirty, hf_checkpoint):
    resolver = MediaResolver(dirty.parent)
    report = validate(dirty, resolver)
    by_validate = {p.index: p.reason for p in report.problems}
    pipe = llava_interleave.load(hf_checkpoint, device="cpu")
    data = SFTDataset(JsonSource(dirty), resolver, pipe.processor, DataConfig(max_length=1 << 20, num_frames=4))
    by_training = {}
    for index in range(len(data)):
        encoded, skip = data.encode(index)
        assert (encoded is None) == (skip is not None)
        if skip is not None:
            by_training[index] = skip[0]
    expected = {i: reason for i, (_, reason) in enumerate(LINES) if reason is not None}
    assert by_validate == expected
    assert by_training == expected
    assert report.good == 2 and report.total == len(LINES)
    assert all("\n" not in p.format() for p in report.problems)


def test_start_up_passes_survive_every_defect(dirty, hf_checkpoint):
    """Stats, the tokenizer's texts and the length pass read every record: none may stop on a broken one."""
    records = JsonSource(dirty)
    pipe = llava_interleave.load(hf_checkpoint, device="cpu")
    stats = collect(records, MediaResolver(dirty.parent), TokenCounter(pipe.tokenizer, pipe.config, pipe.processor.template))
    assert stats.unreadable == sum(r is None for r in (try_record(records, i) for i in range(len(records))))
    assert stats.unreadable >= 9 and len(stats.tokens_per_sample) == len(records) - stats.unreadable


def test_tokenizer_training_text_is_bounded():
    word = "x" * 1_000_000
    (cut,) = list(bounded([word]))
    assert len(cut) <= 20_000 * 2 and max(len(w) for w in cut.split()) <= 64


def test_seeded_mutations_never_escape_as_anything_but_a_one_line_error(tmp_path, hf_checkpoint):
    """Corrupt good records at random (bytes, types, text): validate and training agree on every one, and
    nothing but an `InterleaveError` comes out."""
    random_image(0).save(tmp_path / "ok.png")
    good = json.dumps({"id": "g", "image": "ok.png", "conversations": QA}).encode()
    rng = random.Random(1234)
    lines = []
    for k in range(120):
        data = bytearray(good.replace(b'"g"', b'"g%d"' % k))
        for _ in range(rng.randint(1, 4)):
            if not data:
                break
            kind = rng.randrange(4)
            position = rng.randrange(len(data))
            if kind == 0:
                data[position] = rng.randrange(256)
            elif kind == 1:
                del data[position : position + rng.randint(1, 8)]
            elif kind == 2:
                data[position:position] = rng.choice([b"\\ud800", b"\\u0000", b"<image>", b"[", b"{", b'"', b"\xc3"])
            else:
                data = data[:position]
        lines.append(bytes(data).replace(b"\n", b" "))
    path = tmp_path / "mutated.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    resolver = MediaResolver(tmp_path)
    by_validate = {p.index: p.reason for p in validate(path, resolver).problems}
    pipe = llava_interleave.load(hf_checkpoint, device="cpu")
    data = SFTDataset(JsonSource(path), resolver, pipe.processor, DataConfig(max_length=1 << 20, num_frames=4))
    by_training = {}
    for index in range(len(data)):
        try:
            _, skip = data.encode(index)
        except InterleaveError as err:  # pragma: no cover - shown by the assertion below
            pytest.fail(f"entry {index} raised instead of being skipped: {err}")
        if skip is not None:
            by_training[index] = skip[0]
    assert by_validate == by_training
    assert 0 < len(by_training) < len(lines)
