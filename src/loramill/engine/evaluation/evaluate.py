"""``Evaluator``: fidelity, preservation and loss of the LoRA in a pipeline, measured the same way every time.

Built once per LoRA run (or per ``loramill evaluate``): it reads the references, embeds them and renders
the base model's images once; each ``evaluate()`` then renders the same prompts with the same seeds
with the LoRA as it is now and compares. Metrics are one flat dict of floats (names in ``selection.METRICS``):

- fidelity: ``clip`` (CLIP image similarity of trigger renders to the references), ``classifier`` (share
  of trigger renders the domain's scorer reads as the references' concept), ``face`` (share of trigger
  renders that are the references' person, for ``subject="face"``); each with its ``*_base`` twin, the
  same prompts without the LoRA;
- preservation: ``divergence`` (denoiser, fixed draws, no renders), ``preservation_pixel``,
  ``preservation_clip`` and ``preservation_classifier`` on prompts without the trigger;
- ``loss_heldout`` (images the run did not train on) or ``loss_train`` (too few images to hold any out).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from loramill.engine.evaluation import adherence
from loramill.engine.evaluation.clip import ClipEncoder, mean_similarity
from loramill.engine.evaluation.loss import denoising_loss_of
from loramill.engine.evaluation.preservation import (
    DEFAULT_PROMPTS,
    clip_similarity,
    denoiser_divergence,
    pixel_similarity,
)
from loramill.engine.evaluation.sampling import RenderSettings, lora_disabled, render
from loramill.engine.families.base import FamilyModule
from loramill.engine.training.data import Example
from loramill.errors import InvalidInput


@dataclass
class EvalConfig:
    """What to measure. ``prompts`` call the subject (they hold the trigger); ``preservation_prompts`` do not."""

    prompts: list[str]
    references: list[Path]
    preservation_prompts: list[str] = field(default_factory=lambda: list(DEFAULT_PROMPTS))
    clip: str | None = None  # a CLIPModel folder; None: no CLIP metrics
    subject: str | None = None  # "face": face identity fidelity (needs loramill[faces])
    domain: str | None = None  # "shapes": the reference world's scorer
    render: RenderSettings = field(default_factory=RenderSettings)
    loss_examples: list[Example] = field(default_factory=list)
    loss_heldout: bool = False  # loss_examples were held out of training
    loss_draws: int = 4
    divergence_draws: int = 2

    def __post_init__(self) -> None:
        if not self.prompts:
            raise InvalidInput("evaluation needs at least one prompt with the trigger word", field="prompts")
        if not self.references:
            raise InvalidInput("evaluation needs reference images (--references)", field="references")


@dataclass
class Evaluation:
    """One evaluation: the metrics, and the renders with the LoRA (trigger prompts, then preservation ones)."""

    metrics: dict[str, float]
    renders: list[Image.Image]
    base_renders: list[Image.Image]


class Evaluator:
    """Measures the LoRA currently in ``pipe`` against fixed references, base renders and draws."""

    def __init__(self, pipe: Any, family: FamilyModule, config: EvalConfig, clip: ClipEncoder | None = None) -> None:
        self.pipe, self.family, self.config = pipe, family, config
        # 1. References: their pixels, CLIP embeddings, face embeddings and the scorer's reading.
        self.references = [Image.open(p).convert("RGB") for p in config.references]
        self.clip = clip or (ClipEncoder.load(config.clip) if config.clip else None)
        self.ref_clip = self.clip.embed_images(self.references) if self.clip else None
        self.ref_face = face_centre(self.references) if config.subject == "face" else None
        self.score = adherence.load_scorer(config.domain) if config.domain else None
        self.concept = adherence.concept_of([self.score(im) for im in self.references]) if self.score else {}
        self.domain_specs = ([spec for _caption, spec in adherence.domain_prompts(config.domain)]
                             if config.domain else [])
        # a domain brings its own trigger-free prompts: every base concept, which its scorer can check
        self.keep_prompts = ([spec.caption for spec in self.domain_specs] if config.domain
                             else list(config.preservation_prompts))
        self._base: dict[str, Any] | None = None

    def baseline(self) -> dict[str, Any]:
        """The base model's renders and scores, once (the LoRA switched off)."""
        if self._base is None:
            with lora_disabled(self.pipe):
                trigger = render(self.pipe, self.family, self.config.prompts, self.config.render)
                keep = render(self.pipe, self.family, self.keep_prompts, self.config.render)
            self._base = {"trigger": trigger, "keep": keep, "fidelity": self._fidelity(trigger),
                          "keep_clip": self.clip.embed_images(keep) if self.clip else None}
            if self.score is not None:
                self._base["keep_classifier"] = self._spec_rate(keep)
        return self._base

    def evaluate(self) -> Evaluation:
        """Render, score and measure the LoRA as it is now in the pipeline."""
        config = self.config
        base = self.baseline()
        was_training = _set_eval(self.pipe)
        try:
            # 1. Renders with the LoRA: the trigger prompts and the prompts it should leave alone.
            trigger = render(self.pipe, self.family, config.prompts, config.render)
            keep = render(self.pipe, self.family, self.keep_prompts, config.render)
            # 2. Fidelity, with the base model's value beside each.
            metrics = self._fidelity(trigger)
            metrics.update({f"{k}_base": v for k, v in base["fidelity"].items()})
            # 3. Preservation: the denoiser on fixed draws, then the renders against the base's.
            metrics["divergence"] = denoiser_divergence(self.pipe, self.family, self.keep_prompts,
                                                        side=config.render.side, draws=config.divergence_draws)
            metrics["preservation_pixel"] = pixel_similarity(base["keep"], keep)
            if self.clip is not None:
                metrics["preservation_clip"] = clip_similarity(self.clip, base["keep"], keep)
            if self.score is not None:
                metrics["preservation_classifier"] = self._spec_rate(keep)
                metrics["preservation_classifier_base"] = base["keep_classifier"]
            # 4. Denoising loss on fixed draws: held-out images when the run kept some back.
            if config.loss_examples:
                name = "loss_heldout" if config.loss_heldout else "loss_train"
                metrics[name] = denoising_loss_of(self.pipe, self.family, config.loss_examples,
                                                  draws=config.loss_draws)
        finally:
            _restore_training(was_training)
        return Evaluation({k: round(float(v), 6) for k, v in metrics.items()}, trigger + keep,
                          base["trigger"] + base["keep"])

    def _fidelity(self, images: list[Image.Image]) -> dict[str, float]:
        metrics: dict[str, float] = {}
        if self.clip is not None and self.ref_clip is not None:
            metrics["clip"] = mean_similarity(self.clip.embed_images(images), self.ref_clip)
        if self.score is not None:
            metrics["classifier"] = adherence.concept_rate([self.score(im) for im in images], self.concept)
        if self.ref_face is not None:
            metrics["face"] = face_rate(images, self.ref_face)
        return metrics

    def _spec_rate(self, images: list[Image.Image]) -> float:
        assert self.score is not None
        seeds = len(self.config.render.seeds)
        specs = [spec for spec in self.domain_specs for _ in range(seeds)]
        return adherence.spec_rate([self.score(im) for im in images], specs)


def face_centre(references: list[Image.Image]) -> np.ndarray:
    """The mean identity embedding of the faces in ``references`` (an error when none has a face)."""
    from loramill.engine.evaluation.faces import face_embedding

    found = [e for e in (face_embedding(im) for im in references) if e is not None]
    if not found:
        raise InvalidInput("subject=face: no face found in any reference image; give photos where the face is "
                           "clearly visible", code="invalid_references", field="references")
    return np.mean(found, axis=0)


def face_rate(images: list[Image.Image], centre: np.ndarray) -> float:
    """Share of images whose face is the references' person (a render without a face counts as a miss)."""
    from loramill.engine.evaluation.faces import SAME_PERSON_DISTANCE, face_distance, face_embedding

    hits = 0
    for image in images:
        embedding = face_embedding(image)
        hits += embedding is not None and face_distance(embedding, centre) < SAME_PERSON_DISTANCE
    return hits / len(images)


def _set_eval(pipe: Any) -> list[torch.nn.Module]:
    # training leaves its modules in train mode; dropout there would make renders depend on the step
    training = [m for m in getattr(pipe, "components", {}).values() if isinstance(m, torch.nn.Module) and m.training]
    for module in training:
        module.eval()
    return training


def _restore_training(modules: list[torch.nn.Module]) -> None:
    for module in modules:
        module.train()


MAX_PROMPTS = 4  # trigger prompts rendered per evaluation: the references' captions, the most frequent first


def config_from_references(references: list[Example], *, loss_examples: list[Example] | None = None,
                           loss_heldout: bool = False, **options: Any) -> EvalConfig:
    """An ``EvalConfig`` whose trigger prompts are the references' own captions (which hold the trigger)."""
    counts: dict[str, int] = {}
    for example in references:
        counts[example.caption] = counts.get(example.caption, 0) + 1
    prompts = sorted(counts, key=lambda c: (-counts[c], c))[:MAX_PROMPTS]
    return EvalConfig(prompts=prompts, references=[e.image_path for e in references],
                      loss_examples=list(references if loss_examples is None else loss_examples),
                      loss_heldout=loss_heldout, **options)
