"""Decode one uploaded file into a clean, upright RGB image, or say exactly why not.

Only raster formats people actually upload are opened (Pillow would otherwise also try EPS, which
runs Ghostscript). The pixel count is checked from the header before any pixel is decoded, so a
decompression bomb costs nothing; then the whole image is decoded so a truncated file fails here and
not in the middle of training.
"""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from loramill.engine.dataset.report import Rejected

FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")  # JPEG also opens MPO (phone multi-picture)
_ORIENTATION_TAG = 0x0112


@dataclass
class DecodedImage:
    """An upright RGB image with transparency already composited, plus what it took to get there."""

    image: Image.Image
    alpha: Image.Image | None  # the upright alpha channel ("L") when the file had real transparency
    original_size: tuple[int, int]  # upright (width, height)
    format: str
    exif_rotated: bool


def decode_image(data: bytes, *, max_pixels: int, min_side: int,
                 background: tuple[int, int, int] = (255, 255, 255)) -> DecodedImage:
    """Decode ``data``; raise ``Rejected`` with not_an_image, too_many_pixels, too_small, truncated or corrupt."""
    # 1. Read the header only: format and size, no pixels yet
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=FORMATS)
    except Image.DecompressionBombError as exc:
        # Pillow refuses past twice its own limit before we see the size; report it against ours
        found = re.search(r"\((\d+) pixels\)", str(exc))
        count = f"{int(found.group(1)):,} pixels" if found else "far too many pixels"
        raise Rejected("too_many_pixels", f"{count}, over the {max_pixels:,} cap (max_pixels / --max-pixels); "
                       "a decompression bomb or a huge scan") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError):
        raise Rejected("not_an_image", f"not a {'/'.join(FORMATS)} image ({_sniff(data)})") from None
    width, height = image.size
    # 2. Refuse bombs and thumbnails before decoding a single pixel
    if width * height > max_pixels:
        raise Rejected("too_many_pixels", f"{width}×{height} = {width * height:,} pixels, over the "
                       f"{max_pixels:,} cap (max_pixels / --max-pixels)")
    if min(width, height) < min_side:
        raise Rejected("too_small", f"{width}×{height}; the shorter side must be at least {min_side} px "
                       "(min_side / --min-side)")
    # 3. Decode everything, so truncation shows now
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image.load()
    except (OSError, EOFError) as exc:
        text = str(exc)
        if isinstance(exc, EOFError) or "truncated" in text or "broken data stream" in text:
            raise Rejected("truncated", f"the {image.format} data ends early ({text or 'end of file'})") from None
        raise Rejected("corrupt", f"the {image.format} data cannot be decoded ({text})") from None
    except (ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise Rejected("corrupt", f"the {image.format} data cannot be decoded ({exc})") from None
    # 4. Upright, sRGB, RGB on the background
    orientation = image.getexif().get(_ORIENTATION_TAG, 1)
    upright = ImageOps.exif_transpose(image) or image
    rgb, alpha = to_rgb(to_srgb(upright), background)
    return DecodedImage(rgb, alpha, rgb.size, str(image.format), orientation not in (1, None))


def to_rgb(image: Image.Image, background: tuple[int, int, int]) -> tuple[Image.Image, Image.Image | None]:
    """Any mode -> RGB; transparency is composited on ``background`` and its alpha returned (None if opaque)."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit and float greyscale: Pillow's convert() would clip to 255, so scale to the range instead
        array = np.asarray(image, dtype=np.float64)
        peak = array.max() if array.size and array.max() > 255 else 255.0
        image = Image.fromarray(np.clip(array / peak * 255.0, 0, 255).astype(np.uint8), "L")
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    if not has_alpha:
        return (image if image.mode == "RGB" else image.convert("RGB")), None
    rgba = image.convert("RGBA")
    alpha = rgba.getchannel("A")
    if alpha.getextrema() == (255, 255):
        return rgba.convert("RGB"), None
    canvas = Image.new("RGB", rgba.size, background)
    canvas.paste(rgba.convert("RGB"), mask=alpha)
    return canvas, alpha


def to_srgb(image: Image.Image) -> Image.Image:
    """Convert from an embedded ICC profile (phones write Display P3) to sRGB; unchanged if none or unreadable."""
    icc = image.info.get("icc_profile")
    if not icc or image.mode not in ("RGB", "RGBA", "CMYK"):
        return image
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        mode = "RGBA" if image.mode == "RGBA" else "RGB"
        converted = ImageCms.profileToProfile(image, source, ImageCms.createProfile("sRGB"), outputMode=mode)
    except (ImageCms.PyCMSError, OSError, ValueError):
        return image
    return converted or image


def _sniff(data: bytes) -> str:
    """A hint about what the bytes really are, for the rejection message."""
    head = data[:512]
    if not data:
        return "empty file"
    if head.startswith(b"PK\x03\x04"):
        return "a zip archive"
    if head.lstrip().lower().startswith((b"<!doctype html", b"<html")):
        return "an HTML page"
    if head.startswith(b"%PDF"):
        return "a PDF"
    try:
        head.decode("utf-8")
        return "text"
    except UnicodeDecodeError:
        return f"{len(data):,} bytes of unknown data"
