"""Synthetic M4-style data and bench: deterministic, complete, well-formed, loadable, and correctly answered.

Answers are re-derived independently of the generator: from the drawn pixels (shape colours at the stored
centres, the moving shape's centroid in the decoded video) and from the stored shape lists.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from llava_interleave.data.drawn import LETTERS
from llava_interleave.data.m4 import MediaResolver, to_sample
from llava_interleave.data.media import load_image, load_video
from llava_interleave.data.records import open_records
from llava_interleave.data.sample import Modality
from llava_interleave.data.shapes import BACKGROUND, COLOURS, GREY, PALETTE
from llava_interleave.data.synth import DIRECTIONS, write_synthetic

N, SEED, SIZE = 55, 7, 96  # 55 // 5 = 11 bench samples: every task once
DATASETS = {"SynthSpotDiff", "SynthWhichMore", "SynthCount", "SynthMotion", "SynthScene3D", "SynthDetail", "SynthDescribe",
            "SynthName", "SynthImageColour", "SynthColourChange", "SynthSceneSide"}
SCENARIO_MODALITY = {"multi-image": Modality.IMAGE, "video": Modality.VIDEO, "multi-view": Modality.VIEW,
                     "multi-patch": Modality.PATCHES}


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> tuple[Path, list[dict], list[dict]]:
    out = tmp_path_factory.mktemp("synth")
    summary = write_synthetic(out, N, SEED)
    train, bench = json.loads(summary.train_json.read_text()), json.loads(summary.bench_json.read_text())
    return out, train, bench


def _by(entries: list[dict], dataset: str) -> list[dict]:
    return [e for e in entries if e["metadata"]["dataset"] == dataset]


def _human(entry: dict) -> str:
    return entry["conversations"][0]["value"]


def _answer(entry: dict) -> str:
    return entry["conversations"][1]["value"]


def _options(entry: dict) -> dict[str, str]:
    """Letter -> option text, read from the question text, not from the generator."""
    return dict(re.findall(r"^\(([A-H])\) (.+)$", _human(entry), flags=re.M))


def _images(entry: dict) -> list[str]:
    return [entry["image"]] if isinstance(entry.get("image"), str) else list(entry.get("image") or [])


def _still_pictures(out: Path, entries: list[dict]):
    """(entry, [decoded images]) for every entry whose pictures are stills (no video)."""
    for entry in entries:
        if entry["metadata"]["scenario"] != "video":
            yield entry, [np.asarray(load_image(out / name)) for name in _images(entry)]


def _sample_key(entry: dict) -> str:
    meta = entry["metadata"]
    return json.dumps([meta["dataset"], _human(entry), meta["facts"]], sort_keys=True)


def test_same_seed_same_bytes_other_seed_other_content(synth, tmp_path):
    out, train, _ = synth
    again = write_synthetic(tmp_path / "again", N, SEED)
    assert again.train_json.read_bytes() == (out / "train.json").read_bytes()
    assert again.bench_json.read_bytes() == (out / "bench.json").read_bytes()
    first_image = _images(train[0])[0]
    assert (tmp_path / "again" / first_image).read_bytes() == (out / first_image).read_bytes()
    other = json.loads(write_synthetic(tmp_path / "other", N, SEED + 1).train_json.read_text())
    assert [_sample_key(e) for e in other] != [_sample_key(e) for e in train]  # content, not just the ids


def test_every_task_scenario_and_question_type_in_both_splits(synth):
    _, train, bench = synth
    for entries in (train, bench):
        assert {e["metadata"]["dataset"] for e in entries} == DATASETS
        assert {e["metadata"]["scenario"] for e in entries} == set(SCENARIO_MODALITY)
        assert {e["metadata"]["question_type"] for e in entries} == {"multi-choice", "open-ended"}
    assert len(train) == N and len(bench) == max(N // 5, 8)


def test_train_layout_and_image_slots(synth):
    _, train, _ = synth
    for entry in train:
        assert [t["from"] for t in entry["conversations"]] == ["human", "gpt"]
        assert "<image>" not in _answer(entry)
        if entry["metadata"]["scenario"] == "video":
            assert "image" not in entry and entry["video"].endswith(".mp4")
            assert _human(entry).count("<image>") == 1
        else:
            assert "video" not in entry
            assert _human(entry).count("<image>") == len(_images(entry)) >= 1
        if entry["metadata"]["scenario"] == "multi-patch":  # a lone image, written as a string like LLaVA does
            assert isinstance(entry["image"], str)


def test_bench_layout(synth):
    _, _, bench = synth
    per_dataset = Counter(e["metadata"]["dataset"] for e in bench)
    for entry in bench:
        meta = entry["metadata"]
        assert set(entry) == {"sample_id", "conversations", "image", "choice_list", "metadata"}
        assert meta["split"] == "in_domain" and meta["task_instruction"]
        assert meta["num_sample"] == per_dataset[meta["dataset"]]
        assert _human(entry).count("<image>") == len(entry["image"]) >= 1
        if meta["question_type"] == "open-ended":
            assert entry["choice_list"] is None
        else:  # the listed choices are the ones shown in the question, in order
            assert list(_options(entry).values()) == entry["choice_list"]


def test_media_exist_and_load(synth):
    out, train, bench = synth
    for entry in train + bench:
        facts = entry["metadata"]["facts"]
        if entry["metadata"]["scenario"] == "video":
            path = out / (entry["video"] if "video" in entry else entry["image"][0])
            frames = load_video(path, num_frames=64)
            assert 8 <= len(frames) <= 12 and len(frames) == len(facts.get("path") or facts["frames"])
            assert frames[0].size == (SIZE, SIZE)
            continue
        for name in _images(entry):
            image = load_image(out / name)
            if entry["metadata"]["scenario"] == "multi-patch":
                assert 2 * SIZE <= max(image.size) <= 3 * SIZE
            else:
                assert image.size == (SIZE, SIZE)


def test_the_pipeline_reads_each_scenario_with_its_modality(synth):
    out, _, _ = synth
    records = open_records(out / "train.json")
    resolver = MediaResolver(out, out)
    seen = set()
    for record in records:
        sample = to_sample(record, resolver, num_frames=8, anyres=True)
        visuals = [v for turn in sample.turns for v in turn.visuals]
        scenario = record.metadata["scenario"]
        assert {v.modality for v in visuals} == {SCENARIO_MODALITY[scenario]}, record.id
        seen.add(scenario)
    assert seen == set(SCENARIO_MODALITY)


def test_stored_shapes_are_the_drawn_pixels(synth):
    out, train, bench = synth
    checked = 0
    for entry, pictures in _still_pictures(out, train + bench):
        shapes = entry["metadata"]["facts"]["shapes"]
        assert len(shapes) == len(pictures)
        for picture, listed in zip(pictures, shapes):
            for _, colour, x, y, _ in listed:
                assert tuple(picture[y, x]) == PALETTE[colour], (entry.get("id"), colour, x, y)
                checked += 1
    assert checked > 100


def test_spot_the_difference_answers(synth):
    out, train, bench = synth
    for entry, (first, second) in _still_pictures(out, _by(train + bench, "SynthSpotDiff")):
        facts = entry["metadata"]["facts"]
        before = {(k, c, x, y) for k, c, x, y, _ in facts["shapes"][0]}
        after = {(k, c, x, y) for k, c, x, y, _ in facts["shapes"][1]}
        added, removed = after - before, before - after
        if added and removed:  # recoloured: same place and kind, new colour
            ((kind, old, x, y),), ((_, new, _, _),) = removed, added
            assert f"{old} {kind}" in _answer(entry) and new in _answer(entry) and "turned" in _answer(entry)
            assert tuple(second[y, x]) == COLOURS[new]
        elif added:
            ((kind, colour, x, y),) = added
            assert f"{colour} {kind} was added" in _answer(entry) and tuple(first[y, x]) == BACKGROUND
        else:
            ((kind, colour, x, y),) = removed
            assert f"{colour} {kind} was removed" in _answer(entry) and tuple(second[y, x]) == BACKGROUND


def test_which_has_more_answers(synth):
    _, train, bench = synth
    for entry in _by(train + bench, "SynthWhichMore"):
        facts = entry["metadata"]["facts"]
        counts = [sum(shape[1] == facts["colour"] for shape in image) for image in facts["shapes"]]
        assert len(set(counts)) == len(counts)  # a unique winner
        best = counts.index(max(counts))
        assert _options(entry)[_answer(entry)] == f"Image {best + 1}"
        assert f"most {facts['colour']} shapes" in _human(entry)


def test_count_answers(synth):
    _, train, bench = synth
    for entry in _by(train + bench, "SynthCount"):
        facts = entry["metadata"]["facts"]
        total = sum(shape[0] == facts["kind"] for image in facts["shapes"] for shape in image)
        assert _answer(entry) == str(total) and f"How many {facts['kind']}s" in _human(entry)


def _centroid(frame, colour: tuple[int, int, int]) -> np.ndarray:
    """Centre of the pixels near `colour` in a decoded (lossy) frame."""
    pixels = np.asarray(frame).astype(int)
    ys, xs = np.nonzero(np.abs(pixels - np.array(colour)).sum(axis=-1) < 60)
    assert len(xs) > 10, "the moving shape is not visible"
    return np.array([xs.mean(), ys.mean()])


def test_motion_answers_match_the_decoded_video(synth):
    out, train, bench = synth
    names = {(1, 0): "right", (-1, 0): "left", (0, 1): "down", (0, -1): "up"}
    for entry in _by(train + bench, "SynthMotion"):
        kind, colour = entry["metadata"]["facts"]["mover"][:2]
        frames = load_video(out / (entry["video"] if "video" in entry else entry["image"][0]), num_frames=64)
        shift = _centroid(frames[-1], COLOURS[colour]) - _centroid(frames[0], COLOURS[colour])
        axis = int(np.argmax(np.abs(shift)))
        assert abs(shift[axis]) > 0.3 * SIZE and abs(shift[1 - axis]) < 3
        step = (int(np.sign(shift[0])), 0) if axis == 0 else (0, int(np.sign(shift[1])))
        assert _options(entry)[_answer(entry)] == names[step] and f"does the {colour} {kind} move" in _human(entry)


def test_multi_view_answers(synth):
    _, train, bench = synth
    sightings = unique = 0
    for entry in _by(train + bench, "SynthScene3D"):
        facts = entry["metadata"]["facts"]
        views = [[(k, c, x + offset, y) for k, c, x, y, _ in view] for offset, view in zip(facts["offsets"], facts["shapes"])]
        seen = {shape for view in views for shape in view}  # back in scene coordinates: one per object
        assert len(seen) == len(facts["objects"])  # every object is whole in at least one view
        assert _options(entry)[_answer(entry)] == str(sum(colour == facts["colour"] for _, colour, *_ in seen))
        assert _human(entry).count("<image>") == len(views) >= 2
        sightings, unique = sightings + sum(map(len, views)), unique + len(seen)
    assert sightings > unique  # views overlap: some objects show in several views and must not be counted twice


def test_small_detail_answers(synth):
    out, train, bench = synth
    for entry, (picture,) in _still_pictures(out, _by(train + bench, "SynthDetail")):
        triangles = [s for s in entry["metadata"]["facts"]["shapes"][0] if s[0] == "triangle"]
        assert len(triangles) == 1
        _, colour, x, y, _ = triangles[0]
        assert tuple(picture[y, x]) == COLOURS[colour]
        assert _options(entry)[_answer(entry)] == colour
        assert all(s[1] == GREY for s in entry["metadata"]["facts"]["shapes"][0] if s[0] != "triangle")


def test_describe_answers(synth):
    out, train, bench = synth
    places = {(0, 0): "at the top left", (1, 1): "in the centre", (2, 2): "at the bottom right", (0, 1): "at the middle left"}
    for entry, pictures in _still_pictures(out, _by(train + bench, "SynthDescribe")):
        cell = entry["metadata"]["facts"]["cell"]
        for i, (picture, shapes) in enumerate(zip(pictures, entry["metadata"]["facts"]["shapes"])):
            sentence = _answer(entry).split(f"Image {i + 1}: ")[1].split(".")[0]
            assert len(re.findall(r"(?:^|, | and )an? ", sentence)) == len(shapes)
            for kind, colour, x, y, _ in shapes:
                article = "an" if colour == "orange" else "a"
                assert tuple(picture[y, x]) == COLOURS[colour] and f"{article} {colour} {kind}" in sentence
                where = places.get((x // cell, y // cell))
                assert where is None or f"{article} {colour} {kind} {where}" in sentence


def test_name_answers(synth):
    out, train, bench = synth
    for entry, pictures in _still_pictures(out, _by(train + bench, "SynthName")):
        for i, (picture, ((kind, colour, x, y, r),)) in enumerate(zip(pictures, entry["metadata"]["facts"]["shapes"])):
            assert tuple(picture[y, x]) == COLOURS[colour] and r >= SIZE // 6
            assert f"Image {i + 1}: {'an' if colour == 'orange' else 'a'} {colour} {kind}." in _answer(entry)


def _has_colour(picture: np.ndarray, colour: str) -> bool:
    return bool((np.abs(picture.astype(int) - np.array(COLOURS[colour])).sum(axis=-1) < 60).sum() > 20)


def test_image_colour_answers(synth):
    out, train, bench = synth
    for entry, pictures in _still_pictures(out, _by(train + bench, "SynthImageColour")):
        shown = [[c for c in COLOURS if _has_colour(picture, c)] for picture in pictures]
        assert all(len(colours) == 1 for colours in shown) and len({c[0] for c in shown}) == len(pictures) >= 2
        k = int(re.search(r"the shape in Image (\d)\?", _human(entry)).group(1))
        assert _options(entry)[_answer(entry)] == shown[k - 1][0]


def test_colour_change_answers_match_the_decoded_video(synth):
    out, train, bench = synth
    entries = _by(train + bench, "SynthColourChange")
    asked = Counter()
    for entry in entries:
        frames = load_video(out / (entry["video"] if "video" in entry else entry["image"][0]), num_frames=64)
        seen = [[c for c in COLOURS if _has_colour(np.asarray(f), c)] for f in frames]
        assert all(len(colours) == 1 for colours in seen)  # one shape, one colour per frame
        assert seen[0] != seen[-1]  # it changes
        when = "start" if "at the start of" in _human(entry) else "end"
        assert _options(entry)[_answer(entry)] == (seen[0] if when == "start" else seen[-1])[0]
        asked[when] += 1
    assert len(entries) >= 5 and set(asked) == {"start", "end"}


def test_scene_side_answers(synth):
    out, train, bench = synth
    sides = Counter()
    for entry, pictures in _still_pictures(out, _by(train + bench, "SynthSceneSide")):
        side = "left" if "at the left end" in _human(entry) else "right"
        view = pictures[0] if side == "left" else pictures[-1]  # the end of the scene only the end view shows whole
        colours = [c for c in COLOURS if _has_colour(view, c)]
        xs = {c: np.nonzero(np.abs(view.astype(int) - np.array(COLOURS[c])).sum(axis=-1) < 60)[1].mean() for c in colours}
        outermost = min(xs, key=xs.get) if side == "left" else max(xs, key=xs.get)
        assert _options(entry)[_answer(entry)] == outermost and len(pictures) >= 2
        facts = entry["metadata"]["facts"]
        assert all(any(o <= s[2] - s[4] and s[2] + s[4] < o + SIZE for o in facts["offsets"]) for s in facts["objects"])
        sides[side] += 1
    assert set(sides) == {"left", "right"}


def test_multi_choice_answers_are_listed_letters(synth):
    _, train, bench = synth
    letters = Counter()
    for entry in train + bench:
        if entry["metadata"]["question_type"] == "multi-choice":
            options = _options(entry)
            assert list(options) == list(LETTERS[: len(options)]) and len(options) >= 2
            assert _answer(entry) in options
            letters[_answer(entry)] += 1
        else:
            assert not _options(entry)
    assert len(letters) >= 3 and max(letters.values()) <= 0.6 * sum(letters.values())


def test_options_come_in_a_fixed_order(synth):
    """The letter follows from what is seen: images in order, the four directions, the six colours, counts."""
    _, train, bench = synth
    expected = {"SynthMotion": list(DIRECTIONS), "SynthDetail": list(COLOURS), "SynthScene3D": ["1", "2", "3", "4"],
                "SynthColourChange": list(COLOURS), "SynthSceneSide": list(COLOURS), "SynthImageColour": list(COLOURS)}
    for entry in train + bench:
        dataset = entry["metadata"]["dataset"]
        if dataset == "SynthWhichMore":
            assert list(_options(entry).values()) == [f"Image {i + 1}" for i in range(_human(entry).count("<image>"))]
        elif dataset in expected:
            assert list(_options(entry).values()) == expected[dataset]


def test_bench_is_held_out(synth):
    _, train, bench = synth
    assert not {e["id"] for e in train} & {e["sample_id"] for e in bench}
    assert not {_sample_key(e) for e in train} & {_sample_key(e) for e in bench}
    train_media = {name for e in train for name in _images(e)} | {e["video"] for e in train if "video" in e}
    assert not train_media & {name for e in bench for name in e["image"]}


def test_summary_and_sizes(tmp_path):
    summary = write_synthetic(tmp_path, 11, 3, bench_n=11, image_size=64)
    assert summary.train_counts == {name: 1 for name in DATASETS} == summary.bench_counts
    assert str(summary.train_json) in str(summary)
    train = json.loads(summary.train_json.read_text())
    detail = next(e for e in train if e["metadata"]["dataset"] == "SynthDetail")
    assert load_image(tmp_path / detail["image"]).size == (192, 128)
    with pytest.raises(ValueError):
        write_synthetic(tmp_path / "bad", -1, 0)
    with pytest.raises(ValueError):
        write_synthetic(tmp_path / "bad", 6, 0, image_size=16)


def test_two_hundred_samples_split_into_train_and_bench(tmp_path):
    summary = write_synthetic(tmp_path, 200, 11)
    assert sum(summary.train_counts.values()) == 200 and sum(summary.bench_counts.values()) == 40


def test_named_tasks_only(tmp_path):
    summary = write_synthetic(tmp_path, 5, 2, bench_n=2, image_size=64, tasks=["SynthDescribe", "SynthMotion"])
    assert summary.train_counts == {"SynthMotion": 3, "SynthDescribe": 2} and summary.bench_counts == {"SynthMotion": 1, "SynthDescribe": 1}
    with pytest.raises(ValueError, match="unknown synthetic task 'Nope'"):
        write_synthetic(tmp_path / "bad", 2, 0, tasks=["Nope"])


def test_cli_names_an_unknown_task_in_one_line(tmp_path, capsys):
    from llava_interleave.cli import main

    assert main(["data", "synth", "--out", str(tmp_path), "--n", "1", "--tasks", "SynthName,Nope"]) == 1
    assert capsys.readouterr().err.strip() == ("error: unknown synthetic task 'Nope'; choose from " + ", ".join(
        ["SynthSpotDiff", "SynthWhichMore", "SynthCount", "SynthMotion", "SynthScene3D", "SynthDetail", "SynthDescribe",
         "SynthName", "SynthImageColour", "SynthColourChange", "SynthSceneSide"]))
