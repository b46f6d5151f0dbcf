"""A1111's ``<lora:name:weight>`` prompt tags: found, resolved against a folder, removed before encoding."""

from __future__ import annotations

import re
from pathlib import Path

from loramill.errors import InvalidInput

_TAG = re.compile(r"<lora:([^:>]+)(?::([^>]*))?>")


def extract_lora_tags(prompt: str) -> tuple[str, list[tuple[str, float]]]:
    """Split ``prompt`` into the text to encode and the (name, weight) of each tag (default weight 1.0)."""
    tags: list[tuple[str, float]] = []
    for name, weight in _TAG.findall(prompt):
        try:
            value = float(weight) if weight.strip() else 1.0
        except ValueError as exc:
            raise InvalidInput(f"prompt: tag <lora:{name}:{weight}> has a weight that is not a number; "
                               "write e.g. <lora:name:0.8>", field="prompt") from exc
        tags.append((name.strip(), value))
    text = re.sub(r"\s{2,}", " ", _TAG.sub("", prompt)).strip(" ,")
    return text, tags


def resolve_tag(name: str, lora_dir: Path | None) -> Path:
    """The file a tag names in ``lora_dir`` (``name.safetensors``, or ``name`` itself)."""
    if lora_dir is None:
        raise InvalidInput(f"prompt: <lora:{name}> names a LoRA file, but no LoRA folder (lora_dir) was given "
                           "to look it up in", field="prompt")
    if "/" in name or "\\" in name or name.startswith("."):
        raise InvalidInput(f"prompt: <lora:{name}> must be a file name inside lora_dir, not a path", field="prompt")
    for candidate in (lora_dir / f"{name}.safetensors", lora_dir / name):
        if candidate.is_file():
            return candidate
    available = sorted(p.stem for p in lora_dir.glob("*.safetensors"))
    raise InvalidInput(f"prompt: <lora:{name}> not found in {lora_dir}; available: {', '.join(available) or 'none'}",
                       code="lora_not_found", field="prompt")
