"""Classifier scores for a domain with a deterministic scorer: does an image show what was asked?

The reference world (``loramill models reference``) ships such a scorer for its coloured shapes; it
reads colour, shape, texture and background, and refuses garbage through a validity gate. With it,
fidelity is "the share of trigger renders that show the references' concept" and preservation "the
share of renders of the base prompts that still show what their caption says".
"""

from __future__ import annotations

import importlib
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from PIL import Image

from loramill.errors import DependencyMissing, InvalidInput

# domain name -> the module whose ``score(image)`` reads an image of that domain
DOMAINS: dict[str, str] = {"shapes": "loramill.engine.reference.scorer"}
CONCEPT_FIELDS = ("colour", "shape", "texture")
CONCEPT_AGREEMENT = 0.8  # a field is part of the concept when this share of the references agree on it


def load_scorer(domain: str) -> Callable[[Image.Image], Any]:
    """The ``score`` function of ``domain``; an unknown name lists the known ones."""
    if domain not in DOMAINS:
        raise InvalidInput(f"--domain {domain!r}: unknown; choose one of: {', '.join(DOMAINS)}",
                           code="invalid_option", field="domain")
    try:
        module = importlib.import_module(DOMAINS[domain])
    except ImportError as exc:
        raise DependencyMissing(f"--domain {domain}: its scorer ({DOMAINS[domain]}) is not in this install; "
                                "update loramill") from exc
    return module.score


def domain_prompts(domain: str) -> list[tuple[str, Any]]:
    """(caption, spec) for every base concept of ``domain`` once, centred on white: preservation's prompts."""
    load_scorer(domain)
    shapes: Any = importlib.import_module("loramill.engine.reference.domain")

    specs = [shapes.Shape(colour=c, shape=s) for c in shapes.BASE_COLOURS for s in shapes.BASE_SHAPES]
    return [(spec.caption, spec) for spec in specs]


def concept_of(scores: Sequence[Any], fields: Sequence[str] = CONCEPT_FIELDS) -> dict[str, str]:
    """The fields the valid reference scores agree on (≥ ``CONCEPT_AGREEMENT``): what the LoRA should draw."""
    valid = [s for s in scores if s.valid]
    if not valid:
        raise InvalidInput("the scorer read none of the reference images as a valid shape; check --references "
                           "holds images of the domain", code="invalid_references", field="references")
    concept = {}
    for name in fields:
        value, count = Counter(getattr(s, name) for s in valid).most_common(1)[0]
        if count / len(valid) >= CONCEPT_AGREEMENT:
            concept[name] = value
    return concept


def concept_rate(scores: Sequence[Any], concept: dict[str, str]) -> float:
    """The share of images read as valid and showing every field of ``concept``."""
    if not scores:
        raise ValueError("concept_rate needs at least one score")
    hits = sum(1 for s in scores if s.valid and all(getattr(s, k) == v for k, v in concept.items()))
    return hits / len(scores)


def spec_rate(scores: Sequence[Any], specs: Sequence[Any]) -> float:
    """The share of images that show what their spec's caption says (colour, shape, background, texture)."""
    if not scores or len(scores) != len(specs):
        raise ValueError("spec_rate needs one spec per score")
    return sum(1 for s, spec in zip(scores, specs) if s.matches(spec)) / len(scores)
