"""Forgetting and the training recipe on the reference world (issue 13), per shipped family, in one run.

Concept A is a new colour: ``sks`` = purple, which the base models never saw, on the base shapes ("a sks
circle on a white background"). Concept B is a new word: ``zwx`` = blue ("a zwx square on a black
background"), a name the base never learned for a colour it draws. (A new shape was the first choice for B,
but the star never read as a star after 300–1,000 steps at ranks 8–16, and shapes moved to a corner never
left the centre: this tiny UNet learns colours from a LoRA, not geometry. The striped texture was the first
choice for A, but the reference VAE does not reproduce stripes: 0.7% of striped reconstructions read
right, docs/quality.md.) Measured with the reference world's scorer:

- fidelity A: share of ``"a sks {shape} on a {background} background"`` renders read as a purple {shape};
- fidelity B: share of ``"a zwx {shape} on a {background} background"`` renders read as a blue {shape};
- base adherence: share of base prompts (every base colour × shape) rendered as their caption says;
- bleed: A's prompts drawn blue, and B's drawn purple.

Every run keeps the base captions with teacher preservation (the recipe bench/lora_quality.py chose), so
base adherence measures what continuing costs, not what any LoRA costs. Runs, same seeds: A alone; B
alone; A then B continued without protecting A (forgetting reproduced); A then B with teacher
preservation on A's prompts too (the LoRA continued from as the teacher), the same with caption dropout
(the feature that helped B most) and then also with the UNet at a tenth of the text encoder's rate, with
replay of A's images, and with teacher and replay (forgetting prevented: A keeps ≥ 90% of its fidelity, B
reaches ≥ 90% of B alone, adherence ≥ 95% of the base's); A and B in one run with two triggers, as is
and with caption dropout over twice the steps (each concept's epochs of its run alone: no bleed, each
trigger drawn in the other's colour ≤ 10%); and each recipe feature on B vs B alone.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import Result, workdir

FAMILIES = ("sd15", "flux")
STYLE, SHAPE = "sks", "zwx"  # the triggers of A (purple) and B (blue)
A_COLOUR, B_COLOUR = "purple", "blue"
TARGET_KEEP, TARGET_ADHERENCE = 0.9, 0.95
COMMAND = "make bench BENCH=recipe"


@dataclass
class Plan:
    steps: int = 600
    images: int = 12
    # Four seeds: at two, the 30 base renders moved adherence by 3.3 points an image, more than the
    # 95%-of-base bar leaves (0.93 → 0.884 is 1.4 images)
    seeds: tuple[int, ...] = (0, 1, 2, 3)
    render_steps: int = 20
    lr: float = 1e-3
    rank: int = 8
    preserve_weight: float = 1.0  # teacher preservation of the base captions, in every run
    # the new-concept recipe of bench/lora_quality.py: a word the base never learned needs the text encoder
    text_encoder: bool = True


def datasets(root: Path) -> dict[str, Path]:
    """A: purple base shapes captioned "a sks circle …"; B: blue base shapes captioned "a zwx circle …"."""
    from dataclasses import replace

    from loramill.engine.reference import domain

    out = {}
    for name in ("A", "B"):
        folder = root / f"concept-{name}"
        if not (folder / "done").exists():
            folder.mkdir(parents=True, exist_ok=True)
            specs = domain.specs_for("base", 12, seed=100 + ord(name))
            for i, spec in enumerate(specs):
                background = ("white", "black")[i % 2]
                colour, trigger = (A_COLOUR, STYLE) if name == "A" else (B_COLOUR, SHAPE)
                spec = replace(spec, colour=colour, background=background)
                text = _caption(trigger, spec.shape, background)
                domain.render(spec).save(folder / f"{i:03d}.png")
                (folder / f"{i:03d}.txt").write_text(text)
            (folder / "done").write_text("")
        out[name] = folder
    return out


def prompts(concept: str) -> list[Any]:
    """(prompt, spec the prompt describes) for a concept's fidelity renders."""
    from loramill.engine.reference import domain

    colour, trigger = (A_COLOUR, STYLE) if concept == "A" else (B_COLOUR, SHAPE)
    return [(_caption(trigger, s, b), domain.Shape(colour, s, b))
            for s in domain.BASE_SHAPES for b in ("white", "black")]


def _caption(trigger: str, shape: str, background: str) -> str:
    """The domain's caption with the trigger in the colour's place: "a sks circle on a white background"."""
    return f"a {trigger} {shape} on a {background} background"


def render(pipe: Any, family: Any, texts: list[str], plan: Plan) -> list[Any]:
    import torch

    from loramill.engine.reference.domain import SIZE

    images = []
    for seed in plan.seeds:
        # pipe: FLUX.1 pads T5 prompts to the length its tokenizer declares (32 here; 512 without the pipe,
        # which drew the reference FLUX.1's base prompts right 12% of the time instead of 90%)
        kwargs = family.generation_kwargs(prompt=texts, negative_prompt="", steps=plan.render_steps,
                                          guidance=family.DEFAULT_GUIDANCE, width=SIZE, height=SIZE, num_images=1,
                                          generator=[torch.Generator().manual_seed(seed) for _ in texts], pipe=pipe)
        images += pipe(**kwargs).images
    return images


def adherence(pipe: Any, family: Any, plan: Plan) -> float:
    """Share of base prompts (every base colour × shape; white background on even seeds, black on odd)
    rendered as their caption says, by the reference scorer."""
    from loramill.engine.reference.adherence import base_prompts
    from loramill.engine.reference.scorer import score

    hits = total = 0
    for seed in plan.seeds:
        specs = [spec for spec, _ in base_prompts([seed])]
        images = render(pipe, family, [spec.caption for spec in specs], Plan(**{**plan.__dict__, "seeds": (seed,)}))
        hits += sum(score(im).matches(spec) for spec, im in zip(specs, images))
        total += len(specs)
    return hits / total


def measure(pipe: Any, family_name: str, lora: Path | list[Path] | None, plan: Plan) -> dict[str, float]:
    """Fidelity of A and B, bleed, and base adherence with ``lora`` (None: the base model; a list: those
    LoRAs composed, each at weight 1)."""
    from loramill.engine.families import get_family
    from loramill.engine.reference.scorer import score

    family = get_family(family_name)
    loras = [] if lora is None else lora if isinstance(lora, list) else [lora]
    for i, path in enumerate(loras):
        pipe.load_lora_weights(str(path), adapter_name=f"bench{i}")
    if len(loras) > 1:
        pipe.set_adapters([f"bench{i}" for i in range(len(loras))], [1.0] * len(loras))
    try:
        scored = {}
        for concept in ("A", "B"):
            items = prompts(concept)
            specs = [spec for _, spec in items] * len(plan.seeds)  # render() goes seed by seed
            images = render(pipe, family, [p for p, _ in items], plan)
            scored[concept] = list(zip(specs, [score(im) for im in images], strict=True))
        a, b = scored["A"], scored["B"]
        return {
            "fidelity_A": sum(s.matches(spec) for spec, s in a) / len(a),
            "fidelity_B": sum(s.matches(spec) for spec, s in b) / len(b),
            "bleed_A_blue": sum(s.valid and s.colour == B_COLOUR for _, s in a) / len(a),
            "bleed_B_purple": sum(s.valid and s.colour == A_COLOUR for _, s in b) / len(b),
            "adherence": adherence(pipe, family, plan),
        }
    finally:
        if loras:
            pipe.unload_lora_weights()


def runs(data: dict[str, Path], family: str, plan: Plan) -> dict[str, dict[str, Any]]:
    """Every training of the comparison: name -> options on top of the common ones (``init`` names a run)."""
    data = {name: str(folder) for name, folder in data.items()}  # TrainConfig takes paths as text
    both = [f"{SHAPE}={data['B']}"]
    # What the user asks to keep when continuing: the previous concept's own prompts, beside the base
    # captions every run keeps (``run_family``).
    from loramill.engine.reference.domain import base_captions

    keep = sorted({p.read_text() for p in Path(data["A"]).glob("*.txt")}) + base_captions()
    out: dict[str, dict[str, Any]] = {
        "A": dict(images=data["A"], trigger=STYLE),
        "B": dict(images=data["B"], trigger=SHAPE),
        "A→B": dict(images=data["B"], trigger=SHAPE, init="A"),
        "A→B teacher": dict(images=data["B"], trigger=SHAPE, init="A", preserve_prompts=keep),
        "A→B teacher+dropout": dict(images=data["B"], trigger=SHAPE, init="A", preserve_prompts=keep,
                                    caption_dropout=0.1),
        # the text encoder carries the new word; the UNet, which draws everything else, learns 10× slower
        "A→B teacher+dropout+slow UNet": dict(images=data["B"], trigger=SHAPE, init="A", preserve_prompts=keep,
                                              caption_dropout=0.1, lr=1e-4, text_encoder_lr=1e-3),
        "A→B replay": dict(images=data["B"], trigger=SHAPE, init="A", replay_images=str(data["A"])),
        "A→B teacher+replay": dict(images=data["B"], trigger=SHAPE, init="A", preserve_prompts=keep,
                                   replay_images=str(data["A"])),
        "A+B one run": dict(images=data["A"], trigger=STYLE, concepts=both),
        # Two concepts are twice the images: twice the steps give each as many epochs as it gets alone, and
        # caption dropout (the feature that helped B most) lets each trigger's LoRA learn its word fully.
        "A+B one run, dropout, same epochs": dict(images=data["A"], trigger=STYLE, concepts=both,
                                                  caption_dropout=0.1, max_steps=2 * plan.steps),
        "B ema": dict(images=data["B"], trigger=SHAPE, ema_decay=0.99),
        "B huber": dict(images=data["B"], trigger=SHAPE, loss="huber"),
        "B caption dropout": dict(images=data["B"], trigger=SHAPE, caption_dropout=0.1),
        "B lora+": dict(images=data["B"], trigger=SHAPE, lora_plus_ratio=16.0),
        "B without teacher preservation": dict(images=data["B"], trigger=SHAPE, preserve_weight=0.0),
    }
    if family == "flux":
        # FLUX.1 trains no text encoder here (its LoRA is the transformer's), so there is no text encoder to
        # carry the new word while the denoiser learns slower
        del out["A→B teacher+dropout+slow UNet"]
        out["B logit-normal"] = dict(images=data["B"], trigger=SHAPE, timestep_sampling="logit_normal")
        out["B cosmap"] = dict(images=data["B"], trigger=SHAPE, flow_loss_weighting="cosmap")
    else:
        out["B min-snr 5"] = dict(images=data["B"], trigger=SHAPE, min_snr_gamma=5.0)
    return out


def run_family(family: str, model: Path, root: Path, plan: Plan, only: list[str] | None = None) -> dict[str, Any]:
    """Train every run of ``runs`` (skipping ones already written), then measure each LoRA and the base."""
    from loramill.engine.families import get_family
    from loramill.engine.generation.serving import UNET_FAMILIES, make_sampler
    from loramill.engine.reference.domain import base_captions
    from loramill.engine.training.config import TrainConfig
    from loramill.engine.training.run import train

    data = datasets(root)
    # caption_dropout 0 unless a run asks for it: these runs were measured before 0.1 became the default
    common = dict(preserve_weight=plan.preserve_weight, preserve_prompts=base_captions(), caption_dropout=0.0)
    loras: dict[str, Path] = {}
    seconds: dict[str, float] = {}
    for name, options in runs(data, family, plan).items():
        if only and name not in only:
            continue
        options = {**common, **options}
        init = options.pop("init", None)
        out = root / family / (name.replace(" ", "_").replace("→", "-to-").replace("+", "plus") + ".safetensors")
        if not out.exists():
            started = time.perf_counter()
            config = TrainConfig(model=str(model), out=str(out), resolution=64, rank=plan.rank,
                                 lr=options.pop("lr", plan.lr),
                                 max_steps=options.pop("max_steps", plan.steps), seed=0, prepare="never", class_word="shape",
                                 train_text_encoder=plan.text_encoder and family != "flux",
                                 init_lora=str(loras[init]) if init else None, **options)
            train(config)
            seconds[name] = round(time.perf_counter() - started, 1)
        loras[name] = out
    pipe = get_family(family).load_pipeline(str(model))
    if family in UNET_FAMILIES:  # rendered as loramill's generator serves them: Euler (docs/performance.md)
        pipe.scheduler = make_sampler(pipe, "euler")
    measured = {"base": measure(pipe, family, None, plan)}
    for name, path in loras.items():
        measured[name] = measure(pipe, family, path, plan)
    # Multi-concept the other way: A's and B's LoRAs, each trained alone, composed at generation.
    if "A" in loras and "B" in loras:
        measured["A and B composed"] = measure(pipe, family, [loras["A"], loras["B"]], plan)
    return {"metrics": measured, "train_seconds": seconds}


def verdicts(family: str, m: dict[str, dict[str, float]]) -> list[Result]:
    """The table's lines: forgetting reproduced and prevented, no bleed, and each feature vs B alone."""
    a, b, base = m["A"], m["B"], m["base"]
    out = []
    plain = m["A→B"]
    out.append(Result(f"{family}: forgetting A after continuing on B", "fidelity A kept (after/before)",
                      a["fidelity_A"], plain["fidelity_A"], _ratio(plain["fidelity_A"], a["fidelity_A"]),
                      "a large drop (reproduces the problem)", None, COMMAND, details=plain))
    for name in ("A→B teacher", "A→B teacher+dropout", "A→B teacher+dropout+slow UNet", "A→B replay",
                 "A→B teacher+replay"):
        if name not in m:  # a run the family has no use for (runs)
            continue
        r = m[name]
        keep_a = _ratio(r["fidelity_A"], a["fidelity_A"])
        keep_b = _ratio(r["fidelity_B"], b["fidelity_B"])
        keep_base = _ratio(r["adherence"], base["adherence"])
        met = None if None in (keep_a, keep_b, keep_base) else bool(
            keep_a >= TARGET_KEEP and keep_b >= TARGET_KEEP and keep_base >= TARGET_ADHERENCE)
        out.append(Result(f"{family}: {name}", "A kept / B vs alone / adherence vs base", a["fidelity_A"],
                          r["fidelity_A"], keep_a, "≥0.9 / ≥0.9 / ≥0.95", met, COMMAND,
                          details={**r, "keep_A": keep_a, "keep_B": keep_b, "keep_adherence": keep_base}))
    for name in ("A+B one run", "A+B one run, dropout, same epochs", "A and B composed"):
        if name not in m:
            continue
        two = m[name]
        bleed = max(two["bleed_A_blue"], two["bleed_B_purple"])
        # The control: how often each concept's own LoRA, trained alone, draws its prompts in the other's
        # colour. B's LoRA alone draws some `zwx` prompts purple (halfway between the base's red and blue) with
        # no A anywhere; only what the shared run adds over that is bleed from the other concept.
        beyond = max(two["bleed_A_blue"] - a["bleed_A_blue"], two["bleed_B_purple"] - b["bleed_B_purple"], 0.0)
        out.append(Result(f"{family}: {name}", "bleed (max of the two)", None, bleed, None, "≤ 0.10",
                          bleed <= 0.10, COMMAND, details={**two, "bleed_beyond_alone": round(beyond, 3)},
                          note=f"alone: A drawn blue {a['bleed_A_blue']:.2f}, B drawn purple "
                               f"{b['bleed_B_purple']:.2f}; the shared run adds {beyond:.2f}"))
    for name, r in m.items():
        if name.startswith("B "):
            out.append(Result(f"{family}: {name} vs B alone", "fidelity B (feature / off)", b["fidelity_B"],
                              r["fidelity_B"], _ratio(r["fidelity_B"], b["fidelity_B"]), "> 1 helps", None, COMMAND,
                              details={**r, "adherence_off": b["adherence"]}))
    return out


def _ratio(value: float, reference: float) -> float | None:
    return round(value / reference, 3) if reference else None


COSTS: dict[str, dict[str, Any]] = {
    "teacher preservation": dict(preserve_weight=1.0),
    "teacher = LoRA continued from": dict(preserve_weight=1.0, init="plain"),
    "replay": dict(replay_images="A", init="plain"),
    "prior preservation (4 class images)": dict(prior_weight=1.0, class_word="face", class_image_count=4),
    "ema": dict(ema_decay=0.99),
    "huber": dict(loss="huber"),
    "lora+": dict(lora_plus_ratio=16.0),
    "caption dropout": dict(caption_dropout=0.1),
    "masked loss (alpha)": dict(masked_loss="alpha"),
}


def step_costs(family: str, steps: int) -> list[Result]:
    """Seconds per training step with each feature vs plain, on the tiny model of ``family`` (same data, seed).

    What a feature costs does not need trained weights: teacher preservation adds two forward passes of the
    denoiser per step, the rest little. Each run is timed from metrics.jsonl (training steps only, not caching).
    """
    from PIL import Image

    from bench.common import tiny_model
    from loramill.engine.training.config import TrainConfig
    from loramill.engine.training.run import train

    root = workdir(f"recipe-cost-{family}")
    images = root / "images"
    images.mkdir(exist_ok=True)
    for i in range(4):
        # a cut-out subject: opaque square on a transparent ground (for the masked run)
        im = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
        im.paste((40 * i, 120, 200, 255), (8 + 4 * i, 8, 40 + 4 * i, 56))
        im.save(images / f"{i}.png")
        (images / f"{i}.txt").write_text(f"sks, a block number {i}")
    model = tiny_model(family=family)

    def timed_run(name: str, extra: dict[str, Any]) -> float:
        extra = {"caption_dropout": 0.0, **extra}  # "plain" is plain: no caption dropout either
        init = extra.pop("init", None)
        if extra.get("replay_images") == "A":
            extra["replay_images"] = str(images)
        out = root / (name.replace(" ", "_").replace("(", "").replace(")", "").replace("=", "") + ".safetensors")
        config = TrainConfig(model=str(model), images=str(images), trigger="sks", out=str(out), resolution=64,
                             rank=4, max_steps=steps, seed=0, prepare="never",
                             init_lora=str(root / "plain.safetensors") if init else None, **extra)
        train(config)
        lines = [json.loads(line) for line in (config.run_dir / "metrics.jsonl").read_text().splitlines()]
        # the median step of the second half: the first steps warm up, and on shared cores a mean takes in
        # whatever else ran at the time
        times = [b["time"] - a["time"] for a, b in zip(lines, lines[1:])][len(lines) // 2:]
        return statistics.median(times)

    out = []
    for name, extra in COSTS.items():
        # plain right before each feature: the cores are shared, and load drifts over minutes
        base = timed_run("plain", {})
        seconds = timed_run(name, extra)
        out.append(Result(f"{family} tiny: step time with {name}", "s/step (plain / feature)", round(base, 4),
                          round(seconds, 4), round(base / seconds, 3), "cost, reported", None,
                          f"{COMMAND} (step costs)", details={"steps": steps}))
    return out


def run(quick: bool = False) -> list[Result]:
    from loramill.engine.reference.models import shipped, write_reference_model

    plan = Plan(steps=60, seeds=(0,)) if quick else Plan()
    results: list[Result] = []
    for family in FAMILIES:
        results += step_costs(family, 10 if quick else 40)
    for family in FAMILIES:
        if family not in shipped():
            results.append(Result(f"{family}: forgetting and recipe on the reference world (not run)", "-", None,
                                  None, None, "-", None, COMMAND,
                                  note=f"the reference {family} model is not shipped: under the adherence bar "
                                  "(docs/quality.md)"))
            continue
        root = workdir("recipe")
        model = root / f"reference-{family}"
        if not (model / "model_index.json").exists():
            write_reference_model(family, model)
        found = run_family(family, model, root, plan)
        (root / f"{family}.json").write_text(json.dumps(found, indent=2))
        results += verdicts(family, found["metrics"])
    return results
