"""Synthetic MME-style "shapes" task: coloured shapes on a 4x4 grid, yes/no question pairs.

Every image belongs to one category (existence, count, color, position) and carries exactly
two questions, one whose answer is Yes and one whose answer is No (MME's pair format), so a
model that answers at random scores about 300 of 800 and a constant answer scores 200.

Scenes are deterministic functions of (seed, index). Shapes sit inside 16x16 grid cells with a
small jitter, so each 16-pixel patch of a vision tower sees at most one shape.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field

from PIL import Image, ImageDraw

IMAGE_SIZE = 64
GRID = 4
CELL = IMAGE_SIZE // GRID

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "green": (40, 165, 60),
    "blue": (40, 80, 215),
    "yellow": (225, 195, 35),
}
SHAPES = ("circle", "square", "triangle")
CATEGORIES = ("existence", "count", "color", "position")
NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}
SUFFIX = " Please answer yes or no."


@dataclass(frozen=True)
class Item:
    shape: str
    color: str
    row: int
    col: int


@dataclass
class Scene:
    """One image's content and its MME question pair."""

    category: str
    items: list[Item]
    jitter: list[tuple[int, int, int]]  # (dx, dy, size) per item
    background: tuple[int, int, int]
    questions: list[tuple[str, str]] = field(default_factory=list)  # (question, "Yes"/"No")

    def render(self) -> Image.Image:
        img = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), self.background)
        draw = ImageDraw.Draw(img)
        for item, (dx, dy, size) in zip(self.items, self.jitter):
            cx = item.col * CELL + CELL // 2 + dx
            cy = item.row * CELL + CELL // 2 + dy
            half = size // 2
            box = (cx - half, cy - half, cx + half, cy + half)
            fill = COLORS[item.color]
            if item.shape == "circle":
                draw.ellipse(box, fill=fill)
            elif item.shape == "square":
                draw.rectangle(box, fill=fill)
            else:
                draw.polygon([(cx, cy - half), (cx - half, cy + half), (cx + half, cy + half)], fill=fill)
        return img

    def caption(self) -> str:
        parts = []
        for it in sorted(self.items, key=lambda i: (i.row, i.col)):
            lr = "left" if it.col < GRID // 2 else "right"
            tb = "top" if it.row < GRID // 2 else "bottom"
            parts.append(f"{it.color} {it.shape} {tb} {lr}")
        return f"{NUMBER_WORDS[len(self.items)]}: " + ", ".join(parts) + "."


def _cells(rng: random.Random, k: int, allowed: list[tuple[int, int]] | None = None) -> list[tuple[int, int]]:
    pool = allowed or [(r, c) for r in range(GRID) for c in range(GRID)]
    return rng.sample(pool, k)


def _items(rng: random.Random, cells, shapes, colors) -> list[Item]:
    return [Item(rng.choice(shapes), rng.choice(colors), r, c) for r, c in cells]


def make_scene(rng: random.Random, category: str) -> Scene:
    colors = list(COLORS)
    if category == "existence":
        present = rng.sample(SHAPES, rng.choice([1, 2]))
        items = _items(rng, _cells(rng, rng.randint(1, 3)), present, colors)
        present = sorted({i.shape for i in items})
        absent = [s for s in SHAPES if s not in present]
        qs = [
            (f"Is there a {rng.choice(present)} in the image?", "Yes"),
            (f"Is there a {rng.choice(absent)} in the image?", "No"),
        ]
    elif category == "count":
        k = rng.randint(1, 4)
        items = _items(rng, _cells(rng, k), list(SHAPES), colors)
        wrong = rng.choice([n for n in NUMBER_WORDS if n != k])
        noun = lambda n: "shape" if n == 1 else "shapes"  # noqa: E731
        verb = lambda n: "Is there" if n == 1 else "Are there"  # noqa: E731
        qs = [
            (f"{verb(k)} {NUMBER_WORDS[k]} {noun(k)} in the image?", "Yes"),
            (f"{verb(wrong)} {NUMBER_WORDS[wrong]} {noun(wrong)} in the image?", "No"),
        ]
    elif category == "color":
        palette = rng.sample(colors, rng.choice([1, 2]))
        items = _items(rng, _cells(rng, rng.randint(1, 2)), list(SHAPES), palette)
        present = sorted({i.color for i in items})
        absent = [c for c in colors if c not in present]
        qs = [
            (f"Is there a {rng.choice(present)} shape in the image?", "Yes"),
            (f"Is there a {rng.choice(absent)} shape in the image?", "No"),
        ]
    elif category == "position":
        axis = rng.choice(["horizontal", "vertical"])
        if axis == "horizontal":
            side, other = rng.choice([("left", "right"), ("right", "left")])
            cols = range(0, GRID // 2) if side == "left" else range(GRID // 2, GRID)
            cells = [(r, c) for r in range(GRID) for c in cols]
        else:
            side, other = rng.choice([("top", "bottom"), ("bottom", "top")])
            rows = range(0, GRID // 2) if side == "top" else range(GRID // 2, GRID)
            cells = [(r, c) for r in rows for c in range(GRID)]
        items = _items(rng, _cells(rng, 1, cells), list(SHAPES), colors)
        it = items[0]
        qs = [
            (f"Is the {it.color} {it.shape} on the {side} side of the image?", "Yes"),
            (f"Is the {it.color} {it.shape} on the {other} side of the image?", "No"),
        ]
    else:
        raise ValueError(f"unknown category {category!r}; expected one of {CATEGORIES}")
    jitter = [(rng.randint(-2, 2), rng.randint(-2, 2), rng.randint(9, 12)) for _ in items]
    background = tuple(rng.randint(225, 255) for _ in range(3))
    qs = [(q + SUFFIX, a) for q, a in qs]
    rng.shuffle(qs)
    return Scene(category, items, jitter, background, qs)  # type: ignore[arg-type]


def scene_at(seed: int, index: int, category: str | None = None) -> Scene:
    """The scene number ``index`` of the stream ``seed``; categories cycle when not given."""
    rng = random.Random(f"shapes:{seed}:{index}")
    return make_scene(rng, category or CATEGORIES[index % len(CATEGORIES)])


def image_digest(img: Image.Image) -> str:
    return hashlib.sha256(img.tobytes()).hexdigest()[:16]


# Streams used by the demo zoo. Different seeds, and the calibration split drops any image
# whose pixels equal an evaluation image (checked by digest), so the splits are disjoint.
TRAIN_SEED = 1
EVAL_SEED = 2
CALIB_SEED = 3


def eval_requests(n_images: int, start: int = 0, max_new_tokens: int = 4) -> list:
    """VQA requests (all questions) for evaluation scenes ``start .. start + n_images - 1``."""
    from llmc.eval.vqa import VQARequest

    out = []
    for i in range(start, start + n_images):
        sc = scene_at(EVAL_SEED, i)
        out += [VQARequest(q, [sc.render()], {"max_new_tokens": max_new_tokens}) for q, _ in sc.questions]
    return out
