"""Object painters: the one big object of a scene (balloons, spider, volcano...)."""

from __future__ import annotations

import math

import numpy as np
from PIL import ImageDraw

from .shapes import Box, heart_shape, span, star_points, tint, uniform


def balloons(draw: ImageDraw.ImageDraw, box: Box, rng: np.random.Generator) -> None:
    cx, cy, r, _ = span(box)
    colours = [(230, 40, 50), (40, 90, 230), (40, 180, 70)]
    knot = (cx + uniform(rng, -0.1, 0.1) * r, cy + r)
    for k, colour in enumerate(rng.permutation(3).tolist()):
        x, y = (
            cx + (k - 1) * 0.55 * r + uniform(rng, -0.1, 0.1) * r,
            cy - 0.35 * r + uniform(rng, -0.25, 0.15) * r,
        )
        draw.line([(x, y + 0.35 * r), knot], fill=(60, 60, 60), width=1)
        draw.ellipse((x - 0.3 * r, y - 0.38 * r, x + 0.3 * r, y + 0.38 * r), fill=tint(colours[colour], rng))


def fireworks(draw: ImageDraw.ImageDraw, box: Box, rng: np.random.Generator) -> None:
    cx, cy, r, _ = span(box)
    width = max(2, round(r / 8))
    colours = [(255, 240, 120), (120, 230, 255), (255, 90, 90), (150, 255, 120)]
    for k in range(int(rng.integers(2, 4))):
        x, y, size = (
            cx + uniform(rng, -0.5, 0.5) * r,
            cy + uniform(rng, -0.5, 0.4) * r,
            uniform(rng, 0.45, 0.7) * r,
        )
        colour, turn = tint(colours[(k + int(rng.integers(4))) % 4], rng), uniform(rng, 0, 1)
        for spoke in range(12):
            angle = turn + spoke * math.pi / 6
            draw.line(
                [
                    (x + 0.25 * size * math.cos(angle), y + 0.25 * size * math.sin(angle)),
                    (x + size * math.cos(angle), y + size * math.sin(angle)),
                ],
                fill=colour,
                width=width,
            )


def mountain(draw: ImageDraw.ImageDraw, box: Box, rng: np.random.Generator) -> None:
    cx, cy, r, _ = span(box)
    peak, base, half = (
        (cx + uniform(rng, -0.2, 0.2) * r, cy - r * uniform(rng, 0.9, 1.1)),
        cy + 1.95 * r,
        1.6 * r,
    )
    draw.polygon([(cx - half, base), peak, (cx + half, base)], fill=tint((95, 105, 140), rng))
    t = 0.33  # snow covers the top third
    left = (peak[0] + (cx - half - peak[0]) * t, peak[1] + (base - peak[1]) * t)
    right = (peak[0] + (cx + half - peak[0]) * t, peak[1] + (base - peak[1]) * t)
    draw.polygon(
        [left, peak, right, ((left[0] + right[0]) / 2, left[1] + 0.15 * r)],
        fill=tint((245, 245, 250), rng, 6),
    )


def sun(draw: ImageDraw.ImageDraw, box: Box, rng: np.random.Generator) -> None:
    cx, cy, r, _ = span(box)
    colour, turn, disc = tint((255, 175, 30), rng), uniform(rng, 0, 1), 0.58 * r
    for k in range(8):
        a = turn + k * math.pi / 4
        draw.line(
            [
                (cx + 0.7 * r * math.cos(a), cy + 0.7 * r * math.sin(a)),
                (cx + r * math.cos(a), cy + r * math.sin(a)),
            ],
            fill=colour,
            width=max(2, round(r / 7)),
        )
    draw.ellipse((cx - disc, cy - disc, cx + disc, cy + disc), fill=colour)


def flames(draw: ImageDraw.ImageDraw, box: Box, rng: np.random.Generator) -> None:
    cx, cy, r, _ = span(box)
    base = cy + r
    for scale, colour in ((1.0, (215, 45, 20)), (0.72, (250, 130, 20)), (0.42, (255, 220, 60))):
        for dx in (-0.45, 0.0, 0.45) if scale == 1.0 else (0.0,):
            x, w, h = (
                cx + dx * r,
                0.45 * r * scale * (1.4 if dx == 0 else 1),
                2 * r * scale * uniform(rng, 0.8, 1.0),
            )
            tip = (x + uniform(rng, -0.15, 0.15) * r, base - h)
            draw.polygon(
                [
                    (x - w, base),
                    (x - 0.8 * w, base - 0.45 * h),
                    tip,
                    (x + 0.8 * w, base - 0.45 * h),
                    (x + w, base),
                ],
                fill=tint(colour, rng),
            )


def spider(draw: ImageDraw.ImageDraw, box: Box, rng: np.random.Generator) -> None:
    cx, cy, r, _ = span(box)
    moon = 0.95 * r
    draw.ellipse((cx - moon, cy - moon, cx + moon, cy + moon), fill=tint((225, 225, 200), rng))
    width, black = max(2, round(r / 9)), (10, 10, 12)
    for side in (-1, 1):
        for k in range(4):
            y = cy - 0.25 * r + k * 0.2 * r
            knee = (cx + side * 0.6 * r, y - 0.35 * r + k * 0.1 * r)
            draw.line(
                [(cx, y), knee, (cx + side * 0.95 * r, y + 0.3 * r)], fill=black, width=width, joint="curve"
            )
    draw.ellipse((cx - 0.3 * r, cy - 0.15 * r, cx + 0.3 * r, cy + 0.55 * r), fill=black)
    draw.ellipse((cx - 0.2 * r, cy - 0.45 * r, cx + 0.2 * r, cy - 0.05 * r), fill=black)
    for side in (-1, 1):
        draw.ellipse(
            (cx + side * 0.1 * r - 0.05 * r, cy - 0.33 * r, cx + side * 0.1 * r + 0.05 * r, cy - 0.23 * r),
            fill=(220, 20, 20),
        )


def slime(draw: ImageDraw.ImageDraw, box: Box, rng: np.random.Generator) -> None:
    cx, cy, r, _ = span(box)
    green = tint((110, 200, 40), rng)
    blob = [
        (
            cx + r * uniform(rng, 0.55, 0.85) * math.cos(a),
            cy - 0.2 * r + r * uniform(rng, 0.45, 0.7) * math.sin(a),
        )
        for a in np.linspace(0, 2 * math.pi, 11)[:-1]
    ]
    draw.polygon(blob, fill=green)
    for x in np.linspace(cx - 0.5 * r, cx + 0.5 * r, 3):
        length = uniform(rng, 0.5, 1.0) * r
        draw.rectangle((x - 0.09 * r, cy, x + 0.09 * r, cy + length), fill=green)
        draw.ellipse((x - 0.14 * r, cy + length - 0.14 * r, x + 0.14 * r, cy + length + 0.14 * r), fill=green)
    for _ in range(3):
        x, y, s = cx + uniform(rng, -0.5, 0.5) * r, cy + uniform(rng, -0.6, 0.1) * r, 0.1 * r
        draw.ellipse((x - s, y - s, x + s, y + s), fill=(70, 130, 20))


def broken_heart(draw: ImageDraw.ImageDraw, box: Box, rng: np.random.Generator) -> None:
    cx, cy, r, _ = span(box)
    heart_shape(draw, cx, cy, 0.9 * r, tint((215, 30, 60), rng))
    crack = [(cx + (0.12 if k % 2 else -0.12) * r, cy - 0.6 * r + k * 0.3 * r) for k in range(6)]
    draw.line(crack, fill=(50, 10, 20), width=max(2, round(r / 7)))


def volcano(draw: ImageDraw.ImageDraw, box: Box, rng: np.random.Generator) -> None:
    cx, cy, r, _ = span(box)
    top = cy - 0.2 * r
    draw.polygon(
        [(cx - 1.05 * r, cy + r), (cx - 0.3 * r, top), (cx + 0.3 * r, top), (cx + 1.05 * r, cy + r)],
        fill=tint((105, 65, 40), rng),
    )
    draw.polygon(
        [
            (cx - 0.3 * r, top),
            (cx - 0.45 * r, top - 0.7 * r),
            (cx, top - 0.45 * r),
            (cx + 0.45 * r, top - 0.75 * r),
            (cx + 0.3 * r, top),
            (cx + 0.1 * r, top + 0.45 * r),
            (cx - 0.15 * r, top + 0.3 * r),
        ],
        fill=tint((240, 80, 20), rng),
    )
    for _ in range(5):
        x, y, s = cx + uniform(rng, -0.7, 0.7) * r, top - uniform(rng, 0.5, 0.95) * r, 0.09 * r
        draw.ellipse((x - s, y - s, x + s, y + s), fill=tint((255, 170, 30), rng))


def shadow(draw: ImageDraw.ImageDraw, box: Box, rng: np.random.Generator) -> None:
    cx, cy, r, _ = span(box)
    outline, width = tint((170, 170, 185), rng), max(2, round(r / 10))
    draw.ellipse(
        (cx - 0.65 * r, cy - 0.5 * r, cx + 0.65 * r, cy + r), fill=(8, 8, 10), outline=outline, width=width
    )
    draw.ellipse(
        (cx - 0.45 * r, cy - 0.95 * r, cx + 0.45 * r, cy - 0.1 * r),
        fill=(8, 8, 10),
        outline=outline,
        width=width,
    )
    for side in (-1, 1):
        x = cx + side * 0.2 * r
        draw.ellipse(
            (x - 0.11 * r, cy - 0.65 * r, x + 0.11 * r, cy - 0.45 * r), fill=tint((255, 230, 40), rng)
        )


def rotten_apple(draw: ImageDraw.ImageDraw, box: Box, rng: np.random.Generator) -> None:
    cx, cy, r, _ = span(box)
    draw.line(
        [(cx, cy - 0.7 * r), (cx + 0.15 * r, cy - 1.0 * r)], fill=(70, 45, 20), width=max(2, round(r / 8))
    )
    draw.ellipse(
        (cx - 0.8 * r, cy - 0.75 * r, cx + 0.8 * r, cy + 0.8 * r),
        fill=tint((150, 85, 30), rng),
        outline=(55, 30, 10),
        width=max(2, round(r / 10)),
    )
    for _ in range(4):
        x, y, s = (
            cx + uniform(rng, -0.45, 0.45) * r,
            cy + uniform(rng, -0.4, 0.5) * r,
            uniform(rng, 0.12, 0.2) * r,
        )
        draw.ellipse((x - s, y - s, x + s, y + s), fill=tint((95, 160, 40), rng))


def rain_cloud(draw: ImageDraw.ImageDraw, box: Box, rng: np.random.Generator) -> None:
    cx, cy, r, _ = span(box)
    grey, blue, width = tint((85, 90, 100), rng), tint((60, 110, 210), rng), max(2, round(r / 9))
    for k in range(5):
        x = cx - 0.6 * r + 0.3 * k * r
        draw.line([(x, cy + 0.15 * r), (x - 0.12 * r, cy + r)], fill=blue, width=width)
    for dx, dy, s in ((-0.45, 0.0, 0.38), (0.0, -0.2, 0.5), (0.45, 0.0, 0.38)):
        x, y = cx + dx * r, cy - 0.15 * r + dy * r
        draw.ellipse((x - s * r, y - s * r, x + s * r, y + s * r), fill=grey)


def gift_box(draw: ImageDraw.ImageDraw, box: Box, rng: np.random.Generator) -> None:
    cx, cy, r, _ = span(box)
    red, gold = tint((220, 40, 70), rng), tint((255, 215, 50), rng)
    draw.rectangle((cx - 0.6 * r, cy, cx + 0.6 * r, cy + 0.95 * r), fill=red)
    draw.rectangle((cx - 0.1 * r, cy, cx + 0.1 * r, cy + 0.95 * r), fill=gold)
    tilt = uniform(rng, 0.15, 0.3) * r
    draw.polygon(
        [
            (cx - 0.7 * r, cy - 0.35 * r + tilt),
            (cx + 0.6 * r, cy - 0.55 * r - tilt),
            (cx + 0.65 * r, cy - 0.3 * r - tilt),
            (cx - 0.65 * r, cy - 0.1 * r + tilt),
        ],
        fill=red,
    )
    draw.polygon(star_points(cx, cy - 0.8 * r, 0.3 * r, 0.12 * r, 5, uniform(rng, 0, 1)), fill=gold)
