"""PNG files that carry their generation parameters, A1111-style, in a ``parameters`` text chunk."""

from __future__ import annotations

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
    info = PngInfo()
    info.add_text("parameters", parameters)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, pnginfo=info)
    return path
