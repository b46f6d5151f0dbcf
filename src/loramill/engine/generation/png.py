"""PNG files that carry their generation parameters, A1111-style, in a ``parameters`` text chunk."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from PIL import Image
from PIL.PngImagePlugin import PngInfo


def parameters_text(prompt: str, negative_prompt: str, settings: dict[str, Any]) -> str:
    """``prompt\\nNegative prompt: …\\nSteps: 30, CFG scale: 7.5, Seed: 1, …`` as A1111 writes it."""
    lines = [prompt]
    if negative_prompt:
        lines.append(f"Negative prompt: {negative_prompt}")
    lines.append(", ".join(f"{k}: {v}" for k, v in settings.items() if v not in (None, "")))
    return "\n".join(lines)


def save_png(image: Image.Image, path: Path, parameters: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(image, parameters))
    return path


def png_bytes(image: Image.Image, parameters: str) -> bytes:
    """The PNG of ``image`` with its ``parameters`` chunk, in memory (a worker uploads it as it is)."""
    info = PngInfo()
    info.add_text("parameters", parameters)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()
