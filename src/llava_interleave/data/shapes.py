"""Filled shapes on a flat background: the drawing and placement that the synthetic tasks share.

Shapes sit at the centres of distinct grid cells with a size and jitter that keep them inside their cell,
so they never overlap and no collision test is needed; every position is known, which is what lets each
task state its answer exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw

COLOURS: dict[str, tuple[int, int, int]] = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220),
                                           "yellow": (235, 200, 30), "purple": (140, 60, 180), "orange": (245, 130, 30)}
GREY = "grey"  # drawn, never asked about: the clutter around the small detail
PALETTE = {**COLOURS, GREY: (150, 150, 150)}
KINDS = ("circle", "square", "triangle")
BACKGROUND = (245, 245, 245)


class Shape(NamedTuple):
    """One filled shape: centre (x, y) and half-size r in pixels of the image it is drawn on; a tuple so
    that it goes into the JSON facts as the list `[kind, colour, x, y, r]`."""

    kind: str
    colour: str
    x: int
    y: int
    r: int

    @property
    def name(self) -> str:
        return f"{self.colour} {self.kind}"

    @property
    def a_name(self) -> str:
        """The name with its indefinite article: "a red circle", "an orange square"."""
        return ("an " if self.colour[0] in "aeiou" else "a ") + self.name


def draw_shapes(size: tuple[int, int], shapes: Sequence[Shape]) -> Image.Image:
    """An RGB picture of the shapes on a flat background, later shapes on top."""
    image = Image.new("RGB", size, BACKGROUND)
    draw = ImageDraw.Draw(image)
    for s in shapes:
        box, fill = (s.x - s.r, s.y - s.r, s.x + s.r, s.y + s.r), PALETTE[s.colour]
        if s.kind == "circle":
            draw.ellipse(box, fill=fill)
        elif s.kind == "square":
            draw.rectangle(box, fill=fill)
        else:  # an upward triangle; its centre (x, y) lies inside it
            draw.polygon([(s.x, s.y - s.r), (s.x - s.r, s.y + s.r), (s.x + s.r, s.y + s.r)], fill=fill)
    return image


def grid_cells(rng: np.random.Generator, width: int, height: int, cell: int, count: int) -> list[tuple[int, int]]:
    """Centres of `count` distinct grid cells: shapes that stay inside their cell never overlap, so no
    collision test is needed."""
    cols, rows = width // cell, height // cell
    if count > cols * rows:
        raise ValueError(f"{count} shapes do not fit a {cols}x{rows} grid")
    left, top = (width - cols * cell) // 2, (height - rows * cell) // 2
    picks = rng.choice(cols * rows, size=count, replace=False)
    return [(left + int(p % cols) * cell + cell // 2, top + int(p // cols) * cell + cell // 2) for p in picks]


def place(rng: np.random.Generator, specs: Sequence[tuple[str, str]], centres: Sequence[tuple[int, int]],
           cell: int, radius: tuple[int, int]) -> list[Shape]:
    """Shapes of the given (kind, colour) at the cell centres, each with a random size and a jitter that
    keeps it inside its cell."""
    shapes = []
    for (kind, colour), (cx, cy) in zip(specs, centres):
        r = int(rng.integers(radius[0], radius[1] + 1))
        room = max(cell // 2 - r - 1, 0)
        dx, dy = (int(v) for v in rng.integers(-room, room + 1, size=2))
        shapes.append(Shape(kind, colour, cx + dx, cy + dy, r))
    return shapes


def large_shape(rng: np.random.Generator, size: int, kind: str, colour: str) -> Shape:
    """One shape near the middle of a `size`-px square image, 1/3 to 3/5 of it wide: its colour fills whole
    patches of a small tower (the simplest thing there is to see)."""
    x, y = (int(rng.integers(size * 3 // 8, size * 5 // 8 + 1)) for _ in range(2))
    return Shape(kind, colour, x, y, int(rng.integers(size // 6, size * 3 // 10 + 1)))


def pan_views(objects: Sequence[Shape], width: int, size: int, k: int) -> tuple[list[int], tuple[Image.Image, ...], list[list[Shape]]]:
    """A scene `width` px wide and `size` high seen by `k` square views panned evenly from its left edge to
    its right: the views' left offsets, their pictures, and the objects whole in each (in view pixels)."""
    world = draw_shapes((width, size), objects)
    offsets = [int(o) for o in np.linspace(0, width - size, k).round()]
    pictures = tuple(world.crop((o, 0, o + size, size)) for o in offsets)
    views = [[Shape(s.kind, s.colour, s.x - o, s.y, s.r) for s in objects if o <= s.x - s.r and s.x + s.r < o + size]
             for o in offsets]
    return offsets, pictures, views


def radius_range(cell: int) -> tuple[int, int]:
    return max(2, round(cell * 0.28)), max(3, round(cell * 0.42))


def distinct_specs(rng: np.random.Generator, count: int) -> list[tuple[str, str]]:
    """`count` different (kind, colour) pairs, so "the red circle" names one shape."""
    pairs = [(k, c) for k in KINDS for c in COLOURS]
    return [pairs[i] for i in rng.choice(len(pairs), size=count, replace=False)]


def pick_colour(rng: np.random.Generator, exclude: Sequence[str] = ()) -> str:
    options = [c for c in COLOURS if c not in exclude]
    return options[int(rng.integers(len(options)))]
