"""Background painters: sky and ground gradients (emoset), patterned backdrops (emotion6)."""

from __future__ import annotations

import math

import numpy as np
from PIL import ImageDraw

from .shapes import RGB, Box, Painter, scale, span, star_points, tint, uniform

_GRADIENT_BAND_PX = 3  # gradients are drawn as bands this high: invisible at 112 px, 3x fewer calls


def gradient(top: RGB, bottom: RGB | None = None, shade: float = 0.78) -> Painter:
    """A vertical gradient; with no `bottom`, from a darker `top` to `top`."""

    def paint(draw: ImageDraw.ImageDraw, box: Box, rng: np.random.Generator) -> None:
        low = tint(bottom or top, rng)
        high = tint(top, rng) if bottom else scale(low, shade)
        x0, y0, x1, y1 = box
        bands = max(1, math.ceil((y1 - y0) / _GRADIENT_BAND_PX))
        step = (y1 - y0) / bands
        for i in range(bands):
            t = i / max(1, bands - 1)
            colour = tuple(int(a + (b - a) * t) for a, b in zip(high, low, strict=True))
            draw.rectangle((x0, y0 + i * step, x1, y0 + (i + 1) * step), fill=colour)

    return paint


def stripes(first: RGB, second: RGB) -> Painter:
    def paint(draw: ImageDraw.ImageDraw, box: Box, rng: np.random.Generator) -> None:
        x0, y0, x1, y1 = box
        size = max(x1 - x0, y1 - y0)
        width, offset = size / uniform(rng, 6, 8), uniform(rng, 0, size / 4)
        colours = (tint(first, rng), tint(second, rng))
        draw.rectangle(box, fill=colours[1])
        for k in range(-12, 12, 2):
            a = x0 + offset + k * width
            draw.polygon([(a, y0), (a + width, y0), (a + width + size, y1), (a + size, y1)], fill=colours[0])

    return paint


def rings(first: RGB, second: RGB) -> Painter:
    def paint(draw: ImageDraw.ImageDraw, box: Box, rng: np.random.Generator) -> None:
        cx, cy, hw, hh = span(box)
        cx, cy = cx + uniform(rng, -0.3, 0.3) * hw, cy + uniform(rng, -0.3, 0.3) * hh
        step, radius = max(hw, hh) / uniform(rng, 3.5, 4.5), 3.0 * max(hw, hh)
        colours, k = (tint(first, rng), tint(second, rng)), 0
        while radius > 0:
            draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=colours[k % 2])
            radius, k = radius - step, k + 1

    return paint


def checks(first: RGB, second: RGB) -> Painter:
    def paint(draw: ImageDraw.ImageDraw, box: Box, rng: np.random.Generator) -> None:
        x0, y0, x1, y1 = box
        cell = (x1 - x0) / uniform(rng, 3.5, 4.5)
        colours = (tint(first, rng), tint(second, rng))
        for i in range(math.ceil((x1 - x0) / cell) + 1):
            for j in range(math.ceil((y1 - y0) / cell) + 1):
                x, y = x0 + i * cell, y0 + j * cell
                draw.rectangle((x, y, x + cell, y + cell), fill=colours[(i + j) % 2])

    return paint


def rays(first: RGB, second: RGB) -> Painter:
    def paint(draw: ImageDraw.ImageDraw, box: Box, rng: np.random.Generator) -> None:
        x0, y0, x1, y1 = box
        cx, cy = x0 + uniform(rng, 0.2, 0.8) * (x1 - x0), y0 + uniform(rng, 0.0, 0.3) * (y1 - y0)
        radius, start = 3 * (x1 - x0), uniform(rng, 0, 30)
        colours = (tint(first, rng), tint(second, rng))
        for k in range(12):
            draw.pieslice(
                (cx - radius, cy - radius, cx + radius, cy + radius),
                start + 30 * k,
                start + 30 * k + 30,
                fill=colours[k % 2],
            )

    return paint


def burst(background: RGB, light: RGB) -> Painter:
    def paint(draw: ImageDraw.ImageDraw, box: Box, rng: np.random.Generator) -> None:
        cx, cy, hw, hh = span(box)
        draw.rectangle(box, fill=tint(background, rng))
        cx, cy, outer = (
            cx + uniform(rng, -0.2, 0.2) * hw,
            cy + uniform(rng, -0.3, 0.0) * hh,
            uniform(rng, 0.8, 1.0) * hw,
        )
        draw.polygon(star_points(cx, cy, outer, 0.45 * outer, 12, uniform(rng, 0, 1)), fill=tint(light, rng))
        draw.polygon(
            star_points(cx, cy, 0.5 * outer, 0.25 * outer, 8, uniform(rng, 0, 1)),
            fill=tint((255, 240, 90), rng),
        )

    return paint
