"""Checks on uploaded training images and their captions, before anything is stored: count, bytes, pixels,
format; a caption's image, encoding and length.

Pure functions of the bytes and the settings; each refusal names the image, the limit and the
setting that holds it, so "why was my upload refused" has one answer.
"""

from __future__ import annotations

import hashlib
import io
import posixpath
import warnings
from dataclasses import dataclass, replace

from PIL import Image

from loramill.errors import InvalidInput
from loramill.gateway.api.errors import PayloadTooLarge
from loramill.gateway.settings import GatewaySettings

# what PIL calls them -> the extension stored (the worker reads any of these)
FORMATS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}
# kohya's sidecar names: photo1.png + photo1.txt (or photo1.caption)
CAPTION_SUFFIXES = (".txt", ".caption")
# A caption is one line of prose: CLIP reads 77 tokens and T5 512 (~2,000 characters); a longer "caption"
# is a pasted file by mistake. 4 bytes per character is UTF-8's worst case (read at most that much).
MAX_CAPTION_CHARS = 2000
MAX_CAPTION_BYTES = 4 * MAX_CAPTION_CHARS


@dataclass(frozen=True)
class CheckedImage:
    """An upload that passed every check, with the name it is stored under."""

    data: bytes
    extension: str
    width: int
    height: int
    caption: str | None = None  # stored beside the image as .txt (domain.keys.caption_key)

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


def attach_captions(images: list[CheckedImage], image_names: list[str | None],
                    captions: list[tuple[str | None, bytes]]) -> list[CheckedImage]:
    """``images`` with each uploaded caption (``(filename, bytes)``) attached to the image whose file name
    has the same stem (``star1.png`` + ``star1.txt``); every refusal names ``captions[i]`` and its file."""
    # 1. Count: one caption per image at most
    if len(captions) > len(images):
        raise InvalidInput(f"captions: {len(captions)} caption files sent for {len(images)} uploaded images; send "
                           "at most one caption per image, named like it (star1.png + star1.txt)",
                           code="too_many_captions", field="captions")
    # 2. Which image each stem names (two images sharing a stem would make a caption ambiguous)
    by_stem: dict[str, int] = {}
    for i, name in enumerate(image_names):
        if name:
            by_stem.setdefault(posixpath.splitext(posixpath.basename(name))[0], i)
    attached: dict[int, str] = {}
    for j, (filename, data) in enumerate(captions):
        where, field = f"captions[{j}]" + (f" ({filename})" if filename else ""), f"captions[{j}]"
        # 3. The name says which image it belongs to
        stem, suffix = posixpath.splitext(posixpath.basename(filename or ""))
        if suffix.lower() not in CAPTION_SUFFIXES:
            raise InvalidInput(f"{where}: a caption file is named like its image with .txt or .caption "
                               "(star1.png + star1.txt)", code="invalid_caption", field=field)
        if stem not in by_stem:
            names = ", ".join(n for n in image_names if n) or "none had a file name"
            raise InvalidInput(f"{where}: no uploaded image is named {stem}.* (images: {names}); name each caption "
                               "like its image", code="caption_without_image", field=field)
        index = by_stem[stem]
        if index in attached:
            raise InvalidInput(f"{where}: a second caption for {image_names[index]}; send one per image",
                               code="invalid_caption", field=field)
        # 4. Text within the length limit (bytes first: the route reads at most one byte over), UTF-8
        #    (a BOM is allowed)
        try:
            text = data.decode("utf-8-sig") if len(data) <= MAX_CAPTION_BYTES else None
        except UnicodeDecodeError:
            raise InvalidInput(f"{where} is not UTF-8 text; save it as UTF-8", code="invalid_caption",
                               field=field) from None
        if text is None or len(text) > MAX_CAPTION_CHARS:
            size = f"over {MAX_CAPTION_BYTES} bytes" if text is None else f"{len(text)} characters"
            raise InvalidInput(f"{where} is {size}; a caption is at most {MAX_CAPTION_CHARS} characters; "
                               "shorten it", code="caption_too_long", field=field)
        attached[index] = text.strip()
    # 5. An empty caption is no caption (the dataset step captions that image itself)
    return [replace(image, caption=attached.get(i) or None) for i, image in enumerate(images)]
