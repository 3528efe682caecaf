"""`data validate`: each kind of broken sample is reported at its file, line and id; good ones can be rewritten."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from llava_interleave.data import defects as v
from llava_interleave.data.m4 import MediaResolver
from llava_interleave.data.records import DataError, JsonSource, load_mixture
from llava_interleave.data.validate import Problem, run_validate, validate, write_good

from .conftest import random_image, write_clip


def conv(*turns: tuple[str, str]) -> list[dict]:
    return [{"from": who, "value": value} for who, value in turns]


QA = conv(("human", "<image>\nwhat?"), ("gpt", "this"))

# (entry, expected reason or None); each broken entry has exactly one problem.
CASES = [
    ({"id": "good-image", "image": "ok.png", "conversations": QA}, None),
    ({"id": "good-multi", "image": ["ok.png", "ok2.png"], "conversations": conv(("system", "s"), ("human", "<image><image>?"), ("gpt", "x"), ("human", "more?"), ("gpt", "y"))}, None),
    ({"id": "good-video", "video": "clip", "conversations": QA}, None),
    ({"id": "good-text", "conversations": conv(("human", "hi"), ("gpt", "hello"))}, None),
    ({"id": "first-gpt", "image": "ok.png", "conversations": conv(("gpt", "hi"), ("human", "<image> x"))}, v.FIRST_NOT_HUMAN),
    ({"id": "two-humans", "image": "ok.png", "conversations": conv(("human", "<image>"), ("human", "again"), ("gpt", "x"))}, v.NOT_ALTERNATING),
    ({"id": "too-few-slots", "image": ["ok.png", "ok2.png"], "conversations": QA}, v.IMAGE_COUNT),
    ({"id": "video-two-slots", "video": "clip", "conversations": conv(("human", "<image><image>"), ("gpt", "x"))}, v.IMAGE_COUNT),
    ({"id": "slot-in-answer", "image": ["ok.png", "ok2.png"], "conversations": conv(("human", "<image>"), ("gpt", "<image>"))},
     v.IMAGE_COUNT),  # training takes slots from user turns only
    ({"id": "missing-image", "image": "nope.png", "conversations": QA}, v.MISSING_MEDIA),
    ({"id": "corrupt-image", "image": "corrupt.png", "conversations": QA}, v.UNREADABLE_MEDIA),
    ({"id": "missing-video", "video": "ghost", "conversations": QA}, v.MISSING_MEDIA),
    ({"id": "corrupt-video", "video": "broken.mp4", "conversations": QA}, v.UNREADABLE_MEDIA),
    ({"id": "empty-answer", "image": "ok.png", "conversations": conv(("human", "<image>"), ("gpt", "  \n"))}, v.EMPTY_ANSWER),
    ({"id": "no-conversations", "image": "ok.png"}, v.MISSING_CONVERSATIONS),
    ({"id": "empty-conversations", "conversations": []}, v.MISSING_CONVERSATIONS),
    ({"id": "robot", "conversations": conv(("human", "hi"), ("robot", "x"))}, v.UNKNOWN_SPEAKER),
    ({"id": "bad-turn", "conversations": [{"from": "human"}]}, v.MALFORMED_ENTRY),
]


@pytest.fixture
def media(tmp_path) -> MediaResolver:
    images, videos = tmp_path / "images", tmp_path / "videos"
    images.mkdir()
    videos.mkdir()
    random_image(0).save(images / "ok.png")
    random_image(1).save(images / "ok2.png")
    (images / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    write_clip(videos / "clip.mp4", frames=6)
    (videos / "broken.mp4").write_bytes(b"not a video at all" * 10)
    return MediaResolver(images, videos)


def expected(path: Path, lines: list[int]) -> list[tuple[str, int, str, str]]:
    return [(str(path), line, e["id"], reason) for (e, reason), line in zip(CASES, lines) if reason]


def found(problems: list[Problem]) -> list[tuple[str, int, str, str]]:
    return [(p.file, p.location, p.sample_id, p.reason) for p in problems]


def test_each_reason_found_at_its_jsonl_line(tmp_path, media):
    path = tmp_path / "data.jsonl"
    lines = [json.dumps(e) for e, _ in CASES]
    path.write_text("\n".join(lines[:3]) + "\n{not json\n\n" + "\n".join(lines[3:]) + "\n")
    report = validate(path, media)
    numbers = [1, 2, 3] + [6 + k for k in range(len(CASES) - 3)]  # line 4 broken, line 5 blank
    assert found(report.problems) == [(str(path), 4, "", v.UNREADABLE_JSON)] + expected(path, numbers)
    assert report.problems[0].index == 3 and "invalid JSON" in report.problems[0].detail
    bad = sum(1 for _, reason in CASES if reason) + 1
    assert (report.total, report.good, report.bad) == (len(CASES) + 1, len(CASES) + 1 - bad, bad)
    assert report.by_reason[v.MISSING_MEDIA] == 2 and report.by_reason[v.MISSING_CONVERSATIONS] == 2


def test_each_reason_found_at_its_json_line(tmp_path, media):
    path = tmp_path / "data.json"
    path.write_text("[\n" + ",\n".join(json.dumps(e) for e, _ in CASES) + "\n]\n")
    report = validate(str(path), media)
    assert found(report.problems) == expected(path, [2 + k for k in range(len(CASES))])
    assert [p.index for p in report.problems] == [k for k, (_, reason) in enumerate(CASES) if reason]


def test_problem_details_and_format(tmp_path, media):
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps(e) for e, _ in CASES) + "\n")
    report = validate(path, media)
    details = {p.sample_id: p.detail for p in report.problems}
    assert details["too-few-slots"] == "1 <image> slot(s) but 2 image(s)/video(s)"
    assert "nope.png" in details["missing-image"] and "'ghost'" in details["missing-video"]
    assert details["first-gpt"] == "first turn is from 'gpt'" and details["empty-answer"] == "turn 1"
    text = report.format().splitlines()
    assert text[0] == f"{path}:5 first-gpt: {v.FIRST_NOT_HUMAN} (first turn is from 'gpt')"
    assert f"{len(CASES)} samples: 4 good, {len(CASES) - 4} bad" in text
    assert f"  {v.IMAGE_COUNT}: 3" in text


def test_without_media_checks_only_structure(tmp_path, media):
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps(e) for e, _ in CASES) + "\n")
    reasons = {p.reason for p in validate(path, media, check_media=False).problems}
    assert not reasons & {v.MISSING_MEDIA, v.UNREADABLE_MEDIA} and v.IMAGE_COUNT in reasons


def test_broken_json_list_is_one_problem(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('[\n{"id": "a"},\n{"id": "b\n]')
    report = validate([path], MediaResolver(None))
    assert found(report.problems) == [(str(path), 3, "", v.UNREADABLE_JSON)] and report.total == 0
    assert "unterminated string" in report.format()


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_write_good_keeps_the_original_objects(tmp_path, media, suffix):
    path = tmp_path / "data.json"
    path.write_text(json.dumps([e for e, _ in CASES], ensure_ascii=False))
    report = validate(path, media)
    out = tmp_path / f"clean{suffix}"
    assert write_good(report, out) == 4
    good = [e for e, reason in CASES if reason is None]
    assert [JsonSource(out).raw(i) for i in range(4)] == good
    assert validate(out, media).ok
    with pytest.raises(DataError, match="refusing to overwrite"):
        write_good(report, path)


def test_mixture_checks_only_the_entries_it_keeps(tmp_path, media):
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps(e) for e, _ in CASES) + "\n")
    (tmp_path / "mix.yaml").write_text("datasets:\n  - {json_path: data.jsonl, sampling_strategy: 'first:5'}\n")
    report = validate(tmp_path / "mix.yaml", media)
    assert report.total == 5 and found(report.problems) == expected(path, list(range(1, 6)))
    assert validate(load_mixture(tmp_path / "mix.yaml"), media).total == 5


def test_run_validate_exit_status_and_fix_out(tmp_path, media):
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps(e) for e, _ in CASES) + "\n")
    out = io.StringIO()
    fixed = tmp_path / "fixed.jsonl"
    status = run_validate(str(path), str(media.image_root), str(media.video_root), str(fixed), out=out)
    assert status == 1 and f"{path}:5 first-gpt" in out.getvalue() and "wrote 4 good samples" in out.getvalue()
    clean = io.StringIO()
    assert run_validate(str(fixed), str(media.image_root), str(media.video_root), None, out=clean) == 0
    assert clean.getvalue().strip() == "4 samples: 4 good, 0 bad"
