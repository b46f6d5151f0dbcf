"""Checks on uploaded training images, before anything is stored: count, bytes, pixels, format.

Pure functions of the bytes and the settings; each refusal names the image, the limit and the
setting that holds it, so "why was my upload refused" has one answer.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass

from PIL import Image

from loramill.errors import InvalidInput
from loramill.gateway.api.errors import PayloadTooLarge
from loramill.gateway.settings import GatewaySettings

# what PIL calls them -> the extension stored (the worker reads any of these)
FORMATS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}


@dataclass(frozen=True)
class CheckedImage:
    """An upload that passed every check, with the name it is stored under."""

    data: bytes
    extension: str
    width: int
    height: int

    @property
    def digest(self) -> str:
        """A short content hash: the same photo uploaded twice gets the same key (idempotent retries)."""
        return hashlib.sha256(self.data).hexdigest()[:16]

    @property
    def content_type(self) -> str:
        return "image/jpeg" if self.extension == "jpg" else f"image/{self.extension}"


def check_image_count(count: int, settings: GatewaySettings) -> None:
    """Refuse a training request with no images or more than ``LORAMILL_MAX_IMAGES``."""
    if count == 0:
        raise InvalidInput("images: upload at least one image (or give imageKeys of stored ones)",
                           code="missing_field", field="images")
    if count > settings.max_images:
        raise InvalidInput(f"images: {count} images sent; the limit is {settings.max_images} per training "
                           f"(LORAMILL_MAX_IMAGES); send fewer", code="too_many_images", field="images")


def check_image(data: bytes, index: int, filename: str | None, settings: GatewaySettings) -> CheckedImage:
    """Decode just enough of ``data`` to know it is a JPEG/PNG/WebP within the size limits."""
    where = f"images[{index}]" + (f" ({filename})" if filename else "")
    # 1. Bytes
    if len(data) > settings.max_image_bytes:
        raise PayloadTooLarge(f"{where} is {len(data)} bytes; the limit is {settings.max_image_bytes} bytes per "
                              "image (LORAMILL_MAX_IMAGE_BYTES); resize or recompress it",
                              code="image_too_large", field=f"images[{index}]")
    # 2. Header: format and dimensions, without decoding the pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height, kind = image.width, image.height, image.format
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError):
        raise InvalidInput(f"{where} is not an image we can read; send JPEG, PNG or WebP files",
                           code="invalid_image", field=f"images[{index}]") from None
    if kind not in FORMATS:
        raise InvalidInput(f"{where} is {kind}; send JPEG, PNG or WebP files", code="invalid_image",
                           field=f"images[{index}]")
    # 3. Pixels
    if width * height > settings.max_image_pixels:
        raise InvalidInput(f"{where} is {width}x{height} = {width * height} pixels; the limit is "
                           f"{settings.max_image_pixels} pixels (LORAMILL_MAX_IMAGE_PIXELS); downscale it",
                           code="image_too_many_pixels", field=f"images[{index}]")
    if min(width, height) < settings.min_image_side:
        raise InvalidInput(f"{where} is {width}x{height}; each side must be at least {settings.min_image_side} "
                           "pixels (LORAMILL_MIN_IMAGE_SIDE); use a larger photo",
                           code="image_too_small", field=f"images[{index}]")
    # 4. The pixels decode (a truncated file fails here, not in the worker an hour later). verify()
    #    alone checks PNG chunks but never decodes JPEG data, so decode fully: the pixel count is
    #    already capped above, so this is bounded.
    try:
        with Image.open(io.BytesIO(data)) as decoded:
            decoded.load()
    except Exception:  # PIL raises a zoo of types for corrupt files
        raise InvalidInput(f"{where} is damaged or truncated; upload it again",
                           code="invalid_image", field=f"images[{index}]") from None
    return CheckedImage(data=data, extension=FORMATS[kind], width=width, height=height)
