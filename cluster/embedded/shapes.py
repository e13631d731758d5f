"""Drawing helpers shared by the cue painters of the synthetic scenes.

A painter draws one cue into a box `(x0, y0, x1, y1)` with jittered colours, positions and counts
drawn from the given numpy Generator, so rendering is deterministic by seed. Cues are large
coloured regions and thick shapes: they must survive 112 px and a 14 px ViT patch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
from PIL import ImageDraw

Box = tuple[float, float, float, float]
RGB = tuple[int, int, int]
Painter = Callable[[ImageDraw.ImageDraw, Box, np.random.Generator], None]


def tint(rgb: Sequence[int], rng: np.random.Generator, amount: int = 14) -> RGB:
    """`rgb` with each channel moved by up to ±amount."""
    r, g, b = (
        min(255, max(0, int(c) + int(d)))
        for c, d in zip(rgb, rng.integers(-amount, amount + 1, 3), strict=True)
    )
    return r, g, b


def scale(rgb: Sequence[int], factor: float) -> RGB:
    r, g, b = (min(255, max(0, int(c * factor))) for c in rgb)
    return r, g, b


def uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(rng.uniform(low, high))


def span(box: Box) -> tuple[float, float, float, float]:
    """Centre x, centre y, half width, half height."""
    x0, y0, x1, y1 = box
    return (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2


def star_points(
    cx: float, cy: float, outer: float, inner: float, points: int, turn: float = 0.0
) -> list[tuple[float, float]]:
    """Polygon of a star with `points` tips."""
    return [
        (
            cx + (outer if k % 2 == 0 else inner) * math.cos(turn + math.pi * k / points),
            cy + (outer if k % 2 == 0 else inner) * math.sin(turn + math.pi * k / points),
        )
        for k in range(2 * points)
    ]


def heart_shape(draw: ImageDraw.ImageDraw, cx: float, cy: float, r: float, fill: RGB) -> None:
    """A heart of half width `r` centred at (cx, cy)."""
    lobe = 0.52 * r
    for side in (-1, 1):
        x = cx + side * 0.48 * r
        draw.ellipse((x - lobe, cy - 0.55 * r - lobe / 2, x + lobe, cy - 0.55 * r + 1.5 * lobe), fill=fill)
    draw.polygon(
        [(cx - 0.98 * r, cy - 0.2 * r), (cx + 0.98 * r, cy - 0.2 * r), (cx, cy + 0.9 * r)], fill=fill
    )
