"""Model families, dispatched through one table: adding a family is its module plus one line in ``FAMILIES``.

Everything else about a family (pipeline class, default size, kohya facts, how its LoRA keys look) is
read from its module, so no other table names the families.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from loramill.errors import InvalidInput

if TYPE_CHECKING:  # the family modules import torch; the names above do not need it
    from loramill.engine.families.base import FamilyModule

FAMILIES: dict[str, str] = {
    "sd15": "loramill.engine.families.sd15",
    "sdxl": "loramill.engine.families.sdxl",
    "flux": "loramill.engine.families.flux",
    "wuerstchen": "loramill.engine.families.wuerstchen",
}


def get_family(name: str) -> FamilyModule:
    """The family module for ``name``; an unknown name lists the supported ones."""
    if name not in FAMILIES:
        raise InvalidInput(f"unknown model family {name!r}; supported: {', '.join(FAMILIES)}",
                           code="unknown_family", field="family")
    module: Any = importlib.import_module(FAMILIES[name])
    return module


def detect_family(source: str, hint: str | None = None) -> str | None:
    """The family of a model: ``hint`` if given, else from its model_index.json; ``None`` if other/unknown.

    A folder of another diffusers pipeline (Stable Cascade, PixArt, …) returns ``None``: it can generate
    through diffusers' auto pipelines but not train here.
    """
    if hint:
        get_family(hint)
        return hint
    from loramill.engine.families.base import pipeline_class_of

    cls = pipeline_class_of(source)
    if cls is None:
        lowered = source.lower()
        for key, name in (("xl", "sdxl"), ("flux", "flux")):
            if key in lowered:
                return name
        return "sd15" if lowered.endswith((".safetensors", ".ckpt")) else None
    return next((name for name in FAMILIES if get_family(name).PIPELINE_CLASS == cls), None)


def family_of_lora_keys(keys: set[str]) -> str | None:
    """The family whose module claims a LoRA's tensor names, or ``None`` (metadata is preferred when present)."""
    return next((name for name in FAMILIES if get_family(name).claims_lora_keys(keys)), None)
