"""M4-Instruct / LLaVA data loading: the lazy JSON/JSONL index and mixtures (records.py), media resolution and
`to_sample` (m4.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llava_interleave.data import m4, records
from llava_interleave.data.m4 import MediaResolver, to_sample
from llava_interleave.data.records import DataError, JsonSource, Record, load_mixture, open_records
from llava_interleave.data.sample import Modality, Text, Visual
from llava_interleave.errors import MediaError

from .conftest import random_image, write_clip


def entry(i: int, **extra) -> dict:
    return {"id": f"s{i}", "image": f"img{i}.png", "conversations": [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": f"a{i}"}], **extra}


def write_json(path: Path, entries: list, indent: int | None = None) -> Path:
    path.write_text(json.dumps(entries, indent=indent, ensure_ascii=False), encoding="utf-8")
    return path


def write_jsonl(path: Path, entries: list) -> Path:
    path.write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in entries), encoding="utf-8")
    return path


NASTY = [
    {"id": 'quote "]} [{', "conversations": [{"from": "human", "value": 'a \\" b ] [ { } , \\\\'}], "metadata": {"deep": {"x": [1, [2, {"y": "]"}]]}}},
    {"id": "unicode", "conversations": [{"from": "gpt", "value": "ünïcödé 😀 中文 \u2028 \n\t"}], "image": ["a.png", "b,c].png"]},
    {"id": "ends-with-backslash\\", "conversations": [{"from": "human", "value": "\\"}], "metadata": {}},
    {"id": "", "conversations": [{"from": "human", "value": ""}], "video": "v1"},
]


@pytest.mark.parametrize("indent", [None, 2])
def test_lazy_index_of_json_list_with_nasty_strings(tmp_path, indent):
    source = JsonSource(write_json(tmp_path / "nasty.json", NASTY, indent))
    assert len(source) == len(NASTY)
    assert [source.raw(i) for i in range(len(source))] == NASTY
    assert source[1].images == ("a.png", "b,c].png") and source[1].turns[0][1].startswith("ünïcödé 😀")
    assert source[3].video == "v1" and source[-1].index == 3
    if indent:  # each element's '{' is on the line the index says
        lines = (tmp_path / "nasty.json").read_text(encoding="utf-8").split("\n")  # not splitlines: U+2028 is no JSON line break
        assert all(lines[source.line(i) - 1].strip() == "{" for i in range(len(source)))


def test_top_level_scalars_and_empty_list(tmp_path):
    source = JsonSource(write_json(tmp_path / "mixed.json", [1, "x]", [[], {}], None, {"a": "}"}]))
    assert [source.raw(i) for i in range(len(source))] == [1, "x]", [[], {}], None, {"a": "}"}]
    assert len(JsonSource(write_json(tmp_path / "empty.json", []))) == 0
    with pytest.raises(DataError, match="JSON object"):
        source[0]


def test_json_and_jsonl_give_the_same_records(tmp_path):
    entries = [entry(i, metadata={"dataset": "NLVR2"}) for i in range(5)] + NASTY
    from_json = JsonSource(write_json(tmp_path / "d.json", entries, indent=1))
    from_jsonl = JsonSource(write_jsonl(tmp_path / "d.jsonl", entries))
    assert len(from_json) == len(from_jsonl) == len(entries)
    strip = lambda r: (r.id, r.images, r.video, r.turns, r.metadata, r.index)  # noqa: E731
    assert [strip(r) for r in from_json] == [strip(r) for r in from_jsonl]
    assert from_jsonl[2].line == 3 and from_jsonl[2].source == str(tmp_path / "d.jsonl")


def test_malformed_jsonl_line_names_its_line_and_others_still_load(tmp_path):
    path = tmp_path / "bad.jsonl"
    good = [json.dumps(entry(i)) for i in range(3)]
    path.write_text(f"{good[0]}\n\n{{\"id\": \"broken\", \"conversations\": [\n{good[1]}\n{good[2]}\n")
    source = JsonSource(path)  # indexing does not parse, so it does not die
    assert len(source) == 4
    assert [source[i].id for i in (0, 2, 3)] == ["s0", "s1", "s2"]
    with pytest.raises(DataError, match=r"bad\.jsonl:3: entry 1: invalid JSON") as info:
        source[1]
    assert info.value.line == 3 and info.value.file == str(path)


@pytest.mark.parametrize(
    "text, problem",
    [('[{"a": "b}]', "unterminated string"), ("[1,]", "empty element"), ('[{"a": 1}', "unexpected end"), ("[1] [2]", "not closed")],
)
def test_broken_json_list_is_a_clear_error(tmp_path, text, problem):
    path = tmp_path / "broken.json"
    path.write_text(text)
    with pytest.raises(DataError, match=problem):
        JsonSource(path)


def test_missing_file_and_bad_record_shapes(tmp_path):
    with pytest.raises(DataError, match="not found"):
        JsonSource(tmp_path / "nope.json")
    source = JsonSource(write_jsonl(tmp_path / "shapes.jsonl", [{"id": "x"}, {"conversations": [{"from": "human"}]}, {**entry(0), "image": 3}]))
    for i, message in enumerate(["conversations", "string 'from' and 'value'", "'image' must be"]):
        with pytest.raises(DataError, match=message):
            source[i]


def test_getitem_parses_only_its_own_entry(tmp_path, monkeypatch):
    path = write_json(tmp_path / "big.json", [entry(i, metadata={"n": [i, {"s": "]"}]}) for i in range(20_000)])
    calls = []
    real_loads = json.loads
    monkeypatch.setattr(m4.json, "loads", lambda data, *a, **k: calls.append(len(data)) or real_loads(data, *a, **k))
    source = JsonSource(path)
    assert len(source) == 20_000 and calls == []  # the index is built without parsing
    record = source[12_345]
    assert record.id == "s12345" and record.metadata == {"n": [12345, {"s": "]"}]}
    assert len(calls) == 1 and calls[0] < 300  # one entry's bytes, not the file's


def test_mixture_strategies_counts_and_determinism(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    write_json(data / "a.json", [entry(i) for i in range(10)])
    write_jsonl(data / "b.jsonl", [entry(100 + i) for i in range(20)])
    config = tmp_path / "cfg"
    config.mkdir()

    def mixture(strategy: str, seed: int = 0, path: str = "../data/b.jsonl") -> records.Mixture:
        (config / "mix.yaml").write_text(f"datasets:\n  - json_path: {path}\n    sampling_strategy: '{strategy}'\n")
        return load_mixture(config / "mix.yaml", seed)

    assert len(mixture("all")) == 20
    assert [r.id for r in mixture("first:3")] == ["s100", "s101", "s102"]
    assert [r.id for r in mixture("end:2")] == ["s118", "s119"]
    assert len(mixture("first:500")) == 20  # clamped like the original slicing
    picked = [r.id for r in mixture("random:5")]
    assert len(set(picked)) == 5 and picked == [r.id for r in mixture("random:5")]
    assert picked != [r.id for r in mixture("random:5", seed=1)]
    assert len(mixture("25%")) == 5 and len(mixture("12.5%", path=str(data / "a.json"))) == 1
    assert [r.id for r in mixture("40%", seed=3)] == [r.id for r in mixture("40%", seed=3)]
    assert [r.id for r in mixture("40%", seed=3)] != [r.id for r in mixture("40%", seed=4)]


def test_mixture_as_a_top_level_list_is_a_lazy_sequence(tmp_path):
    write_json(tmp_path / "a.json", [entry(i) for i in range(10)])
    write_jsonl(tmp_path / "b.jsonl", [entry(100 + i) for i in range(20)])
    (tmp_path / "mix.yml").write_text("- {json_path: a.json}\n- {json_path: b.jsonl, sampling_strategy: 'first:4'}\n- {json_path: a.json, sampling_strategy: 'end:1'}\n")
    mix = open_records(tmp_path / "mix.yml")
    assert len(mix) == 15
    assert [mix[i].id for i in (0, 9, 10, 13, 14, -1)] == ["s0", "s9", "s100", "s103", "s9", "s9"]
    source, index = mix.locate(12)
    assert source.path.name == "b.jsonl" and index == 2
    assert mix.parts[0].source is mix.parts[2].source  # one index per file
    with pytest.raises(IndexError):
        mix[15]


@pytest.mark.parametrize(
    "body, message",
    [
        ("- {json_path: a.json, sampling_strategy: 'some:3'}", "unknown sampling_strategy"),
        ("- {json_path: a.json, sampling_strategy: 'first:x'}", "unknown sampling_strategy"),
        ("- {json_path: a.json, sampling_strategy: 'random:-2'}", "unknown sampling_strategy"),
        ("- {json_path: a.json, sampling_strategy: '150%'}", r"\[0, 100\]"),
        ("- {sampling_strategy: all}", "no json_path"),
        ("- {json_path: missing.json}", "not found"),
        ("datasets: 3", "a mixture is a list"),
    ],
)
def test_bad_mixture_is_a_clear_error(tmp_path, body, message):
    write_json(tmp_path / "a.json", [entry(0)])
    (tmp_path / "mix.yaml").write_text(body + "\n")
    with pytest.raises(DataError, match=message):
        load_mixture(tmp_path / "mix.yaml")


def test_media_resolver_finds_images_and_videos(tmp_path):
    images, videos = tmp_path / "images", tmp_path / "videos"
    (videos / "frames_clip").mkdir(parents=True)
    images.mkdir()
    write_clip(videos / "by_ext.mp4", frames=4)
    write_clip(videos / "nested.avi", frames=4)
    (tmp_path / "map.json").write_text(json.dumps({"mapped": "nested.avi"}))
    resolver = MediaResolver(images, videos, tmp_path / "map.json")
    assert resolver.image("a/b.png") == images / "a" / "b.png"
    assert resolver.image(str(tmp_path / "abs.png")) == tmp_path / "abs.png"
    assert resolver.video("by_ext.mp4") == videos / "by_ext.mp4"  # a path under video_root
    assert resolver.video("mapped") == videos / "nested.avi"  # via the map
    assert resolver.video("by_ext") == videos / "by_ext.mp4"  # id + a usual extension
    assert resolver.video("frames_clip") == videos / "frames_clip"  # a frame folder
    with pytest.raises(MediaError, match="'ghost'"):
        resolver.video("ghost")


def test_to_sample_modalities(tmp_path):
    for i in range(3):
        random_image(i).save(tmp_path / f"img{i}.png")
    write_clip(tmp_path / "clip.mp4", frames=24)
    frames = tmp_path / "clip_frames"
    frames.mkdir()
    for i in range(5):
        random_image(10 + i).save(frames / f"f{i}.png")
    resolver = MediaResolver(tmp_path)
    turns = (("human", "<image>\nq"), ("gpt", "a"))
    multi = (("human", "<image><image>q"), ("gpt", "a"))

    def visuals(record: Record) -> tuple[Visual, ...]:
        return to_sample(record, resolver, num_frames=4, anyres=True).visuals

    video = visuals(Record(id="v", images=(), video="clip.mp4", turns=turns))
    assert [v.modality for v in video] == [Modality.VIDEO] and len(video[0].frames) == 4
    folder = visuals(Record(id="f", images=(), video="clip_frames", turns=turns))
    assert folder[0].modality == Modality.VIDEO and len(folder[0].frames) == 4
    assert visuals(Record(id="p", images=("img0.png",), video=None, turns=turns))[0].modality == Modality.PATCHES
    assert {v.modality for v in visuals(Record(id="i", images=("img0.png", "img1.png"), video=None, turns=multi))} == {Modality.IMAGE}
    for meta in ({"scenario": "multi-view"}, {"dataset": "ScanQA"}, {"dataset": "3D-LLM-Planning"}, {"dataset": "nuscenes"}):
        assert {v.modality for v in visuals(Record(id="3d", images=("img0.png", "img1.png"), video=None, turns=multi, metadata=meta))} == {Modality.VIEW}
    assert m4.record_scenario(Record(id="x", images=("img0.png",), video=None, turns=turns, metadata={"dataset": "ScanNet_chat"}), resolver,
                              anyres=True) == Modality.VIEW
    lone = Record(id="p", images=("img0.png",), video=None, turns=turns)
    assert to_sample(lone, resolver, num_frames=4, anyres=False).visuals[0].modality == Modality.IMAGE
    assert m4.record_scenario(lone, resolver, anyres=False) == Modality.IMAGE
    assert m4.record_scenario(Record(id="v", images=("img0.png",), video="ghost.mp4", turns=multi), resolver, anyres=True) == Modality.VIDEO


def test_to_sample_slot_placement_across_turns(tmp_path):
    for i in range(3):
        random_image(i).save(tmp_path / f"img{i}.png")
    record = Record(id="multi", images=("img0.png", "img1.png", "img2.png"), video=None, turns=(("system", "be brief"), ("human", "<image> vs <image>?"), ("gpt", "same"), ("human", "and <image>?"), ("gpt", "no")))
    sample = to_sample(record, MediaResolver(tmp_path), num_frames=4, anyres=True)
    assert sample.id == "multi" and [t.role for t in sample.turns] == ["system", "user", "assistant", "user", "assistant"]
    first, third = sample.turns[1].segments, sample.turns[3].segments
    assert [type(s) for s in first] == [Visual, Text, Visual, Text] and first[1] == Text(" vs ")
    assert [type(s) for s in third] == [Text, Visual, Text] and third[0] == Text("and ")
    assert [Path(v.source).name for v in sample.visuals] == ["img0.png", "img1.png", "img2.png"]
    assert sample.turns[2].segments == (Text("same"),)


def test_to_sample_without_slots_and_with_broken_records(tmp_path):
    random_image(0).save(tmp_path / "img0.png")
    resolver = MediaResolver(tmp_path)
    sample = to_sample(Record(id="n", images=("img0.png",), video=None, turns=(("human", "describe"), ("gpt", "a"))), resolver, num_frames=4, anyres=True)
    assert [type(s) for s in sample.turns[0].segments] == [Visual, Text]
    with pytest.raises(DataError, match="2 <image> slot"):
        to_sample(Record(id="m", images=("img0.png",), video=None, turns=(("human", "<image><image>"), ("gpt", "a"))), resolver, num_frames=4, anyres=True)
    with pytest.raises(DataError, match="only user turns"):
        to_sample(Record(id="g", images=("img0.png",), video=None, turns=(("human", "<image>"), ("gpt", "<image>"))), resolver, num_frames=4, anyres=True)
    with pytest.raises(DataError, match="unknown speaker"):
        to_sample(Record(id="u", images=(), video=None, turns=(("robot", "hi"),)), resolver, num_frames=4, anyres=True)
    with pytest.raises(MediaError, match="not found"):
        to_sample(Record(id="x", images=("missing.png",), video=None, turns=(("human", "<image>"), ("gpt", "a"))), resolver, num_frames=4, anyres=True)
