"""Procedurally drawn M4-style training data and a held-out bench whose answers the generator knows.

Why: the whole pipeline (loading, training, evaluation, scoring) should run offline and be judged by numbers
that mean something. Shapes drawn from a seed have exactly known answers: a model that learns shows a rising
bench score, a broken pipeline a flat one.

Eleven tasks, one `dataset` name each, cover the four scenarios and both question types:
  SynthSpotDiff   multi-image  open-ended    what changed between two images
  SynthWhichMore  multi-image  multi-choice  which of 2-4 images holds the most shapes of a colour
  SynthCount      multi-image  open-ended    how many of a shape across 2-4 images
  SynthMotion     video        multi-choice  in which direction the named shape moves
  SynthScene3D    multi-view   multi-choice  how many objects of a colour in one scene seen in 2-4 views (1-4)
  SynthDetail     multi-patch  multi-choice  the colour of the one small triangle in a large image
  SynthDescribe   multi-image  open-ended    every shape of two images: colour, kind and place (caption-like)
  SynthName       multi-image  open-ended    the one large shape of each of two images (the simplest to see)
  SynthImageColour   multi-image  multi-choice  the colour of the shape in image k of 2-4   (the colour tasks
  SynthColourChange  video        multi-choice  a shape's colour at the start or the end    of synth_find.py)
  SynthSceneSide     multi-view   multi-choice  the colour of the object at one end of a scene

Every entry keeps what was drawn under `metadata["facts"]` (shapes as `[kind, colour, x, y, r]`: centre and
half-size in pixels of that image) to re-derive answers from. The same seed gives byte-identical JSON.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .drawn import Drawn, multi_choice
from .media import write_mp4
from .shapes import (
    COLOURS,
    GREY,
    KINDS,
    Shape,
    distinct_specs,
    draw_shapes,
    grid_cells,
    large_shape,
    pan_views,
    pick_colour,
    place,
    radius_range,
)
from .synth_find import colour_change, image_colour, scene_side

DIRECTIONS: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
BENCH_SEED_OFFSET = 1_000_003  # the bench's own seed stream, far from any train seed a person would pick
NUMBER_SUFFIX = "Answer with a single number."
SCENE_COUNTS = (1, 2, 3, 4)  # the options of the multi-view count question


@dataclass(frozen=True, kw_only=True)
class SynthSummary:
    """What `write_synthetic` wrote: the two JSON files and the samples per dataset in each."""

    out_dir: Path
    train_json: Path
    bench_json: Path
    train_counts: dict[str, int]
    bench_counts: dict[str, int]
    seed: int

    def __str__(self) -> str:
        rows = [f"  {name}: train {self.train_counts.get(name, 0)}, bench {self.bench_counts.get(name, 0)}"
                for name in sorted(set(self.train_counts) | set(self.bench_counts))]
        return "\n".join([f"wrote {self.train_json} ({sum(self.train_counts.values())} samples) and "
                          f"{self.bench_json} ({sum(self.bench_counts.values())} samples)", *rows])


def spot_difference(rng: np.random.Generator, size: int) -> Drawn:
    """Two images, the second with one shape added, removed or recoloured."""
    cell, count = size // 4, int(rng.integers(3, 7))
    specs = distinct_specs(rng, count + 1)
    placed = place(rng, specs, grid_cells(rng, size, size, cell, count + 1), cell, radius_range(cell))
    first, extra = placed[:count], placed[count]
    change, index = ("added", "removed", "recoloured")[int(rng.integers(3))], int(rng.integers(count))
    target = first[index]
    taken = [s.colour for s in first if s.kind == target.kind]
    if change == "recoloured" and len(taken) == len(COLOURS):  # no free colour for this kind
        change = "removed"
    if change == "added":
        second, answer, target = [*first, extra], f"{extra.a_name.capitalize()} was added in the second image.", extra
    elif change == "removed":
        second, answer = first[:index] + first[index + 1:], f"The {target.name} was removed in the second image."
    else:
        new = Shape(target.kind, pick_colour(rng, taken), target.x, target.y, target.r)
        second = [*first[:index], new, *first[index + 1:]]
        answer, extra = f"The {target.name} turned {new.colour} in the second image.", new
    facts = {"change": change, "kind": target.kind, "colour": target.colour,
             "new_colour": extra.colour if change == "recoloured" else None, "shapes": [first, second]}
    question = "What is the difference between the two images? Answer in one sentence."
    pictures = (draw_shapes((size, size), first), draw_shapes((size, size), second))
    return Drawn(dataset="SynthSpotDiff", task="spot_the_difference", scenario="multi-image", question=question,
                 answer=answer, pictures=pictures, choices=None, facts=facts,
                 instruction="Find the one change between the first and the second image.")


def _images_with(rng: np.random.Generator, size: int, counts: Sequence[int], target: Callable[[], tuple[str, str]],
                 other: Callable[[], tuple[str, str]]) -> list[list[Shape]]:
    """One shape list per image: `counts[i]` shapes of (kind, colour) drawn by `target`, plus 0-3 by `other`."""
    cell = size // 4
    images = []
    for count in counts:
        specs = [target() for _ in range(count)] + [other() for _ in range(int(rng.integers(0, 4)))]
        images.append(place(rng, specs, grid_cells(rng, size, size, cell, len(specs)), cell, radius_range(cell)))
    return images


def which_has_more(rng: np.random.Generator, size: int) -> Drawn:
    """2-4 images with different numbers of shapes of one colour; which holds the most (multi-choice).
    Colour, not kind, is asked: a shape is a few pixels wide at a small tower's resolution, and its colour
    survives that where its outline does not."""
    k, colour = int(rng.integers(2, 5)), pick_colour(rng)
    counts = [int(c) for c in rng.choice(6, size=k, replace=False)]
    images = _images_with(rng, size, counts, lambda: (KINDS[int(rng.integers(3))], colour),
                          lambda: (KINDS[int(rng.integers(3))], pick_colour(rng, [colour])))
    best, labels = counts.index(max(counts)), [f"Image {i + 1}" for i in range(k)]
    question, shown, letter = multi_choice(f"Which image has the most {colour} shapes?", labels[best], labels)
    facts = {"colour": colour, "counts": counts, "shapes": images}
    pictures = tuple(draw_shapes((size, size), shapes) for shapes in images)
    return Drawn(dataset="SynthWhichMore", task="which_has_more", scenario="multi-image", question=question,
                 answer=letter, pictures=pictures, choices=shown, facts=facts,
                 instruction="Compare the images and pick the one with the most shapes of the given colour.")


def count_across(rng: np.random.Generator, size: int) -> Drawn:
    """A sequence of 2-4 images; how many of one kind they hold together (open-ended number)."""
    k, kind = int(rng.integers(2, 5)), KINDS[int(rng.integers(3))]
    counts = [int(c) for c in rng.integers(0, 4, size=k)]
    others = [k for k in KINDS if k != kind]
    images = _images_with(rng, size, counts, lambda: (kind, pick_colour(rng)),
                          lambda: (others[int(rng.integers(2))], pick_colour(rng)))
    question = f"How many {kind}s are there in all {k} images together? {NUMBER_SUFFIX}"
    facts = {"kind": kind, "counts": counts, "shapes": images}
    pictures = tuple(draw_shapes((size, size), shapes) for shapes in images)
    return Drawn(dataset="SynthCount", task="count_across_images", scenario="multi-image", question=question,
                 answer=str(sum(counts)), pictures=pictures, choices=None, facts=facts,
                 instruction="Count the shapes of the given kind over the whole image sequence.")


def _motion_path(rng: np.random.Generator, size: int, r: int, direction: str, frames: int) -> list[tuple[int, int]]:
    """Centres of the moving shape, one per frame, travelling 35-50% of the frame in a straight line."""
    (ux, uy), margin = DIRECTIONS[direction], r + 3
    distance = int(rng.integers(int(size * 0.35), int(size * 0.5) + 1))
    start = int(rng.integers(margin, size - margin - distance + 1)) + (distance if ux + uy < 0 else 0)
    across = int(rng.integers(margin, size - margin + 1))
    steps = [start + (ux + uy) * round(distance * f / (frames - 1)) for f in range(frames)]
    return [(s, across) if ux else (across, s) for s in steps]


def motion(rng: np.random.Generator, size: int) -> Drawn:
    """A short clip in which one shape moves left, right, up or down past 1-2 still ones (multi-choice)."""
    cell, frames = size // 4, int(rng.integers(8, 13))
    direction = tuple(DIRECTIONS)[int(rng.integers(4))]
    n_still, r = int(rng.integers(1, 3)), radius_range(cell)[1]
    colours = [str(c) for c in rng.choice(list(COLOURS), size=n_still + 1, replace=False)]
    kinds = [KINDS[int(i)] for i in rng.integers(3, size=n_still + 1)]
    path = _motion_path(rng, size, r, direction, frames)
    axis = 1 if DIRECTIONS[direction][0] else 0  # the coordinate that stays fixed along the path
    free = [c for c in grid_cells(rng, size, size, cell, (size // cell) ** 2) if abs(c[axis] - path[0][axis]) > cell]
    still = place(rng, list(zip(kinds[1:], colours[1:])), free[:n_still], cell, radius_range(cell))
    mover = Shape(kinds[0], colours[0], path[0][0], path[0][1], r)
    pictures = tuple(draw_shapes((size, size), [*still, Shape(mover.kind, mover.colour, x, y, r)]) for x, y in path)
    question, shown, letter = multi_choice(f"In which direction does the {mover.name} move?", direction, tuple(DIRECTIONS))
    facts = {"direction": direction, "mover": mover, "path": [list(p) for p in path], "still": still}
    return Drawn(dataset="SynthMotion", task="motion_direction", scenario="video", question=question, answer=letter,
                 pictures=pictures, choices=shown, facts=facts,
                 instruction="Watch the video and tell which shape moves and where to.")


def multi_view(rng: np.random.Generator, size: int) -> Drawn:
    """One scene wider than a view, seen by 2-4 views panned across it; neighbouring views overlap by at
    least a quarter view, so each object is whole in some view and several show the same object."""
    cell, k, colour, width = size // 4, int(rng.integers(2, 5)), pick_colour(rng), size * 7 // 4
    count = int(rng.choice(SCENE_COUNTS))
    specs = [(KINDS[int(rng.integers(3))], colour) for _ in range(count)]
    specs += [(KINDS[int(rng.integers(3))], pick_colour(rng, [colour])) for _ in range(int(rng.integers(1, 5)))]
    low, high = radius_range(cell)
    cap = (2 * size - width - 1) // 2  # an object 2r+1 wide fits in the overlap of neighbouring views
    objects = place(rng, specs, grid_cells(rng, width, size, cell, len(specs)), cell, (min(low, cap), min(high, cap)))
    offsets, pictures, views = pan_views(objects, width, size, k)
    question, shown, letter = multi_choice(
        f"The {k} images are views of one scene from different positions; an object can appear in several "
        f"views. How many {colour} objects are in the scene?", str(count), tuple(str(c) for c in SCENE_COUNTS))
    facts = {"colour": colour, "count": count, "offsets": offsets, "objects": objects, "shapes": views}
    return Drawn(dataset="SynthScene3D", task="multi_view_count", scenario="multi-view", question=question,
                 answer=letter, pictures=pictures, choices=shown, facts=facts,
                 instruction="Combine the views of the scene and count the objects of the given colour once each.")


def small_detail(rng: np.random.Generator, size: int) -> Drawn:
    """One large image (3x by 2x the base size) cluttered with grey circles and squares and exactly one
    coloured triangle, larger than the clutter. Squashed to a small tower's size (the bundled model's 64 px)
    the triangle is a few pixels wide; cut into patches (anyres) it is twice that, which is what multi-patch
    input is for."""
    cell, width, height = max(size // 3, 8), size * 3, size * 2
    count, colour = int(rng.integers(18, 31)), pick_colour(rng)
    specs = [(("circle", "square")[int(rng.integers(2))], GREY) for _ in range(count)]
    centres = grid_cells(rng, width, height, cell, count + 1)
    big = (max(3, round(cell * 0.4)), max(4, round(cell * 0.48)))  # larger than any of the clutter
    shapes = place(rng, [("triangle", colour)], centres[:1], cell, big)
    shapes += place(rng, specs, centres[1:], cell, (max(2, cell // 5), max(3, cell // 3)))
    question, shown, letter = multi_choice("What colour is the small triangle?", colour, tuple(COLOURS))
    facts = {"colour": colour, "triangle": shapes[0], "shapes": [shapes]}
    return Drawn(dataset="SynthDetail", task="small_detail", scenario="multi-patch", question=question, answer=letter,
                 pictures=(draw_shapes((width, height), shapes),), choices=shown, facts=facts,
                 instruction="Find the small triangle and name its colour.")


ROWS, COLUMNS = ("top", "middle", "bottom"), ("left", "centre", "right")


def _listing(parts: Sequence[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _where(shape: Shape, cell: int) -> str:
    """The shape's cell of a 3x3 grid in words."""
    column, row = shape.x // cell, shape.y // cell
    return "in the centre" if (column, row) == (1, 1) else f"at the {ROWS[row]} {COLUMNS[column]}"


def describe(rng: np.random.Generator, size: int) -> Drawn:
    """Two images of 1-3 large shapes on a 3x3 grid, each described: colour, kind and place (open-ended).

    Why: like the caption data of LLaVA's first stage, a sentence naming every shape supervises what the
    tower must see (colours, kinds, places) far more densely than a letter does, so a model trained from
    scratch learns to see before the other tasks ask it to reason."""
    cell = size // 3
    images = [place(rng, distinct_specs(rng, count), grid_cells(rng, size, size, cell, count), cell, radius_range(cell))
              for count in (int(c) for c in rng.integers(1, 4, size=2))]
    sentences = []
    for i, shapes in enumerate(images):
        ordered = sorted(shapes, key=lambda s: (s.y // cell, s.x // cell))
        sentences.append(f"Image {i + 1}: " + _listing([f"{s.a_name} {_where(s, cell)}" for s in ordered]) + ".")
    question = "Describe each image: the colour, kind and place of every shape."
    pictures = tuple(draw_shapes((size, size), shapes) for shapes in images)
    return Drawn(dataset="SynthDescribe", task="describe_images", scenario="multi-image", question=question,
                 answer=" ".join(sentences), pictures=pictures, choices=None, facts={"cell": cell, "shapes": images},
                 instruction="Name every shape's colour, kind and place, image by image.")


def name_shapes(rng: np.random.Generator, size: int) -> Drawn:
    """Two images of one large shape each, named (open-ended): the simplest thing to see, for the first
    steps of a model that has never seen anything (its colour fills whole patches of a small tower)."""
    shapes = [large_shape(rng, size, kind, colour) for kind, colour in distinct_specs(rng, 2)]
    answer = " ".join(f"Image {i + 1}: {s.a_name}." for i, s in enumerate(shapes))
    pictures = tuple(draw_shapes((size, size), [s]) for s in shapes)
    return Drawn(dataset="SynthName", task="name_shapes", scenario="multi-image",
                 question="What is the shape in each image?", answer=answer, pictures=pictures, choices=None,
                 facts={"shapes": [[s] for s in shapes]},
                 instruction="Name the colour and kind of the shape in each image.")


Task = Callable[[np.random.Generator, int], Drawn]
TASKS: dict[str, Task] = {"SynthSpotDiff": spot_difference, "SynthWhichMore": which_has_more, "SynthCount": count_across,
                          "SynthMotion": motion, "SynthScene3D": multi_view, "SynthDetail": small_detail,
                          "SynthDescribe": describe, "SynthName": name_shapes, "SynthImageColour": image_colour,
                          "SynthColourChange": colour_change, "SynthSceneSide": scene_side}


def pick_tasks(names: Sequence[str] | None) -> tuple[Task, ...]:
    """The task functions of the named datasets (all when none are named), in the standard order."""
    unknown = sorted(set(names or ()) - set(TASKS))
    if unknown:
        raise ValueError(f"unknown synthetic task {unknown[0]!r}; choose from {', '.join(TASKS)}")
    return tuple(task for name, task in TASKS.items() if not names or name in names)


def human_text(drawn: Drawn) -> str:
    """The user turn: one `<image>` per picture (one for a whole video), labelled, then the question."""
    if drawn.scenario in ("video", "multi-patch"):
        return f"<image>\n{drawn.question}"
    label = "View" if drawn.scenario == "multi-view" else "Image"
    slots = "".join(f"{label} {i + 1}: <image>\n" for i in range(len(drawn.pictures)))
    return slots + drawn.question


def fingerprint(drawn: Drawn) -> str:
    """What makes two samples the same question: task, text and drawn content (file names aside)."""
    return json.dumps([drawn.dataset, drawn.question, drawn.facts], sort_keys=True)


def _draw_split(rng: np.random.Generator, count: int, size: int, avoid: set[str], tasks: Sequence[Task]) -> list[Drawn]:
    """`count` samples, tasks taken in turn so every task is equally common; a sample that repeats one in
    `avoid` (the train split, when drawing the bench) is drawn again."""
    drawn = []
    for i in range(count):
        sample = tasks[i % len(tasks)](rng, size)
        while fingerprint(sample) in avoid:
            sample = tasks[i % len(tasks)](rng, size)
        drawn.append(sample)
    return drawn


def _save_pictures(out_dir: Path, stem: str, pictures: Sequence[Image.Image]) -> list[str]:
    """PNG files `{stem}_{k}.png`, returned as paths relative to `out_dir`."""
    (out_dir / stem).parent.mkdir(parents=True, exist_ok=True)
    names = [f"{stem}_{k}.png" for k in range(len(pictures))]
    for name, picture in zip(names, pictures):
        picture.save(out_dir / name, compress_level=1)
    return names


def _metadata(drawn: Drawn) -> dict[str, Any]:
    return {"dataset": drawn.dataset, "task": drawn.task, "scenario": drawn.scenario,
            "question_type": drawn.question_type, "facts": drawn.facts}


def train_entry(drawn: Drawn, out_dir: Path, sample_id: str) -> dict[str, Any]:
    """An M4-Instruct entry; a video is an mp4 under `videos/`, anything else PNGs under `images/`."""
    entry: dict[str, Any] = {"id": sample_id}
    if drawn.scenario == "video":
        entry["video"] = f"videos/train/{sample_id}.mp4"
        write_mp4(out_dir / entry["video"], drawn.pictures)
    else:
        names = _save_pictures(out_dir, f"images/train/{sample_id}", drawn.pictures)
        entry["image"] = names[0] if len(names) == 1 else names
    entry["conversations"] = [{"from": "human", "value": human_text(drawn)}, {"from": "gpt", "value": drawn.answer}]
    entry["metadata"] = _metadata(drawn)
    return entry


def bench_entry(drawn: Drawn, out_dir: Path, sample_id: str, num_sample: int) -> dict[str, Any]:
    """A LLaVA-Interleave Bench entry; a video becomes one frame folder (one `<image>`, one path)."""
    if drawn.scenario == "video":
        images = [f"videos/bench/{sample_id}"]
        _save_pictures(out_dir, f"{images[0]}/frame", drawn.pictures)
    else:
        images = _save_pictures(out_dir, f"images/bench/{sample_id}", drawn.pictures)
    metadata = {**_metadata(drawn), "split": "in_domain", "num_sample": num_sample, "task_instruction": drawn.instruction}
    return {"sample_id": sample_id,
            "conversations": [{"from": "human", "value": human_text(drawn)}, {"from": "gpt", "value": drawn.answer}],
            "image": images, "choice_list": list(drawn.choices) if drawn.choices is not None else None,
            "metadata": metadata}


def write_synthetic(out_dir: Path, n: int, seed: int, bench_n: int | None = None, image_size: int = 96,
                    tasks: Sequence[str] | None = None) -> SynthSummary:
    """Write `n` training samples (`train.json`) and `bench_n` held-out bench samples (`bench.json`,
    default `max(n // 5, 8)`) with their media under `out_dir`. The bench has its own seed stream
    (`seed + 1_000_003`) and never repeats a training question. Tasks (all, or the named datasets) take
    turns, so each appears once `n >=` their number."""
    chosen = pick_tasks(tasks)
    if n < 0 or (bench_n or 0) < 0 or image_size < 48:
        raise ValueError(f"need n >= 0, bench_n >= 0, image_size >= 48; got {n}, {bench_n}, {image_size}")
    bench_n = max(n // 5, 8) if bench_n is None else bench_n
    (out_dir := Path(out_dir)).mkdir(parents=True, exist_ok=True)
    train = _draw_split(np.random.default_rng(seed), n, image_size, set(), chosen)
    bench = _draw_split(np.random.default_rng(seed + BENCH_SEED_OFFSET), bench_n, image_size,
                        {fingerprint(d) for d in train}, chosen)
    train_entries = [train_entry(d, out_dir, f"synth-s{seed}-train-{i:06d}") for i, d in enumerate(train)]
    per_dataset = Counter(d.dataset for d in bench)
    bench_entries = [bench_entry(d, out_dir, f"synth-s{seed}-bench-{i:06d}", per_dataset[d.dataset])
                     for i, d in enumerate(bench)]
    for path, entries in ((out_dir / "train.json", train_entries), (out_dir / "bench.json", bench_entries)):
        path.write_text(json.dumps(entries, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return SynthSummary(out_dir=out_dir, train_json=out_dir / "train.json", bench_json=out_dir / "bench.json",
                        train_counts=dict(sorted(Counter(d.dataset for d in train).items())),
                        bench_counts=dict(sorted(per_dataset.items())), seed=seed)
