"""The ``shapes`` data set: scenes of one or two coloured shapes on a 3x3 grid, drawn with Pillow,
their captions, and a checker that reads the attributes back from pixels.

A scene is a list of :class:`Shape` (kind, colour, cell, size); :func:`caption` states every
attribute ("a large red circle at the top left and a small blue square in the center") and
:func:`parse` reads it back, so a prompt can be checked against the image drawn for it. The checker
finds each named colour's pixels, and judges position from their centroid, size from their extent
and the kind from how much of their bounding box they fill (square ~1, circle ~0.8, triangle ~0.5).
It scores 100% on rendered images (a test holds it to that), so it measures only the model.

Some (colour, kind) combinations are held out of training entirely (:data:`HELD_OUT`): a scene that
contains one goes to the ``heldout`` split, which measures whether the model composes attributes it
saw only apart.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

COLOURS = {"red": (220, 40, 40), "green": (40, 190, 70), "blue": (50, 90, 230), "yellow": (235, 205, 40)}
KINDS = ("circle", "square", "triangle")
CELLS = ("top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right")
PLACES = {"top left": "at the top left", "top": "at the top", "top right": "at the top right", "left": "on the left",
          "center": "in the center", "right": "on the right", "bottom left": "at the bottom left",
          "bottom": "at the bottom", "bottom right": "at the bottom right"}
SIZES = {"small": 0.65, "large": 0.95}
HELD_OUT = {("blue", "triangle"), ("green", "circle"), ("yellow", "square")}
BACKGROUND = (0, 0, 0)


@dataclass(frozen=True)
class Shape:
    kind: str
    colour: str
    cell: str
    size: str = "large"


def sized(side: int) -> bool:
    """Sizes are drawn (and stated) only where a small shape is still recognisable: 32 px and up."""
    return side >= 32


def caption(scene: list[Shape], side: int) -> str:
    parts = [f"a {s.size + ' ' if sized(side) else ''}{s.colour} {s.kind} {PLACES[s.cell]}" for s in scene]
    return " and ".join(parts)


_PART = re.compile(r"an? (?:(small|large) )?(" + "|".join(COLOURS) + r") (" + "|".join(KINDS) + r") ("
                   + "|".join(sorted(map(re.escape, PLACES.values()), key=len, reverse=True)) + r")")


def parse(text: str) -> list[Shape] | None:
    """The scene a caption describes, or None when it is not a shapes caption."""
    cell_of = {phrase: cell for cell, phrase in PLACES.items()}
    found = [Shape(kind, colour, cell_of[place], size or "large") for size, colour, kind, place in _PART.findall(text.lower())]
    return found or None


def render(scene: list[Shape], side: int) -> np.ndarray:
    """Draw ``scene`` on a black (side, side) canvas -> (side, side, 3) uint8 (no anti-aliasing)."""
    image = Image.new("RGB", (side, side), BACKGROUND)
    draw = ImageDraw.Draw(image)
    cell = side / 3
    for shape in scene:
        row, col = divmod(CELLS.index(shape.cell), 3)
        extent = max(3, round(cell * (SIZES[shape.size] if sized(side) else SIZES["large"])))
        left = round(col * cell + (cell - extent) / 2)
        top = round(row * cell + (cell - extent) / 2)
        box = (left, top, left + extent - 1, top + extent - 1)
        colour = COLOURS[shape.colour]
        if shape.kind == "square":
            draw.rectangle(box, fill=colour)
        elif shape.kind == "circle":
            draw.ellipse(box, fill=colour)
        else:
            draw.polygon([(left + (extent - 1) / 2, top), (left, top + extent - 1), (left + extent - 1, top + extent - 1)],
                         fill=colour)
    return np.asarray(image, dtype=np.uint8)


def all_scenes(side: int) -> list[list[Shape]]:
    """Every one-shape scene and every two-shape scene (different cells and colours), in a fixed order."""
    sizes = list(SIZES) if sized(side) else ["large"]
    singles = [Shape(k, c, cell, s) for k in KINDS for c in COLOURS for cell in CELLS for s in sizes]
    pairs = [[a, b] for a, b in itertools.combinations(singles, 2) if a.cell != b.cell and a.colour != b.colour]
    return [[s] for s in singles] + pairs


def held_out(scene: list[Shape]) -> bool:
    return any((s.colour, s.kind) in HELD_OUT for s in scene)


def _colour_mask(image: np.ndarray, colour: str) -> np.ndarray:
    """Pixels closer to ``colour`` than to any other colour or the background."""
    references = np.array([BACKGROUND, *COLOURS.values()], dtype=np.int32)
    distances = ((image.astype(np.int32)[:, :, None, :] - references[None, None]) ** 2).sum(-1)
    return distances.argmin(-1) == 1 + list(COLOURS).index(colour)


def check(image: np.ndarray, scene: list[Shape]) -> dict[str, bool]:
    """Which attributes of ``scene`` the image shows: colour, position, kind and size of every shape, and all."""
    side = image.shape[0]
    cell = side / 3
    result = {"colour": True, "position": True, "kind": True, "size": True}
    for shape in scene:
        mask = _colour_mask(image, shape.colour)
        if mask.sum() < 3:
            result = {k: False for k in result}
            break
        rows, cols = np.nonzero(mask)
        row, col = min(int(rows.mean() / cell), 2), min(int(cols.mean() / cell), 2)
        result["position"] &= CELLS[row * 3 + col] == shape.cell
        height, width = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        fill = mask.sum() / (height * width)
        kind = "square" if fill > 0.92 else "circle" if fill > 0.645 else "triangle"
        result["kind"] &= kind == shape.kind
        if sized(side):
            size = "large" if max(height, width) > cell * (SIZES["small"] + SIZES["large"]) / 2 else "small"
            result["size"] &= size == shape.size
    result["all"] = all(result.values())
    return result
