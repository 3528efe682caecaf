"""One road into the sample: an M4 record, a bench item, the Python API's messages and an OpenAI request that
say the same conversation become the same `Sample` (roles, text, slot order, modality and pixels), by the
one modality rule; and `model/` imports nothing from `data/`."""

from __future__ import annotations

import ast
import base64
import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest

import llava_interleave
from llava_interleave.data.conversation import Media, Message, attach_media, modality_of, to_sample
from llava_interleave.data.m4 import MediaResolver
from llava_interleave.data.m4 import to_sample as record_sample
from llava_interleave.data.records import Record
from llava_interleave.data.sample import Sample, Visual
from llava_interleave.errors import PromptError
from llava_interleave.eval.bench import item_from_entry
from llava_interleave.eval.runner import item_sample
from llava_interleave.model.inputs import Modality
from llava_interleave.serve.protocol import parse_request, to_messages
from llava_interleave.serve.settings import ServeSettings

from .conftest import write_clip

PACKAGE = Path(llava_interleave.__file__).parent


def test_model_imports_nothing_from_data():
    offenders = []
    for path in sorted((PACKAGE / "model").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                module = ("." * node.level) + (node.module or "")
                if module.startswith("..data") or module.startswith("llava_interleave.data"):
                    offenders.append(f"{path.name}: from {module} import ...")
            elif isinstance(node, ast.Import):
                offenders += [f"{path.name}: import {a.name}" for a in node.names if a.name.startswith("llava_interleave.data")]
    assert not offenders, offenders


@pytest.mark.parametrize(("kind", "is_video", "lone", "anyres", "multi_view", "expected"), [
    ("video", True, True, True, False, Modality.VIDEO),
    ("image", True, False, False, True, Modality.VIDEO),  # an image path that names a video is a video
    ("view", False, True, True, False, Modality.VIEW),  # a lone view stays a view
    ("image", False, False, True, True, Modality.VIEW),
    ("image", False, True, True, False, Modality.PATCHES),
    ("image", False, True, False, False, Modality.IMAGE),  # no anyres: a lone image is one crop
    ("image", False, False, True, False, Modality.IMAGE),
])
def test_the_modality_rule(kind, is_video, lone, anyres, multi_view, expected):
    assert modality_of(kind, is_video=is_video, lone=lone, anyres=anyres, multi_view=multi_view) == expected


def _shape(sample: Sample) -> list[tuple[str, list[tuple[str, str]]]]:
    """Roles, then per segment its text or its modality and a digest of its pixels."""
    def segment(s: object) -> tuple[str, str]:
        if isinstance(s, Visual):
            digest = hashlib.sha256(b"".join(np.asarray(f.convert("RGB")).tobytes() for f in s.frames)).hexdigest()[:16]
            return s.modality.value, f"{len(s.frames)} frame(s) {digest}"
        return "text", s.text

    return [(turn.role, [segment(s) for s in turn.segments]) for turn in sample.turns]


def _data_url(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def _four_roads(pipe, image_paths: list[Path], question: str, answer: str, dataset: str = "Spot-the-Diff") -> list[Sample]:
    """The same one-round conversation through every source: M4 record, bench entry, API dicts, OpenAI JSON."""
    proc = pipe.config.processor
    multi_view = dataset == "ScanQA"
    record = Record(id="x", images=tuple(str(p) for p in image_paths), video=None,
                    turns=(("human", question), ("gpt", answer)), metadata={"dataset": dataset})
    m4 = record_sample(record, MediaResolver(None), num_frames=proc.num_frames, anyres=proc.uses_anyres)
    entry = {"sample_id": "x", "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}],
             "image": [p.name for p in image_paths], "metadata": {"dataset": dataset}}
    bench = item_sample(pipe, item_from_entry(entry, image_paths[0].parent, None, "test"), proc.num_frames)
    kind = "view" if multi_view else "image"
    api = pipe.sample([{"role": "user", "content": [question, *({"type": kind, "image": p} for p in image_paths)]},
                       {"role": "assistant", "content": answer}], multi_view=multi_view)
    body = {"messages": [{"role": "user", "content": [{"type": "text", "text": question}] +
                          [{"type": "image_url", "image_url": {"url": _data_url(p)}} for p in image_paths]},
                         {"role": "assistant", "content": answer}]}
    http = pipe.sample(to_messages(parse_request(json.dumps(body).encode()), ServeSettings(model_name="m")),
                       multi_view=multi_view)
    return [m4, bench, api, http]


@pytest.mark.parametrize("layout", ["original", "hf"])
@pytest.mark.parametrize("count", [1, 3])
def test_every_road_gives_the_same_sample(layout, count, original_checkpoint, hf_checkpoint, image_files):
    pipe = llava_interleave.load(original_checkpoint if layout == "original" else hf_checkpoint, device="cpu")
    question = " and ".join(["<image>"] * count) + ": what differs?" if count > 1 else "Describe it."
    samples = _four_roads(pipe, image_files[:count], question, "Colour.")
    shapes = [_shape(s) for s in samples]
    assert all(shape == shapes[0] for shape in shapes[1:]), shapes
    lone = Modality.PATCHES if layout == "original" else Modality.IMAGE
    assert [v.modality for v in samples[0].visuals] == ([lone] if count == 1 else [Modality.IMAGE] * count)


def test_every_road_gives_views_for_a_3d_dataset(original_checkpoint, image_files):
    pipe = llava_interleave.load(original_checkpoint, device="cpu")
    m4, bench, api, _ = _four_roads(pipe, image_files[:2], "<image><image> How many chairs?", "2", dataset="ScanQA")
    assert _shape(m4) == _shape(bench) == _shape(api)
    assert {v.modality for v in m4.visuals} == {Modality.VIEW}


def test_every_road_gives_the_same_video(original_checkpoint, tmp_path):
    pipe = llava_interleave.load(original_checkpoint, device="cpu")
    clip = write_clip(tmp_path / "clip.mp4", frames=12)
    record = Record(id="v", images=(), video=str(clip), turns=(("human", "<image>\nWhat moves?"), ("gpt", "a ball")))
    m4 = record_sample(record, MediaResolver(None), num_frames=4, anyres=True)
    entry = {"sample_id": "v", "conversations": [{"from": "human", "value": "<image>\nWhat moves?"},
                                                  {"from": "gpt", "value": "a ball"}], "image": ["clip.mp4"]}
    bench = item_sample(pipe, item_from_entry(entry, tmp_path, None, "test"), 4)
    api = pipe.sample([{"role": "user", "content": ["<image>\nWhat moves?", {"type": "video", "video": clip, "frames": 4}]},
                       {"role": "assistant", "content": "a ball"}])
    assert _shape(m4) == _shape(bench) == _shape(api)
    assert [v.modality for v in m4.visuals] == [Modality.VIDEO] and len(m4.visuals[0].frames) == 4


def test_attach_media_hands_media_to_user_turns_by_slots():
    media = [Media(kind="image", source=f"{i}.png") for i in range(3)]
    messages = attach_media([("system", "s"), ("user", "<image> vs <image>"), ("assistant", "a"), ("user", "<image>?")], media)
    assert [len(m.media) for m in messages] == [0, 2, 0, 1]
    assert [m.source for m in messages[3].media] == ["2.png"]
    assert [len(m.media) for m in attach_media([("user", "no slot"), ("assistant", "a")], media)] == [3, 0]
    with pytest.raises(PromptError, match="2 <image> slot"):
        attach_media([("user", "<image><image>")], media)
    with pytest.raises(PromptError, match="only user turns"):
        attach_media([("user", "<image>"), ("assistant", "<image>")], media[:2])


def test_media_only_in_user_messages_and_known_roles(image_files):
    picture = Media(kind="image", source=image_files[0])
    with pytest.raises(PromptError, match="only user messages"):
        to_sample([Message("assistant", (picture, "hi"))], num_frames=4, anyres=True)
    with pytest.raises(PromptError, match="unknown role"):
        to_sample([Message("robot", ("hi",))], num_frames=4, anyres=True)  # type: ignore[arg-type]
    with pytest.raises(PromptError, match="2 <image> slot"):
        to_sample([Message("user", ("<image> and <image>", picture, picture, picture))], num_frames=4, anyres=True)


def test_a_picture_in_memory_and_on_disk_give_the_same_pixels(image_files):
    from PIL import Image

    with Image.open(image_files[1]) as opened:
        in_memory = opened.copy()
    data = io.BytesIO()
    in_memory.save(data, format="PNG")
    a = to_sample([Message("user", (Media(kind="image", source=in_memory), "x"))], num_frames=4, anyres=False)
    b = to_sample([Message("user", (Media(kind="image", source=image_files[1]), "x"))], num_frames=4, anyres=False)
    assert _shape(a) == _shape(b)


def test_hostile_parts_are_one_line_errors(hf_checkpoint, tmp_path):
    """The one road refuses what no tokenizer or decoder can take, with one-line InterleaveErrors."""
    import os

    from llava_interleave.errors import InterleaveError, MediaError

    pipe = llava_interleave.load(hf_checkpoint, device="cpu")
    os.mkfifo(tmp_path / "fifo.png")
    (tmp_path / "folder").mkdir()
    cases = [
        (["hi \ud800"], PromptError, "lone surrogate"),
        (["a\x00b"], PromptError, "NUL"),
        (["x" * 1_000_001], PromptError, "over the limit"),
        ([{"type": "image", "image": tmp_path / "fifo.png"}, "hi"], MediaError, "not an image file"),
        ([{"type": "image", "image": tmp_path / "folder"}, "hi"], MediaError, "frame folder has no images"),
        ([{"type": "image"}], PromptError, "unknown content part"),
        ([{"type": {"nested": ["deep"]}}], PromptError, "unknown content part"),
    ]
    for content, error, words in cases:
        with pytest.raises(error, match=words) as caught:
            pipe.sample([{"role": "user", "content": content}])
        assert isinstance(caught.value, InterleaveError) and "\n" not in str(caught.value)
