"""Layout of the two synthetic styles: where each cue slot goes, in which order, plus pixel noise."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from . import accents, objects
from . import backdrops as b
from .faces import EXPRESSIONS, face_painter
from .scenes import STYLES, Scene
from .shapes import Box, Painter, tint, uniform

GRAIN_PX, GRAIN_LEVELS = 2, 4  # brightness noise: uniform in ±4 levels, per 2x2-pixel block

PAINTERS: dict[str, Painter] = {
    # emoset skies and grounds
    "yellow_sky": b.gradient((250, 215, 60)),
    "pink_sky": b.gradient((230, 50, 160)),
    "violet_sky": b.gradient((70, 35, 125)),
    "blue_sky": b.gradient((150, 200, 240)),
    "red_sky": b.gradient((135, 20, 20)),
    "night_sky": b.gradient((18, 22, 48)),
    "olive_sky": b.gradient((115, 118, 50)),
    "grey_sky": b.gradient((140, 140, 145)),
    "grass": b.gradient((60, 165, 60), shade=1.15),
    "stage": b.gradient((110, 40, 150), shade=1.15),
    "lake": b.gradient((25, 55, 120), shade=1.15),
    "sand": b.gradient((228, 200, 140), shade=1.1),
    "rock": b.gradient((38, 32, 32), shade=1.2),
    "ash": b.gradient((75, 75, 80), shade=1.15),
    "mud": b.gradient((100, 68, 35), shade=1.15),
    "street": b.gradient((70, 92, 125), shade=1.15),
    # emotion6 backdrops
    "red_stripes": b.stripes((200, 30, 30), (35, 10, 10)),
    "dark_rings": b.rings((30, 40, 100), (10, 10, 25)),
    "green_checks": b.checks((110, 150, 50), (105, 75, 40)),
    "sun_rays": b.rays((255, 215, 60), (250, 150, 40)),
    "grey_wall": b.gradient((95, 105, 130), (145, 155, 170)),
    "burst": b.burst((60, 200, 230), (250, 250, 250)),
    # objects
    **{
        name: getattr(objects, name)
        for name in (
            "balloons",
            "fireworks",
            "mountain",
            "sun",
            "flames",
            "spider",
            "slime",
            "broken_heart",
            "volcano",
            "shadow",
            "rotten_apple",
            "rain_cloud",
            "gift_box",
        )
    },
    # accents
    **{
        name: getattr(accents, name)
        for name in (
            "confetti",
            "sparkles",
            "stars",
            "clouds",
            "lightning",
            "fog",
            "flies",
            "rain",
            "hearts",
            "raindrops",
        )
    },
}

FRAMES: dict[str, tuple[int, int, int]] = {
    "black_frame": (20, 20, 20),
    "grey_frame": (125, 125, 125),
    "brown_frame": (110, 70, 30),
    "pink_frame": (245, 140, 190),
    "navy_frame": (25, 35, 95),
    "orange_frame": (250, 140, 30),
}


def render(scene: Scene, size: int, rng: np.random.Generator) -> Image.Image:
    """Draw `scene` as a `size`×`size` RGB image; all jitter comes from `rng`."""
    image = Image.new("RGB", (size, size))
    draw = ImageDraw.Draw(image, "RGBA")  # RGBA draw mode: fills with alpha blend (fog)
    cues = scene.cue_dict()
    if scene.style == "emoset":
        _landscape(draw, cues, float(size), rng)
    else:
        _poster(draw, cues, float(size), rng)
    return _add_noise(image, rng)


def _square(cx: float, cy: float, r: float) -> Box:
    return cx - r, cy - r, cx + r, cy + r


def _landscape(draw: ImageDraw.ImageDraw, cues: dict[str, str], s: float, rng: np.random.Generator) -> None:
    """EmoSet style: sky over ground, object high on one side, a round face low on the other."""
    horizon = s * uniform(rng, 0.62, 0.7)
    side = 1 if rng.random() < 0.5 else -1
    PAINTERS[cues["sky"]](draw, (0, 0, s, horizon), rng)
    PAINTERS[cues["ground"]](draw, (0, horizon, s, s), rng)
    PAINTERS[cues["accent"]](draw, (0, 0, s, horizon + 0.1 * s), rng)
    obj = (s * (0.5 + side * 0.23 + uniform(rng, -0.04, 0.04)), s * (0.3 + uniform(rng, -0.04, 0.04)))
    PAINTERS[cues["object"]](draw, _square(*obj, s * 0.17 * uniform(rng, 0.85, 1.15)), rng)
    face = (s * (0.5 - side * 0.21 + uniform(rng, -0.04, 0.04)), s * (0.66 + uniform(rng, -0.03, 0.03)))
    face_painter(cues["face"], square=False)(draw, _square(*face, s * 0.19 * uniform(rng, 0.9, 1.1)), rng)


def _poster(draw: ImageDraw.ImageDraw, cues: dict[str, str], s: float, rng: np.random.Generator) -> None:
    """Emotion6 style: patterned backdrop in a thick frame, object on top, a square face below."""
    margin = s * 0.09 * uniform(rng, 0.9, 1.15)
    side = 1 if rng.random() < 0.5 else -1
    PAINTERS[cues["backdrop"]](draw, (0, 0, s, s), rng)
    PAINTERS[cues["accent"]](draw, (margin, margin, s - margin, s - margin), rng)
    obj = (s * (0.5 + side * 0.2 + uniform(rng, -0.03, 0.03)), s * (0.33 + uniform(rng, -0.03, 0.03)))
    PAINTERS[cues["object"]](draw, _square(*obj, s * 0.16 * uniform(rng, 0.85, 1.15)), rng)
    face = (s * (0.5 - side * 0.17 + uniform(rng, -0.03, 0.03)), s * (0.63 + uniform(rng, -0.03, 0.03)))
    face_painter(cues["face"], square=True)(draw, _square(*face, s * 0.2 * uniform(rng, 0.9, 1.1)), rng)
    colour = tint(FRAMES[cues["frame"]], rng)
    for band in ((0, 0, s, margin), (0, s - margin, s, s), (0, 0, margin, s), (s - margin, 0, s, s)):
        draw.rectangle(band, fill=colour)


def _add_noise(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Brightness grain in GRAIN_PX blocks (per-pixel noise would make PNGs 8x larger and slower)."""
    height, width = image.height, image.width
    cells = (-(-height // GRAIN_PX), -(-width // GRAIN_PX), 1)
    grain = rng.integers(-GRAIN_LEVELS, GRAIN_LEVELS + 1, cells, dtype=np.int16)
    grain = grain.repeat(GRAIN_PX, axis=0).repeat(GRAIN_PX, axis=1)[:height, :width]
    pixels = np.asarray(image, dtype=np.int16) + grain
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def check_catalog() -> None:
    """Every cue of every style has a painter (a programming error otherwise)."""
    for style in STYLES.values():
        for label, cues in style.canonical.items():
            for slot, cue in zip(style.slots, cues, strict=True):
                known = (
                    cue in EXPRESSIONS if slot == "face" else cue in (FRAMES if slot == "frame" else PAINTERS)
                )
                if not known:
                    raise AssertionError(
                        f"style {style.name}, label {label}: no painter for {slot} cue {cue!r}"
                    )
