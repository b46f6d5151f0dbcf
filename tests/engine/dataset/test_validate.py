"""Decoding one upload: each kind of bad file gets its own reason; good ones come out upright RGB."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
from PIL import Image

from loramill.engine.dataset.report import Rejected
from loramill.engine.dataset.validate import decode_image

from .conftest import jpeg_bytes, photo, png_bomb, png_bytes, sideways_phone_photo

LIMITS = {"max_pixels": 50_000_000, "min_side": 64}


def reason(data: bytes, **limits: int) -> str:
    with pytest.raises(Rejected) as caught:
        decode_image(data, **{**LIMITS, **limits})
    return caught.value.code


def test_reject_truncated_jpeg() -> None:
    full = jpeg_bytes(photo("rocket"))
    assert reason(full[: len(full) // 2]) == "truncated"


def test_reject_png_decompression_bomb_before_decoding() -> None:
    bomb = png_bomb()
    started = time.perf_counter()
    assert reason(bomb) == "too_many_pixels"
    assert time.perf_counter() - started < 1.0  # refused from the header, not by inflating 400 M pixels


def test_reject_image_over_pixel_cap_under_pillows_own_limit() -> None:
    assert reason(png_bytes(photo("coffee")), max_pixels=100_000) == "too_many_pixels"


def test_reject_ten_pixel_image_as_too_small() -> None:
    assert reason(png_bytes(Image.new("RGB", (10, 10)))) == "too_small"


def test_reject_text_file_named_jpg_as_not_an_image() -> None:
    with pytest.raises(Rejected) as caught:
        decode_image(b"remember to buy milk\n", **LIMITS)
    assert caught.value.code == "not_an_image"
    assert "text" in caught.value.message


def test_reject_eps_instead_of_running_ghostscript() -> None:
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 100 100\nshowpage\n"
    assert reason(eps) == "not_an_image"


def test_decode_exif_rotated_phone_photo_upright() -> None:
    stored, upright = sideways_phone_photo()
    decoded = decode_image(stored, **LIMITS)
    assert decoded.image.size == upright.size == (384, 512)
    assert decoded.exif_rotated
    top_band = np.asarray(decoded.image)[5:30, 50:330].reshape(-1, 3).mean(axis=0)
    assert top_band[0] > 200 and top_band[1] < 60 and top_band[2] < 60  # the red band is on top again


def test_decode_rgba_png_on_white() -> None:
    rgba = Image.new("RGBA", (200, 200), (0, 0, 0, 0))
    rgba.paste((200, 30, 30, 255), (50, 50, 150, 150))
    decoded = decode_image(png_bytes(rgba), **LIMITS)
    assert decoded.image.mode == "RGB"
    assert decoded.image.getpixel((5, 5)) == (255, 255, 255)
    assert decoded.image.getpixel((100, 100)) == (200, 30, 30)
    assert decoded.alpha is not None


def test_decode_rgba_png_on_chosen_colour() -> None:
    rgba = Image.new("RGBA", (100, 100), (0, 0, 0, 0))
    decoded = decode_image(png_bytes(rgba), **LIMITS, background=(10, 20, 30))
    assert decoded.image.getpixel((50, 50)) == (10, 20, 30)


def test_decode_palette_png_with_transparency_on_white() -> None:
    palette = Image.new("P", (100, 100), 0)
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    palette.paste(1, (40, 40, 60, 60))
    buffer = io.BytesIO()
    palette.save(buffer, "PNG", transparency=0)
    decoded = decode_image(buffer.getvalue(), **LIMITS)
    assert decoded.image.getpixel((5, 5)) == (255, 255, 255)
    assert decoded.image.getpixel((50, 50)) == (255, 0, 0)


def test_decode_sixteen_bit_greyscale_keeps_its_range() -> None:
    ramp = (np.linspace(0, 65535, 128 * 128).reshape(128, 128)).astype(np.uint16)
    decoded = decode_image(png_bytes(Image.fromarray(ramp)), **LIMITS)
    pixels = np.asarray(decoded.image)
    assert pixels.min() == 0 and pixels.max() == 255  # not clipped to white


def test_decode_cmyk_jpeg_as_rgb() -> None:
    cmyk = photo("coffee").convert("CMYK")
    decoded = decode_image(jpeg_bytes(cmyk), **LIMITS)
    assert decoded.image.mode == "RGB" and decoded.image.size == (600, 400)
