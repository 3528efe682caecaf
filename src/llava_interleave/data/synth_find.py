"""The find tasks: one multi-choice question per scenario whose answer is where or when a colour is seen.

Why: a model small enough to train on a CPU in minutes learns counting and motion (SynthWhichMore,
SynthScene3D, SynthMotion) too slowly to show anything (measured: chance after 450 steps), while a colour
fills whole patches even at a 64-px tower. Each question here needs that one visual skill plus the
scenario's own structure: which image of several, when in a clip, where in a scene seen from several
views. An answer cannot be read off one image alone, so a model above chance on them uses the interleaved
input as the scenario means.
"""

from __future__ import annotations

import numpy as np

from .drawn import Drawn, multi_choice
from .shapes import (
    COLOURS,
    KINDS,
    Shape,
    draw_shapes,
    grid_cells,
    pick_colour,
    place,
    radius_range,
)

WHEN = ("start", "end")
THIRDS = ("left", "middle", "right")


def find_image(rng: np.random.Generator, size: int) -> Drawn:
    """2-4 images of 1-2 large shapes each; exactly one image holds a shape of the asked colour."""
    k, colour, cell = int(rng.integers(2, 5)), pick_colour(rng), size // 2
    target = int(rng.integers(k))
    images = []
    for i in range(k):
        count = int(rng.integers(1, 3))
        colours = [pick_colour(rng, [colour]) for _ in range(count)]
        if i == target:
            colours[int(rng.integers(count))] = colour
        specs = [(KINDS[int(rng.integers(3))], c) for c in colours]
        images.append(place(rng, specs, grid_cells(rng, size, size, cell, count), cell, radius_range(cell)))
    labels = [f"Image {i + 1}" for i in range(k)]
    article = "an" if colour[0] in "aeiou" else "a"
    question, shown, letter = multi_choice(f"Which image shows {article} {colour} shape?", labels[target], labels)
    pictures = tuple(draw_shapes((size, size), shapes) for shapes in images)
    return Drawn("SynthFindImage", "find_the_image", "multi-image", question, letter, pictures, shown,
                 {"colour": colour, "image": target, "shapes": images},
                 "Look through the images and pick the one that shows the given colour.")


def colour_change(rng: np.random.Generator, size: int) -> Drawn:
    """A clip of 8-12 frames in which one large shape changes colour once, between 30% and 70% of the way;
    asked for its colour at the start or at the end, so the order of the frames matters."""
    frames, kind = int(rng.integers(8, 13)), KINDS[int(rng.integers(3))]
    first = pick_colour(rng)
    then = pick_colour(rng, [first])
    switch = int(rng.integers(round(frames * 0.3), round(frames * 0.7) + 1))
    r = int(rng.integers(size // 6, size * 3 // 10 + 1))
    x, y = (int(v) for v in rng.integers(r + 2, size - r - 1, size=2))
    colours = [first if f < switch else then for f in range(frames)]
    pictures = tuple(draw_shapes((size, size), [Shape(kind, c, x, y, r)]) for c in colours)
    when = WHEN[int(rng.integers(2))]
    answer = first if when == "start" else then
    question, shown, letter = multi_choice(f"What colour is the {kind} at the {when} of the video?", answer,
                                           tuple(COLOURS))
    facts = {"kind": kind, "when": when, "frames": colours, "shape": Shape(kind, first, x, y, r)}
    return Drawn("SynthColourChange", "colour_change", "video", question, letter, pictures, shown, facts,
                 "Watch the video and tell the shape's colour at the asked moment.")


def scene_place(rng: np.random.Generator, size: int) -> Drawn:
    """A scene 7/4 views wide, panned by 2-4 overlapping views (as SynthScene3D); one object of the asked
    colour in its left, middle or right third, 1-3 others elsewhere. Which views show the object, and
    where in them, tell where it is in the scene."""
    cell, k, colour, width = size // 4, int(rng.integers(2, 5)), pick_colour(rng), size * 7 // 4
    cols, rows = width // cell, size // cell
    third = int(rng.integers(3))
    column = [int(rng.integers(0, 2)), cols // 2, int(rng.integers(cols - 2, cols))][third]
    target = column + cols * int(rng.integers(rows))
    others = [int(c) for c in rng.choice([c for c in range(cols * rows) if c != target], size=int(rng.integers(1, 4)),
                                         replace=False)]
    left, top = (width - cols * cell) // 2, (size - rows * cell) // 2
    centres = [(left + c % cols * cell + cell // 2, top + c // cols * cell + cell // 2) for c in (target, *others)]
    specs = [(KINDS[int(rng.integers(3))], colour)] + [(KINDS[int(rng.integers(3))], pick_colour(rng, [colour]))
                                                       for _ in others]
    cap = (2 * size - width - 1) // 2  # as in SynthScene3D: every object whole in some view
    low, high = radius_range(cell)
    objects = place(rng, specs, centres, cell, (min(low, cap), min(high, cap)))
    world = draw_shapes((width, size), objects)
    offsets = [int(o) for o in np.linspace(0, width - size, k).round()]
    pictures = tuple(world.crop((o, 0, o + size, size)) for o in offsets)
    views = [[Shape(s.kind, s.colour, s.x - o, s.y, s.r) for s in objects if o <= s.x - s.r and s.x + s.r < o + size]
             for o in offsets]
    question, shown, letter = multi_choice(
        f"The {k} images are views of one scene, taken from left to right. Where in the scene is the {colour} "
        "object?", THIRDS[third], THIRDS)
    facts = {"colour": colour, "third": THIRDS[third], "offsets": offsets, "objects": objects, "shapes": views}
    return Drawn("SynthScenePlace", "scene_place", "multi-view", question, letter, pictures, shown, facts,
                 "Combine the views and tell in which third of the scene the object of the given colour is.")
