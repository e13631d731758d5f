"""Image validation and normalisation: every image a model sees goes through `load_image`.

Qwen-VL pipelines crash on images under 28 px a side, aspect ratios over 200, truncated files and
decompression bombs (LESSONS.md, Reliability). `load_image` turns each of those into an
`ImageRejected` with a reason from a closed set, so a bad file is skipped and counted, never a crash.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO, Literal, get_args

import numpy as np
from PIL import Image, ImageFile, ImageOps

ImageReason = Literal[
    "missing", "zero_byte", "not_an_image", "truncated", "too_small", "extreme_aspect", "decompression_bomb"
]
IMAGE_REASONS: tuple[str, ...] = get_args(ImageReason)

# Image.open may warn (or raise) about bombs; warning filters are process-global, so the header
# parse that can emit the warning runs under this lock (decoding, the slow part, does not).
_OPEN_LOCK = threading.Lock()
_ALPHA_MODES = frozenset({"RGBA", "LA", "La", "RGBa", "PA"})
_WIDE_INT_MODES = frozenset({"I", "F"})


class ImageRejected(Exception):
    """An image that cannot be used; `reason` is one of `IMAGE_REASONS`."""

    def __init__(self, reason: ImageReason, detail: str = "") -> None:
        if reason not in IMAGE_REASONS:
            raise ValueError(f"unknown image reason {reason!r}")
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason: ImageReason = reason
        self.detail = detail


@dataclass(frozen=True)
class ImagePolicy:
    """Limits on source images and the pixel budget of the normalised image.

    The defaults follow Qwen2.5-VL's constraints: at least 28 px a side, aspect ratio at most 200.
    `max_source_pixels` is checked from the header, before any pixel is decoded.
    """

    min_side: int = 28
    max_aspect: float = 200.0
    max_source_pixels: int = 64_000_000
    min_pixels: int = 56 * 56
    max_pixels: int = 448 * 448

    def __post_init__(self) -> None:
        if self.min_side < 1 or self.max_aspect < 1 or self.max_source_pixels < 1:
            raise ValueError(f"ImagePolicy: min_side, max_aspect, max_source_pixels must be positive: {self}")
        if not 0 < self.min_pixels <= self.max_pixels:
            raise ValueError(f"ImagePolicy: need 0 < min_pixels <= max_pixels, got {self}")
        if self.min_side**2 > self.max_pixels:
            raise ValueError(f"ImagePolicy: max_pixels must be >= min_side**2, got {self}")


def load_image(ref: str | bytes | os.PathLike[str], policy: ImagePolicy | None = None) -> Image.Image:
    """Decode, check and normalise one image: RGB, EXIF orientation applied, pixel count in budget.

    Raises `ImageRejected` (and nothing else) for any file that cannot be used.
    """
    policy = policy or ImagePolicy()
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise RuntimeError(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True; truncated images would pass unnoticed"
        )
    with _source(ref) as stream:
        image = _open(stream)
        try:
            _check_header(image, policy)
            _decode(image, policy)
            rgb = _to_rgb(_apply_orientation(image))
            return _fit_pixels(rgb, policy)
        except ImageRejected:
            raise
        except Exception as error:  # the boundary: any other decoder failure is a corrupt stream
            raise ImageRejected("truncated", f"{type(error).__name__}: {error}") from error
        finally:
            image.close()


@contextlib.contextmanager
def _source(ref: str | bytes | os.PathLike[str]) -> Iterator[BinaryIO]:
    """A readable stream over the encoded image; missing, unreadable and empty sources are rejected."""
    if isinstance(ref, (bytes, bytearray, memoryview)):
        if len(ref) == 0:
            raise ImageRejected("zero_byte", "empty bytes")
        yield io.BytesIO(bytes(ref))
        return
    path = os.fspath(ref)
    try:
        stream = open(path, "rb")  # noqa: SIM115 -- closed by the with-block below
    except OSError as error:  # absent, a directory, no permission
        raise ImageRejected("missing", f"{path}: {type(error).__name__}") from error
    with stream:
        if os.fstat(stream.fileno()).st_size == 0:
            raise ImageRejected("zero_byte", path)
        yield stream


def _open(stream: BinaryIO) -> Image.Image:
    """Parse the header only, mapping failures (bombs included) to reasons."""
    try:
        with _OPEN_LOCK, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(stream)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageRejected("decompression_bomb", str(error)) from error
    except Exception as error:
        raise ImageRejected("not_an_image", f"{type(error).__name__}: {error}") from error


def _check_header(image: Image.Image, policy: ImagePolicy) -> None:
    """Size checks from the header, before decoding."""
    width, height = image.size
    if width * height > policy.max_source_pixels:
        raise ImageRejected("decompression_bomb", f"{width}x{height} > {policy.max_source_pixels} pixels")
    if min(width, height) < policy.min_side:
        raise ImageRejected("too_small", f"{width}x{height}, min side {policy.min_side}")
    if max(width, height) / min(width, height) > policy.max_aspect:
        raise ImageRejected("extreme_aspect", f"{width}x{height}, max aspect {policy.max_aspect}")
    fitted = _target_size((width, height), policy)
    if min(fitted) < policy.min_side:  # too elongated to fit max_pixels with min_side kept
        raise ImageRejected("extreme_aspect", f"{width}x{height} would become {fitted[0]}x{fitted[1]}")


def _decode(image: Image.Image, policy: ImagePolicy) -> None:
    """Decode every pixel; a truncated or corrupt stream raises `ImageRejected('truncated')`."""
    if image.format == "JPEG":
        # Let libjpeg decode at 1/2..1/8 scale when the image will be downscaled anyway.
        width, height = _target_size(image.size, policy)
        image.draft(image.mode, (width, height))
    try:
        image.load()
    except (OSError, EOFError, SyntaxError, ValueError) as error:
        raise ImageRejected("truncated", f"{type(error).__name__}: {error}") from error


def _apply_orientation(image: Image.Image) -> Image.Image:
    """Rotate/flip as the EXIF orientation tag says; a broken EXIF block leaves the image as is."""
    try:
        return ImageOps.exif_transpose(image)
    except Exception:
        return image


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any mode to 8-bit RGB: alpha and palette transparency composited on white, 16-bit scaled."""
    mode = image.mode
    if mode == "P" and "transparency" in image.info:
        image, mode = image.convert("RGBA"), "RGBA"
    if mode in _ALPHA_MODES:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode.startswith("I;16") or mode in _WIDE_INT_MODES:
        return Image.fromarray(_to_uint8(np.asarray(image), mode)).convert("RGB")
    return image.convert("RGB")


def _to_uint8(pixels: np.ndarray, mode: str) -> np.ndarray:
    """Scale a 16/32-bit or float grey image to 0..255."""
    values = pixels.astype(np.float64)
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if mode.startswith("I;16") or (low >= 0 and 255 < high <= 65535):
        values = values / 257.0  # 16-bit range: 65535 -> 255
    elif low < 0 or high > 255:
        values = (values - low) / max(high - low, 1e-12) * 255.0
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def _target_size(size: tuple[int, int], policy: ImagePolicy) -> tuple[int, int]:
    """The size with the same aspect whose pixel count is within [min_pixels, max_pixels]."""
    width, height = size
    pixels = width * height
    if pixels > policy.max_pixels:
        scale = math.sqrt(policy.max_pixels / pixels)
        return max(1, math.floor(width * scale)), max(1, math.floor(height * scale))
    if pixels < policy.min_pixels:
        scale = math.sqrt(policy.min_pixels / pixels)
        return math.ceil(width * scale), math.ceil(height * scale)
    return width, height


def _fit_pixels(image: Image.Image, policy: ImagePolicy) -> Image.Image:
    """Resize (aspect preserved) into the pixel budget; untouched if already inside it."""
    size = _target_size(image.size, policy)
    if size == image.size:
        return image
    return image.resize(size, Image.Resampling.BICUBIC)
