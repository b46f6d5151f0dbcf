"""Model families, dispatched through one table: adding a family is adding one module here."""

from __future__ import annotations

import importlib
from typing import Any

from loramill.engine.families.base import FamilyModule, pipeline_class_of
from loramill.errors import InvalidInput

FAMILIES: dict[str, str] = {
    "sd15": "loramill.engine.families.sd15",
    "sdxl": "loramill.engine.families.sdxl",
    "flux": "loramill.engine.families.flux",
}
# The diffusers pipeline class written in a folder's model_index.json, per family.
_BY_PIPELINE = {"StableDiffusionPipeline": "sd15", "StableDiffusionXLPipeline": "sdxl", "FluxPipeline": "flux"}


def get_family(name: str) -> FamilyModule:
    """The family module for ``name``; an unknown name lists the supported ones."""
    if name not in FAMILIES:
        raise InvalidInput(f"unknown model family {name!r}; supported: {', '.join(FAMILIES)}",
                           code="unknown_family", field="family")
    module: Any = importlib.import_module(FAMILIES[name])
    return module


def detect_family(source: str, hint: str | None = None) -> str | None:
    """The family of a model: ``hint`` if given, else from its model_index.json; ``None`` if other/unknown.

    A folder of another diffusers pipeline (Würstchen, Stable Cascade, …) returns ``None``: it can
    generate through diffusers' auto pipelines but not train here.
    """
    if hint:
        get_family(hint)
        return hint
    cls = pipeline_class_of(source)
    if cls is None:
        lowered = source.lower()
        for key, name in (("xl", "sdxl"), ("flux", "flux")):
            if key in lowered:
                return name
        return "sd15" if lowered.endswith((".safetensors", ".ckpt")) else None
    return _BY_PIPELINE.get(cls)
