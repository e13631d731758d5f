"""Every kind of bad image is rejected with its precise reason; odd modes come back as RGB."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from cluster.data.images import IMAGE_REASONS, ImagePolicy, ImageRejected, load_image

POLICY = ImagePolicy()


def _noise(width: int, height: int, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB")


def _encoded(image: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height RGB pixels, with almost no pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 16)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def _reason(ref: str | bytes | Path, policy: ImagePolicy = POLICY) -> str:
    with pytest.raises(ImageRejected) as caught:
        load_image(ref if isinstance(ref, bytes) else str(ref), policy)
    assert caught.value.reason in IMAGE_REASONS
    return caught.value.reason


def _assert_normalised(image: Image.Image, policy: ImagePolicy = POLICY) -> None:
    assert image.mode == "RGB"
    assert policy.min_pixels <= image.width * image.height <= policy.max_pixels


def test_missing_file_is_rejected_as_missing(tmp_path: Path) -> None:
    assert _reason(tmp_path / "nope.png") == "missing"


def test_directory_is_rejected_as_missing(tmp_path: Path) -> None:
    assert _reason(tmp_path) == "missing"


def test_zero_byte_file_and_empty_bytes_are_rejected(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    assert _reason(empty) == "zero_byte"
    assert _reason(b"") == "zero_byte"


def test_text_file_renamed_png_is_not_an_image(tmp_path: Path) -> None:
    fake = tmp_path / "fake.png"
    fake.write_text("this is not a picture\n" * 20)
    assert _reason(fake) == "not_an_image"


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_files_are_detected(tmp_path: Path, fmt: str) -> None:
    data = _encoded(_noise(200, 160), fmt)
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: len(data) * 6 // 10])
    assert _reason(path) == "truncated"
    assert _reason(data[: len(data) // 2]) == "truncated"


def test_tiny_image_is_too_small(tmp_path: Path) -> None:
    path = tmp_path / "tiny.png"
    _noise(20, 20).save(path)
    assert _reason(path) == "too_small"


def test_elongated_image_is_extreme_aspect(tmp_path: Path) -> None:
    path = tmp_path / "strip.png"
    Image.new("L", (10000, 40), 128).save(path)
    assert _reason(path) == "extreme_aspect"


def test_aspect_at_the_limit_is_accepted_and_keeps_min_side() -> None:
    image = load_image(_encoded(Image.new("L", (6000, 30), 90), "PNG"))
    _assert_normalised(image)
    assert min(image.size) >= POLICY.min_side


@pytest.mark.parametrize(
    "side",
    [
        9000,  # 81 Mpx: over the policy's 64 Mpx, under PIL's warning threshold
        10000,  # 100 Mpx: PIL's DecompressionBombWarning, raised as an error
        60000,  # 3.6 Gpx: PIL's own DecompressionBombError
    ],
)
def test_header_declaring_too_many_pixels_is_a_bomb(side: int) -> None:
    # The pixel data is absent: only a check made from the header can give this reason.
    assert _reason(_png_header_only(side, side)) == "decompression_bomb"


def test_real_large_one_bit_image_is_a_bomb_under_a_small_policy(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    Image.new("1", (3000, 3000)).save(path)  # compresses to a few KiB
    assert path.stat().st_size < 100_000
    assert _reason(path, ImagePolicy(max_source_pixels=1_000_000)) == "decompression_bomb"


def test_cmyk_jpeg_comes_back_rgb_with_its_colour(tmp_path: Path) -> None:
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (80, 80), (0, 255, 255, 0)).save(path)  # pure red in CMYK
    image = load_image(str(path))
    _assert_normalised(image)
    r, g, b = image.getpixel((40, 40))
    assert r > 200 and g < 60 and b < 60


def test_palette_transparency_is_composited_on_white(tmp_path: Path) -> None:
    image = Image.new("P", (64, 64), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.paste(1, (0, 0, 32, 64))
    path = tmp_path / "palette.png"
    image.save(path, transparency=0)
    loaded = load_image(str(path))
    _assert_normalised(loaded)
    assert loaded.getpixel((5, 5))[0] > 240 and loaded.getpixel((5, 5))[1] < 20  # opaque red
    assert loaded.getpixel((60, 60)) == (255, 255, 255)  # transparent -> white


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_is_composited_on_white(tmp_path: Path, mode: str) -> None:
    colour = (0, 0, 255, 0) if mode == "RGBA" else (0, 0)
    path = tmp_path / f"alpha_{mode}.png"
    Image.new(mode, (64, 64), colour).save(path)
    loaded = load_image(str(path))
    _assert_normalised(loaded)
    assert loaded.getpixel((10, 10)) == (255, 255, 255)


def test_sixteen_bit_png_is_scaled_to_eight_bits(tmp_path: Path) -> None:
    ramp = np.linspace(0, 65535, 64 * 64).astype(np.uint16).reshape(64, 64)
    path = tmp_path / "deep.png"
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode in ("I;16", "I")
    loaded = np.asarray(load_image(str(path)))
    assert loaded.shape[2] == 3
    assert loaded.max() >= 250 and loaded.min() <= 5  # full range kept, not clipped to white
    assert len(np.unique(loaded)) > 100


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise when displayed
    path = tmp_path / "rotated.jpg"
    _noise(120, 80).save(path, exif=exif)
    loaded = load_image(str(path))
    assert loaded.size == (80, 120)


def test_large_image_is_downscaled_into_budget_with_aspect_kept(tmp_path: Path) -> None:
    path = tmp_path / "large.jpg"
    _noise(1600, 900).save(path)
    loaded = load_image(str(path))
    _assert_normalised(loaded)
    assert abs(loaded.width / loaded.height - 1600 / 900) < 0.02


def test_small_image_is_upscaled_into_budget(tmp_path: Path) -> None:
    path = tmp_path / "small.png"
    _noise(40, 30).save(path)
    loaded = load_image(str(path))
    _assert_normalised(loaded)
    assert abs(loaded.width / loaded.height - 40 / 30) < 0.05


def test_grey_and_one_bit_images_come_back_rgb() -> None:
    for mode in ("L", "1"):
        _assert_normalised(load_image(_encoded(Image.new(mode, (64, 64), 1), "PNG")))


def test_image_that_cannot_fit_the_pixel_budget_with_min_side_kept_is_extreme_aspect() -> None:
    policy = ImagePolicy(max_pixels=112 * 112)  # 2000x100 would need a 25 px short side
    assert _reason(_encoded(Image.new("L", (2000, 100)), "PNG"), policy) == "extreme_aspect"
    _assert_normalised(load_image(_encoded(Image.new("L", (1000, 200)), "PNG"), policy), policy)


def test_inconsistent_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="min_pixels"):
        ImagePolicy(min_pixels=500 * 500)
    with pytest.raises(ValueError, match="min_side"):
        ImagePolicy(min_side=300, min_pixels=10, max_pixels=200 * 200)


_VALID = _encoded(_noise(64, 48, seed=3), "PNG"), _encoded(_noise(64, 48, seed=4), "JPEG")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    which=st.sampled_from([0, 1]), cut=st.integers(0, 4000), flips=st.lists(st.integers(0, 4000), max_size=6)
)
def test_corrupted_bytes_load_or_raise_image_rejected_only(which: int, cut: int, flips: list[int]) -> None:
    data = bytearray(_VALID[which])
    for position in flips:
        data[position % len(data)] ^= 0xFF
    data = data[: max(0, len(data) - cut)]
    try:
        _assert_normalised(load_image(bytes(data)))
    except ImageRejected as rejected:
        assert rejected.reason in IMAGE_REASONS
