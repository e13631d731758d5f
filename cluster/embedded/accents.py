"""Painters for the accent cues (scattered small things and weather) of the synthetic scenes."""

from __future__ import annotations

import math

import numpy as np
from PIL import ImageDraw

from .shapes import Box, heart_shape, star_points, tint, uniform


def _points(box: Box, rng: np.random.Generator, count: int) -> list[tuple[float, float]]:
    x0, y0, x1, y1 = box
    return [(uniform(rng, x0, x1), uniform(rng, y0, y1)) for _ in range(count)]


def _unit(box: Box) -> float:
    """A length unit: 1/100 of the box's larger side."""
    return max(box[2] - box[0], box[3] - box[1]) / 100


def confetti(draw: ImageDraw.ImageDraw, box: Box, rng: np.random.Generator) -> None:
    u, colours = _unit(box), [(240, 40, 120), (40, 140, 240), (40, 200, 90), (250, 140, 20), (150, 60, 220)]
    for x, y in _points(box, rng, int(rng.integers(22, 30))):
        w, h = uniform(rng, 2.5, 4) * u, uniform(rng, 2.5, 4) * u
        draw.rectangle((x, y, x + w, y + h), fill=tint(colours[int(rng.integers(len(colours)))], rng))


def sparkles(draw: ImageDraw.ImageDraw, box: Box, rng: np.random.Generator) -> None:
    u = _unit(box)
    for x, y in _points(box, rng, int(rng.integers(6, 9))):
        size = uniform(rng, 4, 6.5) * u
        draw.polygon(star_points(x, y, size, 0.3 * size, 4), fill=tint((255, 210, 60), rng))


def stars(draw: ImageDraw.ImageDraw, box: Box, rng: np.random.Generator) -> None:
    u = _unit(box)
    for x, y in _points(box, rng, int(rng.integers(14, 20))):
        s = uniform(rng, 1.0, 1.8) * u
        draw.ellipse((x - s, y - s, x + s, y + s), fill=tint((250, 250, 215), rng, 5))
    for x, y in _points(box, rng, 3):
        draw.polygon(star_points(x, y, 4 * u, 1.2 * u, 4, math.pi / 4), fill=(255, 255, 230))


def clouds(draw: ImageDraw.ImageDraw, box: Box, rng: np.random.Generator) -> None:
    u = _unit(box)
    for x, y in _points((box[0], box[1], box[2], box[1] + 0.4 * (box[3] - box[1])), rng, 2):
        for dx, s in ((-8, 7), (0, 10), (9, 7)):
            s *= u * uniform(rng, 0.9, 1.15)
            draw.ellipse(
                (x + dx * u - 1.4 * s, y - s, x + dx * u + 1.4 * s, y + s), fill=tint((245, 245, 250), rng, 5)
            )


def lightning(draw: ImageDraw.ImageDraw, box: Box, rng: np.random.Generator) -> None:
    x0, y0, x1, y1 = box
    u, x = _unit(box), uniform(rng, x0 + 0.15 * (x1 - x0), x1 - 0.15 * (x1 - x0))
    length = (y1 - y0) * uniform(rng, 0.6, 0.85)
    w, dx, h = 5 * u, 8 * u, length / 3
    bolt = [
        (x, y0),
        (x + w, y0),
        (x + w - dx / 2, y0 + h),
        (x + w + dx / 2, y0 + h),
        (x - dx / 2, y0 + length),
        (x, y0 + 1.4 * h),
        (x - dx, y0 + 1.4 * h),
    ]
    draw.polygon(bolt, fill=tint((255, 240, 70), rng))


def fog(draw: ImageDraw.ImageDraw, box: Box, rng: np.random.Generator) -> None:
    x0, y0, x1, y1 = box
    width, u = x1 - x0, _unit(box)
    for k in range(3):
        y = y0 + (0.25 + 0.3 * k) * (y1 - y0) + uniform(rng, -5, 5) * u
        h = uniform(rng, 7, 10) * u
        draw.ellipse(
            (x0 - 0.3 * width, y - h, x1 + 0.3 * width, y + h), fill=(*tint((205, 205, 215), rng, 6), 150)
        )


def flies(draw: ImageDraw.ImageDraw, box: Box, rng: np.random.Generator) -> None:
    u = _unit(box)
    for x, y in _points(box, rng, int(rng.integers(9, 13))):
        s = 1.8 * u
        for side in (-1, 1):  # translucent wings, then the body
            draw.ellipse(
                (x + side * 1.6 * s - 0.8 * s, y - 1.8 * s, x + side * 1.6 * s + 0.8 * s, y - 0.4 * s),
                fill=(210, 215, 230, 140),
            )
        draw.ellipse((x - 1.2 * s, y - s, x + 1.2 * s, y + s), fill=(15, 15, 15))


def rain(draw: ImageDraw.ImageDraw, box: Box, rng: np.random.Generator) -> None:
    u = _unit(box)
    colour, width = tint((170, 190, 235), rng), max(1, round(1.2 * u))
    for x, y in _points(box, rng, int(rng.integers(30, 40))):
        draw.line([(x, y), (x - 3 * u, y + 9 * u)], fill=colour, width=width)


def hearts(draw: ImageDraw.ImageDraw, box: Box, rng: np.random.Generator) -> None:
    u = _unit(box)
    for x, y in _points(box, rng, int(rng.integers(5, 8))):
        heart_shape(draw, x, y, uniform(rng, 4, 6) * u, tint((250, 110, 175), rng))


def raindrops(draw: ImageDraw.ImageDraw, box: Box, rng: np.random.Generator) -> None:
    u = _unit(box)
    for x, y in _points(box, rng, int(rng.integers(7, 10))):
        s, colour = uniform(rng, 3, 4.5) * u, tint((70, 130, 230), rng)
        draw.polygon([(x - s, y), (x, y - 2.2 * s), (x + s, y)], fill=colour)
        draw.ellipse((x - s, y - s, x + s, y + s), fill=colour)
