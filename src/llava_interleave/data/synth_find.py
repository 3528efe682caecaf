"""The colour tasks: one multi-choice question per scenario, "what colour is ...", with the six colours as
options in a fixed order.

Why: a model small enough to train on a CPU in minutes learns counting and motion (SynthWhichMore,
SynthScene3D, SynthMotion) too slowly to show anything (measured: chance after 450 steps), and it did not
learn to answer "which image shows the purple shape" either; a colour fills whole patches even at a 64-px
tower, and one letter-per-colour mapping then serves all four scenarios (with SynthDetail, the fourth).
What differs is where to look, which is the scenario's own structure: the named image of several, the
first or last frames of a clip, the first or last view of a scene.
"""

from __future__ import annotations

import numpy as np

from .drawn import Drawn, multi_choice
from .shapes import COLOURS, KINDS, Shape, draw_shapes, large_shape, pan_views, pick_colour

WHEN = ("start", "end")
SIDES = ("left", "right")


def image_colour(rng: np.random.Generator, size: int) -> Drawn:
    """2-4 images of one large shape each, all colours different; the colour of the shape in image k."""
    k = int(rng.integers(2, 5))
    colours = [str(c) for c in rng.choice(list(COLOURS), size=k, replace=False)]
    images = [[large_shape(rng, size, KINDS[int(rng.integers(3))], colour)] for colour in colours]
    target = int(rng.integers(k))
    question, shown, letter = multi_choice(f"What colour is the shape in Image {target + 1}?", colours[target],
                                           tuple(COLOURS))
    pictures = tuple(draw_shapes((size, size), shapes) for shapes in images)
    return Drawn(dataset="SynthImageColour", task="image_colour", scenario="multi-image", question=question,
                 answer=letter, pictures=pictures, choices=shown, facts={"image": target, "shapes": images},
                 instruction="Find the named image among several and tell its shape's colour.")


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
    return Drawn(dataset="SynthColourChange", task="colour_change", scenario="video", question=question, answer=letter,
                 pictures=pictures, choices=shown, facts=facts,
                 instruction="Watch the video and tell the shape's colour at the asked moment.")


def scene_side(rng: np.random.Generator, size: int) -> Drawn:
    """A scene 7/4 views wide, panned by 2-4 overlapping views (as SynthScene3D), with one large object at
    each end (and, sometimes, one between when three or more views show it whole), all colours different;
    the colour of the object at the asked end, which only the first (left) or the last (right) view shows."""
    k, width, r = int(rng.integers(2, 5)), size * 7 // 4, int(rng.integers(size // 8, size // 6 + 1))
    xs = [int(rng.integers(r + 2, size // 3)), int(rng.integers(width - size // 3, width - r - 2))]
    if k > 2 and rng.integers(2):  # two views share no whole middle; three or more show it
        xs.append(width // 2)
    colours = [str(c) for c in rng.choice(list(COLOURS), size=len(xs), replace=False)]
    objects = [Shape(KINDS[int(rng.integers(3))], colour, x, int(rng.integers(r + 2, size - r - 2)), r)
               for colour, x in zip(colours, xs)]
    offsets, pictures, views = pan_views(objects, width, size, k)
    side = SIDES[int(rng.integers(2))]
    answer = colours[SIDES.index(side)]
    question, shown, letter = multi_choice(
        f"The {k} images are views of one scene, taken from left to right. What colour is the object at the "
        f"{side} end of the scene?", answer, tuple(COLOURS))
    facts = {"side": side, "offsets": offsets, "objects": objects, "shapes": views}
    return Drawn(dataset="SynthSceneSide", task="scene_side", scenario="multi-view", question=question, answer=letter,
                 pictures=pictures, choices=shown, facts=facts, instruction=(
                     "Combine the views in order and tell the colour of the object at the asked end of the scene."))
