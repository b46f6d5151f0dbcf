"""Does a LoRA learn? A new concept on the reference world, measured at every evaluation.

The reference SD 1.5 (``loramill models reference sd15``) draws the base colours × circle/square/triangle
it was trained on and has never seen purple. A LoRA is trained on ``IMAGES`` images of purple shapes with
a trigger word that names the colour ("a sks circle on a white background"); every ``EVAL_EVERY`` steps
the run's own evaluation (``engine/evaluation``) measures:

- fidelity: the share of trigger renders the domain's scorer reads as purple (``classifier``), and the
  reference CLIP's similarity of those renders to the training images (``clip``);
- preservation: the share of renders of the 15 base prompts (no trigger) that still show their
  caption with the LoRA loaded (``preservation_classifier``; the base model's own is beside it).

The first concept tried was the star (a new shape): the LoRAs drew star-like blobs that the scorer does
not accept as one colour and one shape (fidelity 0 in the four UNet-only recipes tried, docs/quality.md),
so the new colour is the concept these figures stand on.

Four things come out of it (docs/quality.md): the recipe sweep and its fidelity/preservation frontier,
the rank correlation of CLIP and classifier fidelity over all evaluations, the kohya and diffusers
layouts scoring the same after export and reload, and a deliberately flipped training target failing
the floors the tests assert.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from bench.common import Result, workdir

TRIGGER = "sks"
IMAGES = 5
EVAL_EVERY = 100
CONCEPT = "purple"
# How the training images are captioned: the trigger in place of the new colour, or in front of a caption
# that names it (a word the base's text encoder never saw in training).
SCHEMES = {
    "noun": "a sks {shape} on a {background} background",
    "prefix": "sks, a purple {shape} on a {background} background",
}
# Floors the tests assert (tests/engine/evaluation/test_learning.py), with margin under what the chosen
# recipe reaches here; the bench reports whether each run passes them.
FIDELITY_FLOOR, BASE_MULTIPLE, PRESERVATION_FLOOR = 0.6, 10, 0.85


@dataclass(frozen=True)
class Recipe:
    """One training recipe of the sweep."""

    rank: int = 8
    lr: float = 1e-3
    steps: int = 300
    text_encoder: bool = True
    preserve: float = 1.0  # teacher preservation weight on the base prompts (0: off)
    scheme: str = "noun"
    shapes: tuple[str, ...] = ("circle", "square", "triangle")
    caption_dropout: float = 0.0  # the sweep was measured without it, before 0.1 became loramill's default

    @property
    def label(self) -> str:
        te = "+te" if self.text_encoder else ""
        keep = f" keep{self.preserve:g}" if self.preserve else ""
        drop = f" cd{self.caption_dropout:g}" if self.caption_dropout else ""
        return f"r{self.rank} lr{self.lr:g} {self.steps}st{te}{keep}{drop} {self.scheme} {len(self.shapes)}sh"


# The best point of the sweep on this machine (docs/quality.md): the text encoder learns what the new word
# means, teacher preservation on the base prompts keeps the rest of the model where it was.
CENTRE = Recipe()
# One change at a time around the centre; the steps axis comes from each run's own evaluations (every
# EVAL_EVERY steps), and the centre runs twice as long to extend it.
SWEEP = [
    replace(CENTRE, steps=2 * CENTRE.steps),
    replace(CENTRE, preserve=0.0),
    replace(CENTRE, text_encoder=False),
    replace(CENTRE, text_encoder=False, preserve=0.0),
    replace(CENTRE, lr=2e-3),
    replace(CENTRE, rank=4), replace(CENTRE, rank=16),
    replace(CENTRE, scheme="prefix"),
    replace(CENTRE, shapes=("circle",)),
    # the evidence for caption_dropout's default (docs/quality.md, "Caption dropout by default")
    replace(CENTRE, caption_dropout=0.1),
    replace(CENTRE, preserve=0.0, caption_dropout=0.1),
]


def reference_models(root: Path) -> tuple[Path, Path]:
    """The reference SD 1.5 and CLIP folders, written once under ``root``."""
    from loramill.engine.reference.models import write_reference_model

    model, clip = root / "reference-sd15", root / "reference-clip"
    if not (model / "model_index.json").exists():
        write_reference_model("sd15", model)
    if not (clip / "config.json").exists():
        write_reference_model("clip", clip)
    return model, clip


def concept_images(out: Path, recipe: Recipe, count: int = IMAGES, seed: int = 0) -> Path:
    """``count`` purple images of ``recipe.shapes`` (cycled), white and black grounds, captioned per scheme."""
    import numpy as np

    from loramill.engine.reference.domain import Shape, render

    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        shape = recipe.shapes[i % len(recipe.shapes)]
        background = ("white", "black")[i % 2]
        radius = float(rng.uniform(12, 17))
        x, y = (float(v) for v in rng.uniform(radius + 3, 64 - radius - 3, size=2))
        render(Shape(CONCEPT, shape, background, x=x, y=y, radius=radius)).save(out / f"{i}.png")
        (out / f"{i}.txt").write_text(SCHEMES[recipe.scheme].format(shape=shape, background=background))
    return out


def train_recipe(model: Path, clip: Path, recipe: Recipe, work: Path, **overrides: Any) -> dict[str, Any]:
    """Train ``recipe`` with evaluation every ``EVAL_EVERY`` steps; the final metrics, history and time."""
    from loramill.engine.reference.domain import base_captions
    from loramill.engine.training.config import TrainConfig
    from loramill.engine.training.run import train

    images = concept_images(work / "images", recipe)
    values: dict[str, Any] = dict(
        model=str(model), images=str(images), trigger=TRIGGER, out=str(work / "lora.safetensors"), resolution=64,
        rank=recipe.rank, lr=recipe.lr, max_steps=recipe.steps, train_text_encoder=recipe.text_encoder, seed=0,
        eval_every=EVAL_EVERY, clip_model=str(clip), eval_domain="shapes", prepare="never",
        caption_dropout=recipe.caption_dropout)
    if recipe.preserve:
        values.update(preserve_weight=recipe.preserve, preserve_prompts=base_captions())
    values.update(overrides)
    started = time.perf_counter()
    result = train(TrainConfig(**values))
    seconds = time.perf_counter() - started
    history = [json.loads(line) for line in (work / "lora.run" / "metrics.jsonl").read_text().splitlines()]
    evaluations = [{"step": h["step"], **h["eval"]} for h in history if "eval" in h]
    return {"recipe": asdict(recipe), "label": recipe.label, "seconds": round(seconds, 1),
            "final": evaluations[-1] if evaluations else None, "evaluations": evaluations,
            "lora": str(result.lora_path)}


def passes_floors(final: dict[str, float]) -> bool:
    fidelity, base = final["classifier"], final["classifier_base"]
    return (fidelity >= FIDELITY_FLOOR and fidelity >= BASE_MULTIPLE * base
            and final["preservation_classifier"] >= PRESERVATION_FLOOR)


def points(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every evaluation of every run as a recipe point (its steps are the evaluation's step)."""
    return [{"label": replace(Recipe(**{**r["recipe"], "shapes": tuple(r["recipe"]["shapes"])}),
                              steps=e["step"]).label, "fidelity": e["classifier"],
             "preservation": e["preservation_classifier"], "clip": e["clip"], "seconds": r["seconds"]}
            for r in runs for e in r["evaluations"]]


def frontier(found: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The points no other point beats on both fidelity and preservation (the Pareto front), by fidelity."""
    front = [p for p in found if not any(q["fidelity"] >= p["fidelity"] and q["preservation"] >= p["preservation"]
                                         and (q["fidelity"] > p["fidelity"] or q["preservation"] > p["preservation"])
                                         for q in found)]
    return sorted(front, key=lambda p: -p["fidelity"])


def spearman(xs: list[float], ys: list[float]) -> float:
    """Spearman's rank correlation (ties get their mean rank)."""
    def ranks(values: list[float]) -> list[float]:
        order = sorted(range(len(values)), key=values.__getitem__)
        out = [0.0] * len(values)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
                j += 1
            for k in range(i, j + 1):
                out[order[k]] = (i + j) / 2
            i = j + 1
        return out

    rx, ry = ranks(xs), ranks(ys)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    var = (sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry)) ** 0.5
    return cov / var if var else float("nan")


@contextmanager
def flipped_target(family_name: str = "sd15"):  # type: ignore[no-untyped-def]
    """A test double of the family whose training target has the wrong sign (the bug the floors must catch)."""
    from loramill.engine.families import get_family

    family: Any = get_family(family_name)
    original = family.add_noise  # training_target and the training objective both draw through it

    def broken(*args: Any, **kwargs: Any) -> Any:
        noised = original(*args, **kwargs)
        return replace(noised, target=-noised.target)

    family.add_noise = broken
    try:
        yield
    finally:
        family.add_noise = original


def judge(model: Path, clip: Path, lora: Path, images: Path) -> dict[str, float]:
    """Evaluate a finished LoRA file loaded on the (unquantised) base: what a training run's evaluation reports."""
    from loramill.engine.evaluation.evaluate import Evaluator, config_from_references
    from loramill.engine.evaluation.sampling import RenderSettings
    from loramill.engine.families import get_family
    from loramill.engine.training.data import load_examples

    family = get_family("sd15")
    pipe = family.load_pipeline(str(model))
    pipe.load_lora_weights(str(lora))
    references = load_examples(str(images), trigger=TRIGGER, resolution=64, multiple=8)
    config = config_from_references(references, clip=str(clip), domain="shapes",
                                    render=RenderSettings(steps=20, side=64, seeds=(0, 1)))
    return dict(Evaluator(pipe, family, config).evaluate().metrics)


def layouts_agree(model: Path, clip: Path, recipe: Recipe, work: Path) -> dict[str, Any]:
    """Train once per layout (same seed, same weights), evaluate each file after reload: the scores match."""
    scores, seconds = {}, []
    for layout in ("kohya", "diffusers"):
        run = train_recipe(model, clip, recipe, work / layout, format=layout, eval_every=0)
        seconds.append(run["seconds"])
        scores[layout] = judge(model, clip, Path(run["lora"]), work / layout / "images")
    diff = max(abs(scores["kohya"][k] - scores["diffusers"][k]) for k in scores["kohya"])
    return {"kohya": scores["kohya"], "diffusers": scores["diffusers"], "max_abs_difference": diff,
            "seconds": min(seconds)}


def quantized_fidelity(model: Path, clip: Path, work: Path, recipe: Recipe = CENTRE) -> Result:
    """The centre recipe on an int8 frozen base (``quantize_base="int8"``, QLoRA) against the same recipe on the
    unquantised base, same seed; each LoRA judged loaded on the unquantised base. Issue 14's target: int8
    keeps ≥ 95% of the unquantised fidelity."""
    judged, seconds = {}, {}
    for name, extra in (("fp32", {}), ("int8", {"quantize_base": "int8"})):
        run = train_recipe(model, clip, recipe, work / name, eval_every=0, **extra)
        judged[name], seconds[name] = judge(model, clip, Path(run["lora"]), work / name / "images"), run["seconds"]
    plain, int8 = judged["fp32"]["classifier"], judged["int8"]["classifier"]
    ratio = round(int8 / plain, 3) if plain else None
    return Result("new concept on an int8 base (QLoRA) vs unquantised", "fidelity (classifier) of the LoRA",
                  plain, int8, ratio, ">= 0.95 of unquantised", bool(ratio and ratio >= 0.95),
                  "make bench BENCH=lora_quality", details={"judged": judged, "seconds": seconds})


def run(quick: bool = False) -> list[Result]:
    root = workdir("lora_quality")
    model, clip = reference_models(root)
    command = "make bench BENCH=lora_quality"
    # 1. The sweep (one change at a time around the centre recipe).
    sweep = SWEEP[:3] if quick else SWEEP
    runs = [train_recipe(model, clip, recipe, root / "sweep" / recipe.label.replace(" ", "_")) for recipe in sweep]
    found = points(runs)
    front = frontier(found)
    # 2. CLIP vs classifier fidelity over every evaluation of every run.
    rho = spearman([p["clip"] for p in found], [p["fidelity"] for p in found])
    # 3. The same recipe with the training target's sign flipped.
    with flipped_target():
        broken = train_recipe(model, clip, CENTRE, root / "flipped")
    # 4. Both layouts after export and reload.
    layouts = layouts_agree(model, clip, CENTRE, root / "layouts")
    # 5. The same recipe on an int8 frozen base.
    quantized = quantized_fidelity(model, clip, root / "quantized")
    # the centre recipe is the long run's evaluation at CENTRE.steps; its time without evaluation is the
    # layouts check's (the same recipe, eval_every=0)
    centre = {"label": CENTRE.label, "seconds": layouts["seconds"],
              "final": next(e for e in runs[0]["evaluations"] if e["step"] == CENTRE.steps)}
    results = [
        Result("new concept: fidelity (classifier)", "share of trigger renders read as purple",
               centre["final"]["classifier_base"], centre["final"]["classifier"], None,
               f">= {FIDELITY_FLOOR} and >= {BASE_MULTIPLE}x base", passes_floors(centre["final"]), command,
               details={"recipe": centre["label"], "seconds": centre["seconds"], "final": centre["final"]}),
        Result("new concept: preservation (classifier)", "share of base prompts still drawn right with the LoRA",
               centre["final"]["preservation_classifier_base"], centre["final"]["preservation_classifier"], None,
               f">= {PRESERVATION_FLOOR}", centre["final"]["preservation_classifier"] >= PRESERVATION_FLOOR, command),
        Result("recipe sweep: frontier", "points on the fidelity/preservation front", None, float(len(front)), None,
               "-", None, command, details={"frontier": front, "points": found}),
        Result("CLIP vs classifier fidelity", "Spearman rank correlation over evaluations", None, round(rho, 3),
               None, "> 0.5", rho > 0.5, command, details={"points": len(found)}),
        Result("flipped training target", "fidelity (classifier) of the broken run", None,
               broken["final"]["classifier"], None, "fails the floors", not passes_floors(broken["final"]), command,
               details={"final": broken["final"]}),
        Result("kohya vs diffusers layout", "largest metric difference after reload", None,
               layouts["max_abs_difference"], None, "< 1e-3", layouts["max_abs_difference"] < 1e-3, command,
               details=layouts),
        quantized,
    ]
    (root / "report.json").write_text(json.dumps({"runs": runs, "broken": broken, "layouts": layouts,
                                                  "frontier": front, "spearman": rho}, indent=2))
    return results
