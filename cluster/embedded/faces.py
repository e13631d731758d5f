"""The face cue: a big coloured face whose eyes, eyebrows and mouth carry the expression.

Skin colour, mouth shape and eyebrow angle are all large enough to read at 112 px. The "emoset"
style draws round faces, the "emotion6" style rounded squares.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import ImageDraw

from .shapes import RGB, Box, Painter, tint, uniform

INK: RGB = (35, 25, 20)
MOUTH: RGB = (110, 20, 30)


@dataclass(frozen=True)
class Expression:
    skin: RGB
    eyes: str  # closed | content | wide | dots | squint
    brows: str  # none | angry | raised | worried
    mouth: str  # laugh | grin | smile | big_smile | small_o | big_o | frown | tight_frown | wavy
    tears: bool = False


EXPRESSIONS: dict[str, Expression] = {
    "laughing": Expression((255, 205, 40), "closed", "none", "laugh"),
    "thrilled": Expression((255, 170, 45), "wide", "raised", "grin"),
    "amazed": Expression((240, 212, 185), "wide", "raised", "small_o"),
    "calm": Expression((250, 215, 100), "content", "none", "smile"),
    "angry": Expression((215, 50, 40), "dots", "angry", "tight_frown"),
    "scared": Expression((232, 236, 250), "wide", "worried", "big_o"),
    "disgusted": Expression((140, 185, 70), "squint", "angry", "wavy"),
    "sad": Expression((100, 145, 215), "dots", "worried", "frown", tears=True),
    "smiling": Expression((255, 210, 50), "closed", "none", "big_smile"),
    "surprised": Expression((255, 215, 60), "wide", "raised", "big_o"),
}


def face_painter(name: str, square: bool) -> Painter:
    """A painter for the face cue `name` (a key of `EXPRESSIONS`)."""
    expression = EXPRESSIONS[name]

    def paint(draw: ImageDraw.ImageDraw, box: Box, rng: np.random.Generator) -> None:
        x0, y0, x1, y1 = box
        cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
        width = max(2, round(r / 8))
        skin = tint(expression.skin, rng, 10)
        if square:
            draw.rounded_rectangle(box, radius=0.3 * r, fill=skin, outline=INK, width=max(1, width // 2))
        else:
            draw.ellipse(box, fill=skin, outline=INK, width=max(1, width // 2))
        tilt = uniform(rng, -0.04, 0.04) * r
        for side in (-1, 1):
            ex, ey = cx + side * 0.38 * r, cy - 0.15 * r + side * tilt
            _eye(draw, expression.eyes, ex, ey, side, r, width)
            _brow(draw, expression.brows, ex, ey, side, r, width)
        _mouth(draw, expression.mouth, cx, cy + 0.42 * r, r, width)
        if expression.tears:
            tx, ty, s = cx - 0.38 * r, cy + 0.12 * r, 0.11 * r
            draw.polygon([(tx - s, ty), (tx, ty - 2 * s), (tx + s, ty)], fill=(120, 200, 255))
            draw.ellipse((tx - s, ty - s, tx + s, ty + s), fill=(120, 200, 255))

    return paint


def _eye(draw: ImageDraw.ImageDraw, kind: str, ex: float, ey: float, side: int, r: float, width: int) -> None:
    s = 0.17 * r
    if kind == "closed":  # arcs like ^ ^
        draw.arc((ex - s, ey - 0.6 * s, ex + s, ey + 1.2 * s), 200, 340, fill=INK, width=width)
    elif kind == "content":  # arcs like u u
        draw.arc((ex - s, ey - 1.2 * s, ex + s, ey + 0.6 * s), 20, 160, fill=INK, width=width)
    elif kind == "wide":
        draw.ellipse((ex - s, ey - 1.1 * s, ex + s, ey + 1.1 * s), fill=(255, 255, 255), outline=INK, width=1)
        draw.ellipse((ex - 0.45 * s, ey - 0.45 * s, ex + 0.45 * s, ey + 0.45 * s), fill=INK)
    elif kind == "dots":
        draw.ellipse((ex - 0.55 * s, ey - 0.55 * s, ex + 0.55 * s, ey + 0.55 * s), fill=INK)
    elif kind == "squint":  # > <
        base, tip = ex + side * s, ex - side * 0.8 * s  # tips point at the nose
        draw.line([(base, ey - 0.7 * s), (tip, ey), (base, ey + 0.7 * s)], fill=INK, width=width)


def _brow(
    draw: ImageDraw.ImageDraw, kind: str, ex: float, ey: float, side: int, r: float, width: int
) -> None:
    inner, outer = ex - side * 0.2 * r, ex + side * 0.2 * r
    if kind == "angry":  # inner ends low
        draw.line([(outer, ey - 0.42 * r), (inner, ey - 0.2 * r)], fill=INK, width=width + 1)
    elif kind == "worried":  # inner ends high
        draw.line([(outer, ey - 0.22 * r), (inner, ey - 0.4 * r)], fill=INK, width=width)
    elif kind == "raised":
        draw.arc((ex - 0.22 * r, ey - 0.5 * r, ex + 0.22 * r, ey - 0.22 * r), 200, 340, fill=INK, width=width)


def _mouth(draw: ImageDraw.ImageDraw, kind: str, mx: float, my: float, r: float, width: int) -> None:
    if kind in ("laugh", "grin"):
        w = 0.5 * r if kind == "laugh" else 0.58 * r
        draw.pieslice((mx - w, my - 0.7 * w, mx + w, my + 0.7 * w), 0, 180, fill=MOUTH, outline=INK)
        if kind == "grin":
            draw.rectangle((mx - 0.8 * w, my, mx + 0.8 * w, my + 0.18 * w), fill=(255, 255, 255))
    elif kind in ("smile", "big_smile"):
        w = 0.42 * r if kind == "smile" else 0.55 * r
        draw.arc(
            (mx - w, my - 0.9 * w, mx + w, my + 0.5 * w),
            20,
            160,
            fill=INK,
            width=width if kind == "smile" else width + 1,
        )
    elif kind in ("small_o", "big_o"):
        w, h = (0.12 * r, 0.14 * r) if kind == "small_o" else (0.22 * r, 0.3 * r)
        draw.ellipse((mx - w, my - h, mx + w, my + h), fill=MOUTH, outline=INK)
    elif kind in ("frown", "tight_frown"):
        w = 0.4 * r if kind == "frown" else 0.32 * r
        draw.arc(
            (mx - w, my - 0.1 * r, mx + w, my + 0.7 * w),
            200,
            340,
            fill=INK,
            width=width if kind == "frown" else width + 2,
        )
    elif kind == "wavy":
        points = [(mx - 0.45 * r + 0.15 * r * k, my + (0.08 * r if k % 2 else -0.08 * r)) for k in range(7)]
        draw.line(points, fill=(60, 90, 20), width=width)
