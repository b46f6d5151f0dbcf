"""CPU generation at real model size: loramill's resident generator against the plain diffusers call.

1. Speed at real size. The real SD 1.5 architecture (random weights, full size; the configs of
   ``engine.planning.architectures``) at 512 px, written once as a diffusers folder. Baseline: the call a
   user writes, ``StableDiffusionPipeline.from_pretrained(folder)(prompt)`` with diffusers' defaults (50 PNDM
   steps, guidance 7.5, fp32). loramill: its ``Generator`` with the serving defaults, at each quality level
   of the load policy. Every side runs in its own process (peak RSS is that process's) and renders one
   warm-up image first, so both report a resident worker's steady state: s/image and peak RSS.
2. What each level costs in quality, on the reference world (the trained tiny SD 1.5 and its scorer):
   classifier adherence over every base colour × shape, and the CLIP image similarity of each level's
   image to the full-quality image of the same prompt and seed.
3. What each serving piece buys at real size on its own (one UNet call, batch 2 as with guidance):
   fp32 vs bf16, channels-last, and a DeepCache step vs a full one.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import REPO, Result, speedup, workdir
from bench.training import _env

PROMPT = "a photo of a red fox in the snow"
SIDE = 512
QUALITY_SEEDS = (0, 1, 2, 3)


def real_sd15(folder: Path) -> Path:
    """The real SD 1.5 architecture with random weights (seed 0) as a diffusers folder, written once."""
    if (folder / "model_index.json").exists():
        return folder
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from loramill.engine.models.tokenizers import clip_tokenizer
    from loramill.engine.planning.architectures import ARCHITECTURES

    arch = ARCHITECTURES["sd15"]
    torch.manual_seed(0)
    text_class, text_config = arch.text_encoders["text_encoder"]
    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL.from_config(arch.vae), text_encoder=CLIPTextModel(CLIPTextConfig(**text_config)),
        tokenizer=clip_tokenizer(), unet=UNet2DConditionModel.from_config(arch.denoiser[1]),
        scheduler=PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


# One process per side: ``python -c CHILD <json args>`` prints one JSON line.
CHILD = """
import json, resource, sys, time, torch
args = json.loads(sys.argv[1])
from bench.generation import child
print("RESULT " + json.dumps(child(**args)), flush=True)
"""


def child(side: str, model: str, level: str | None = None, steps: int | None = None, repeats: int = 1,
          serving: dict[str, Any] | None = None) -> dict[str, Any]:
    """Render ``repeats`` images after a warm-up one, on one side; seconds per image and peak RSS (MB)."""
    import resource

    import torch

    if side == "baseline":
        from diffusers import StableDiffusionPipeline

        pipe = StableDiffusionPipeline.from_pretrained(model)
        pipe.set_progress_bar_config(disable=True)

        def render(seed: int) -> Any:
            kwargs = {"num_inference_steps": steps} if steps else {}
            return pipe(PROMPT, generator=torch.Generator().manual_seed(seed), **kwargs).images[0]
    else:
        from loramill.engine.generation.generate import Generator
        from loramill.engine.generation.quality import level_request, levels_for
        from loramill.engine.generation.request import GenerateRequest
        from loramill.engine.generation.serving import ServingSettings

        generator = Generator(model, serving=ServingSettings(**(serving or {})))
        chosen = {lv.name: lv for lv in levels_for(generator.family_name)}[level or "full"]

        def render(seed: int) -> Any:
            request = GenerateRequest(PROMPT, seed=seed, steps=steps, width=SIDE, height=SIDE)
            return generator.generate(level_request(request, chosen, generator.family_name))[0].image

    render(0)  # warm-up: a resident worker has already run once (allocator, oneDNN kernels, compile)
    started = time.perf_counter()
    for i in range(repeats):
        render(1 + i)
    seconds = (time.perf_counter() - started) / repeats
    return {"seconds_per_image": round(seconds, 2),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def _run_child(**args: Any) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(args)], cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=7200)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"{args.get('side')} {args.get('level')} exited {proc.returncode}: {proc.stderr[-800:]}")


def quality_by_level(levels: list[str]) -> dict[str, dict[str, float]]:
    """Adherence and CLIP similarity to the full-quality image, per level, on the reference SD 1.5."""
    import torch

    from loramill.engine.generation.generate import Generator
    from loramill.engine.generation.quality import level_request, levels_for
    from loramill.engine.generation.request import GenerateRequest
    from loramill.engine.reference import clip as rclip
    from loramill.engine.reference.adherence import base_prompts
    from loramill.engine.reference.models import write_reference_model
    from loramill.engine.reference.scorer import adherence

    folder = write_reference_model("sd15", workdir("generation") / "reference-sd15")
    generator = Generator(str(folder))
    by_name = {lv.name: lv for lv in levels_for(generator.family_name)}
    model, processor = rclip.load_trained_clip()
    prompts = base_prompts(QUALITY_SEEDS)
    images: dict[str, list[Any]] = {}
    for name in levels:
        images[name] = []
        for spec, seed in prompts:
            request = GenerateRequest(spec.caption, seed=seed, steps=20)
            images[name] += [generator.generate(level_request(request, by_name[name], generator.family_name))[0].image]
    full = rclip.image_embeddings(model, processor, images["full"])
    out = {}
    for name in levels:
        emb = rclip.image_embeddings(model, processor, images[name])
        out[name] = {"adherence": round(adherence(images[name], [s for s, _ in prompts]), 4),
                     "clip_to_full": round(float(torch.nn.functional.cosine_similarity(emb, full).mean()), 4)}
    return out


def run(quick: bool = False) -> list[Result]:
    from loramill.engine.generation.quality import levels_for

    levels = [lv.name for lv in levels_for("sd15")]
    quality = quality_by_level(levels)
    if quick:  # the real-size model takes minutes an image here; --quick checks the plumbing on the reference model
        model = str(workdir("generation") / "reference-sd15")
        steps: int | None = 20
    else:
        model, steps = str(real_sd15(workdir("models") / "sd15-real")), None
    base = _run_child(side="baseline", model=model, steps=steps)
    results = []
    for name in levels:
        ours = _run_child(side="loramill", model=model, level=name, steps=steps)
        ratio = speedup(base["seconds_per_image"], ours["seconds_per_image"])
        lost = round(100 * (quality["full"]["adherence"] - quality[name]["adherence"]), 1)
        target = "≥ 3× with ≤ 2 points adherence lost" if name == "full" else (
            "≥ 10×" if name == levels[-1] else "report")
        met = None
        if name == "full":
            met = ratio is not None and ratio >= 3 and lost <= 2
        elif name == levels[-1]:
            met = ratio is not None and ratio >= 10
        size = "reference 64 px" if quick else "real SD 1.5, 512 px"
        results.append(Result(
            f"CPU generation, {size}, level {name}", "s/image", base["seconds_per_image"], ours["seconds_per_image"],
            ratio, target, met, "make bench BENCH=generation",
            details={"baseline": base, "loramill": ours, "quality": quality[name], "adherence_points_lost": lost},
            note=f"adherence {quality[name]['adherence']:.2f} (full {quality['full']['adherence']:.2f}), "
                 f"CLIP to full {quality[name]['clip_to_full']:.3f}"))
    return results


if __name__ == "__main__":
    started = time.perf_counter()
    for r in run(quick="--quick" in sys.argv):
        print(r)
    print(f"{time.perf_counter() - started:.0f}s")
