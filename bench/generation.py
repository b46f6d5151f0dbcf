"""CPU generation: what each serving piece buys at real model size, and what each quality level costs.

1. Real size, piece by piece. The real SD 1.5 architecture (random weights, full size:
   ``engine.models.realsize``) in one process: the text encoder, one UNet call at 512 px with guidance
   (batch 2) in fp32, bf16 and channels-last, a DeepCache step between full ones, a UNet call at
   384 px, and the VAE decode. An image is encode + its UNet calls + decode, run one after another, so
   s/image for diffusers' defaults (``StableDiffusionPipeline(...)(prompt)``: 50 PNDM steps = 51 calls,
   fp32) and for every quality level is composed from these measured parts. One full image at real size
   takes minutes here; the parts take seconds each and are timed as the best of two. To check the
   composing, whole images at the fastest and the full level go through loramill's ``Generator`` in
   another process beside freshly measured parts (``whole_images``).
2. Quality, on the reference world (the trained tiny SD 1.5, its scorer and CLIP): diffusers' defaults (the
   model's own scheduler, 50 steps, fp32) are the full-quality reference; each level at loramill's defaults
   (Euler, the family's steps), in fp32 and in bf16, and the solvers the levels could use instead, render
   every base colour × shape for four seeds: classifier adherence, and the CLIP similarity of each image to
   the reference image of the same prompt and seed.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from typing import Any

from bench.common import REPO, Result, speedup, workdir
from bench.training import _env

QUALITY_SEEDS = (0, 1, 2, 3)
BASELINE_STEPS = 50  # diffusers' default call: 50 steps of the model's own scheduler
PRECISIONS = ("fp32", "bf16")
BASELINE_CALLS = 51  # diffusers' default 50 PNDM steps run 51 UNet calls (PNDM adds one)
OTHER_SOLVERS = ("dpmpp", "unipc")  # what the levels could run instead of Euler, measured beside it

SWITCH_RANKS = (16, 64)
SWITCHES = 1000
SWITCH_FILES = 6  # more files than the generator's cache holds (4): every switch loads into an evicted slot

CHILD = """
import importlib, json, sys
module = importlib.import_module("bench." + sys.argv[1])
print("RESULT " + json.dumps(getattr(module, sys.argv[2])(**json.loads(sys.argv[3]))), flush=True)
"""


def best_seconds(fn: Any, repeats: int = 2) -> float:
    best = math.inf
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return round(best, 3)


def real_size_parts(side: int = 512, small_side: int = 384) -> dict[str, float]:
    """Seconds of each part of a real-size SD 1.5 image (random weights), best of two each."""
    import resource

    import torch

    from loramill.engine.generation.deepcache import deep_cache
    from loramill.engine.models.realsize import build_real_size

    pipe = build_real_size("sd15")
    unet, vae, text = pipe.unet.eval(), pipe.vae.eval(), pipe.text_encoder.eval()
    tokens = torch.randint(0, 49408, (2, 77))
    latents, small = torch.randn(2, 4, side // 8, side // 8), torch.randn(2, 4, small_side // 8, small_side // 8)
    cond, t = torch.randn(2, 77, 768), torch.tensor([500, 500])
    parts: dict[str, float] = {}
    with torch.inference_mode():
        parts["encode"] = best_seconds(lambda: text(tokens))
        parts["decode"] = best_seconds(lambda: vae.decode(latents[:1] / vae.config.scaling_factor))
        parts["unet_fp32"] = best_seconds(lambda: unet(latents, t, cond))
        parts["unet_fp32_small"] = best_seconds(lambda: unet(small, t, cond))
        with deep_cache(unet, 2):
            unet(latents, t, cond)  # the full step that records the deep features
            parts["unet_deep_cache_step"] = best_seconds(lambda: unet(latents, t, cond), repeats=1)
    # Layout and dtype changes happen outside inference mode, as a generator makes them when it loads: weights
    # cast inside it become inference tensors, and bf16 convolutions on them ran up to 12× slower here.
    unet_cl = unet.to(memory_format=torch.channels_last)
    cl = latents.to(memory_format=torch.channels_last)
    with torch.inference_mode():
        parts["unet_fp32_channels_last"] = best_seconds(lambda: unet_cl(cl, t, cond))
    unet_bf16 = unet.to(dtype=torch.bfloat16, memory_format=torch.contiguous_format)
    vae_bf16 = vae.to(dtype=torch.bfloat16)  # a bf16 generator casts the whole pipeline
    with torch.inference_mode():
        parts["unet_bf16"] = best_seconds(lambda: unet_bf16(latents.bfloat16(), t, cond.bfloat16()))
        parts["decode_bf16"] = best_seconds(lambda: vae_bf16.decode(latents[:1].bfloat16() / vae.config.scaling_factor))
    parts["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return parts


def compiled_unet_parts(side: int = 512) -> dict[str, float]:
    """One real-size UNet call (512 px, guidance batch 2) eager, through ``torch.compile`` (inductor) and through
    OpenVINO (``openvino.convert_model`` of the same module, compiled for CPU in f32 and bf16): seconds, best of
    two, with each graph's one-off build time and OpenVINO's largest relative error against eager fp32.
    OpenVINO is not a loramill dependency: ``pip install openvino`` to include it (skipped otherwise)."""
    import importlib.util
    import resource

    import torch

    from loramill.engine.models.realsize import build_real_size

    unet = build_real_size("sd15").unet.eval()
    latents, t, cond = torch.randn(2, 4, side // 8, side // 8), torch.tensor([500, 500]), torch.randn(2, 77, 768)
    parts: dict[str, float] = {}
    with torch.inference_mode():
        reference = unet(latents, t, cond, return_dict=False)[0]
        parts["eager_fp32"] = best_seconds(lambda: unet(latents, t, cond))
        compiled = torch.compile(unet.forward, dynamic=False)
        started = time.perf_counter()
        compiled(latents, t, cond)
        parts["torch_compile_build_s"] = round(time.perf_counter() - started, 1)
        parts["torch_compile_fp32"] = best_seconds(lambda: compiled(latents, t, cond))
    if importlib.util.find_spec("openvino") is None:
        return parts
    import openvino

    class Positional(torch.nn.Module):  # OpenVINO traces positional inputs and a plain tensor output
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor, step: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
            return self.inner(x, step, text, return_dict=False)[0]

    started = time.perf_counter()
    with torch.no_grad():
        model = openvino.convert_model(Positional(unet).eval(), example_input=(latents, t, cond))
    parts["openvino_convert_s"] = round(time.perf_counter() - started, 1)
    inputs = [latents.numpy(), t.numpy(), cond.numpy()]
    for hint in ("f32", "bf16"):
        started = time.perf_counter()
        ov_unet = openvino.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": hint})
        parts[f"openvino_{hint}_build_s"] = round(time.perf_counter() - started, 1)
        error = abs(torch.from_numpy(ov_unet(inputs)[0]) - reference).max() / reference.abs().max()
        parts[f"openvino_{hint}_max_rel_error"] = round(float(error), 6)
        parts[f"openvino_{hint}"] = best_seconds(lambda ov_unet=ov_unet: ov_unet(inputs))
        del ov_unet
    parts["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return parts


def real_size_loras(unet: Any, rank: int, count: int) -> list[Any]:
    """``count`` kohya-layout LoRA files of ``rank`` for the real-size SD 1.5 UNet (every linear layer of its
    transformer blocks, as kohya's default network; seeded random weights): the 20–150 MB files users
    switch between."""
    import torch

    from loramill.engine.lora.files import write_lora

    folder = workdir("generation") / f"real-loras-r{rank}"
    files = [folder / f"lora-{i}.safetensors" for i in range(count)]
    if all(f.exists() for f in files):
        return files
    targets = [(name, module) for name, module in unet.named_modules()
               if ".transformer_blocks." in name and isinstance(module, torch.nn.Linear)]
    for i, path in enumerate(files):
        g = torch.Generator().manual_seed(i)
        tensors: dict[str, torch.Tensor] = {}
        for name, module in targets:
            key = "lora_unet_" + name.replace(".", "_")
            tensors[f"{key}.lora_down.weight"] = torch.randn(rank, module.in_features, generator=g) * 0.01
            tensors[f"{key}.lora_up.weight"] = torch.randn(module.out_features, rank, generator=g) * 0.01
            tensors[f"{key}.alpha"] = torch.tensor(float(rank))
        write_lora(path, tensors, {"ss_network_dim": str(rank), "ss_network_alpha": str(rank)})
    return files


def real_size_switching(switches: int = SWITCHES, ranks: tuple[int, ...] = SWITCH_RANKS) -> dict[str, Any]:
    """Seconds per switch and RSS growth over ``switches`` LoRA switches at real size, per rank: a resident
    generator on the real SD 1.5 architecture cycling ``SWITCH_FILES`` files through its cache (each switch a
    load into an evicted slot), as bench/loras.py measures on the tiny model."""
    from bench.loras import memory_over_switches
    from loramill.engine.generation.generate import Generator
    from loramill.engine.models.realsize import build_real_size

    generator = Generator("real-size SD 1.5", family="sd15", pipe=build_real_size("sd15"))
    out: dict[str, Any] = {}
    for rank in ranks:
        files = real_size_loras(generator.pipe.unet, rank, SWITCH_FILES)
        found = memory_over_switches(generator, files, switches)
        found["file_mb"] = round(files[0].stat().st_size / 2 ** 20, 1)
        out[f"rank {rank}"] = found
        generator.adapters.clear()
    return out


def whole_images(levels: tuple[str, ...] = ("fastest", "full"), precision: str = "bf16") -> dict[str, Any]:
    """Whole real-size SD 1.5 images through loramill's ``Generator`` at ``levels``, beside the parts the
    composed figures are made of, in one process: how far composing is from the real thing. One image per
    level, its first (the parts are the best of two, so the whole image carries first-call costs too)."""
    import resource

    from loramill.engine.generation.generate import Generator
    from loramill.engine.generation.quality import level_request, levels_for
    from loramill.engine.generation.request import GenerateRequest
    from loramill.engine.generation.serving import ServingSettings
    from loramill.engine.models.realsize import build_real_size

    parts = real_size_parts()
    generator = Generator("real-size SD 1.5", family="sd15", pipe=build_real_size("sd15"),
                          serving=ServingSettings(precision=precision))
    out: dict[str, Any] = {"parts": parts, "precision": precision, "levels": {}}
    for level in (level for name in levels for level in levels_for() if level.name == name):
        request = level_request(GenerateRequest("a photo of a cat", seed=0), level, "sd15", generator.default_size)
        plan = generator.plan(request)  # the steps and side it resolves to (the full level leaves them unset)
        started = time.perf_counter()
        generator.generate(request)
        whole = round(time.perf_counter() - started, 2)
        composed = image_seconds(parts, plan.steps, plan.deep_cache, small=plan.width < 512, precision=precision)
        out["levels"][level.name] = {"steps": plan.steps, "side": plan.width, "deep_cache": plan.deep_cache,
                                     "whole_s": whole, "composed_s": composed}
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return out


def _calls(steps: int, deep_cache: int) -> tuple[int, int]:
    """(full UNet calls, DeepCache calls) of a ``steps``-step run: every interval-th step runs in full."""
    full = math.ceil(steps / deep_cache)
    return full, steps - full


def image_seconds(parts: dict[str, float], steps: int, deep_cache: int = 1, small: bool = False,
                  precision: str = "fp32") -> float:
    """Composed seconds of one image: encode + UNet calls + decode (a smaller image scales the decode).
    In bf16 the UNet calls scale by bf16's measured ratio and the decode is the bf16 one."""
    full, cached = _calls(steps, deep_cache)
    ratio = parts["unet_bf16"] / parts["unet_fp32"] if precision == "bf16" else 1.0
    call = (parts["unet_fp32_small"] if small else parts["unet_fp32"]) * ratio
    cached_share = parts["unet_deep_cache_step"] / parts["unet_fp32"]
    decode = parts["decode_bf16" if precision == "bf16" else "decode"] * ((384 / 512) ** 2 if small else 1)
    return round(parts["encode"] + full * call + cached * call * cached_share + decode, 2)


def quality_by_level() -> dict[str, dict[str, float]]:
    """Adherence and CLIP similarity to diffusers' defaults ("reference"), per precision and level ("bf16
    fast") and for the other solvers ("fp32 dpmpp 12 steps"), on the reference SD 1.5."""
    import importlib.util

    import torch

    from loramill.engine.families import get_family
    from loramill.engine.generation.generate import Generator
    from loramill.engine.generation.quality import level_request, levels_for
    from loramill.engine.generation.request import GenerateRequest
    from loramill.engine.generation.serving import ServingSettings
    from loramill.engine.reference import clip as rclip
    from loramill.engine.reference.adherence import base_prompts
    from loramill.engine.reference.models import write_reference_model
    from loramill.engine.reference.scorer import adherence

    folder = workdir("generation") / "reference-sd15"
    if not (folder / "model_index.json").exists():
        write_reference_model("sd15", folder)
    model, processor = rclip.load_trained_clip()
    prompts = base_prompts(QUALITY_SEEDS)

    def render(generator: Generator, request: Any) -> list[Any]:
        return [generator.generate(request(spec.caption, seed))[0].image for spec, seed in prompts]

    # 1. The reference: what diffusers' own call renders (the model's scheduler, 50 steps, fp32).
    plain = Generator(str(folder), serving=ServingSettings(precision="fp32", sampler="model"))
    images = {"reference": render(plain, lambda caption, seed: GenerateRequest(caption, seed=seed,
                                                                               steps=BASELINE_STEPS))}
    # 2. Each level at loramill's defaults (Euler at the family's steps), in each precision.
    for precision in PRECISIONS:
        generator = Generator(str(folder), serving=ServingSettings(precision=precision))
        for level in levels_for():
            at_level = lambda caption, seed, level=level, side=generator.default_size: level_request(  # noqa: E731
                GenerateRequest(caption, seed=seed), level, "sd15", side)
            images[f"{precision} {level.name}"] = render(generator, at_level)
    # 3. The full level with the UNet through OpenVINO (when installed), as LORAMILL_GENERATION_OPENVINO runs it.
    if importlib.util.find_spec("openvino") is not None:
        generator = Generator(str(folder), serving=ServingSettings(precision="bf16", openvino=True))
        images["bf16 openvino full"] = render(generator, lambda caption, seed: GenerateRequest(caption, seed=seed))
    # 4. The second-order solvers the levels could have used, at the full and the fast level's steps.
    generator = Generator(str(folder))
    full_steps = get_family("sd15").DEFAULT_STEPS
    for solver in OTHER_SOLVERS:
        for steps in (full_steps, round(full_steps * 0.6)):
            with_solver = lambda caption, seed, n=steps, name=solver: GenerateRequest(  # noqa: E731
                caption, seed=seed, steps=n, sampler=name)
            images[f"fp32 {solver} {steps} steps"] = render(generator, with_solver)
    full = rclip.image_embeddings(model, processor, images["reference"])
    out = {}
    for name, rendered in images.items():
        emb = rclip.image_embeddings(model, processor, rendered)
        out[name] = {"adherence": round(adherence(rendered, [s for s, _ in prompts]), 4),
                     "clip_to_reference": round(float(torch.nn.functional.cosine_similarity(emb, full).mean()), 4)}
    return out


def in_child(function: str, args: dict[str, Any], module: str = "generation") -> Any:
    """``function(**args)`` of ``bench.<module>`` in its own process (its peak RSS is the model's)."""
    proc = subprocess.run([sys.executable, "-c", CHILD, module, function, json.dumps(args)], cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=3600)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if not lines:
        raise RuntimeError(f"{function} exited {proc.returncode}: {proc.stderr[-800:]}")
    return json.loads(lines[0][len("RESULT "):])


def run(quick: bool = False) -> list[Result]:
    from loramill.engine.families import get_family
    from loramill.engine.generation.quality import apply_level, levels_for

    # 1. Real-size parts in their own process (its peak RSS is the model's), then quality on the reference world.
    parts = in_child("real_size_parts", {"side": 256, "small_side": 192} if quick else {})
    switching = in_child("real_size_switching", {"switches": 20} if quick else {})
    compiled = in_child("compiled_unet_parts", {"side": 256} if quick else {})
    whole = in_child("whole_images", {"levels": ["fastest"]} if quick else {})
    quality = quality_by_level()

    # 2. diffusers' defaults against each level at loramill's defaults (Euler, SD 1.5's 20 steps).
    baseline = round(parts["encode"] + BASELINE_CALLS * parts["unet_fp32"] + parts["decode"], 2)
    default_steps = get_family("sd15").DEFAULT_STEPS
    size = "reference-size parts, 256 px" if quick else "real SD 1.5, 512 px"
    reference = quality["reference"]["adherence"]
    results = []
    for precision in PRECISIONS:
        for level in levels_for():
            steps, _, _ = apply_level(default_steps, 512, 512, level)
            ours = image_seconds(parts, steps, level.deep_cache, small=level.resolution_factor < 1,
                                 precision=precision)  # Euler: one UNet call per step
            ratio = speedup(baseline, ours)
            name = f"{precision} {level.name}"
            lost = round(100 * (reference - quality[name]["adherence"]), 1)
            target, met = "report", None
            if level.name == "full":
                target, met = "≥ 3× at ≤ 2 points adherence lost", bool(ratio and ratio >= 3 and lost <= 2)
            elif level.name == "fastest":
                target, met = "≥ 10×", bool(ratio and ratio >= 10)
            results.append(Result(
                f"CPU generation, {size}, {precision}, level {level.name} ({steps} Euler steps, "
                f"DeepCache {level.deep_cache})", "s/image (composed)", baseline, ours,
                ratio, target, met, "make bench BENCH=generation",
                details={"parts": parts, "quality": quality[name], "adherence_points_lost": lost},
                note=f"adherence {quality[name]['adherence']:.2f} (diffusers' defaults {reference:.2f}),"
                     f" CLIP to diffusers' defaults {quality[name]['clip_to_reference']:.3f}"))
    for name, found in quality.items():  # the solvers the levels do not use, and why
        if " steps" in name:
            results.append(Result(f"CPU generation quality, reference world: {name} vs Euler", "adherence",
                                  quality["fp32 full"]["adherence"], found["adherence"], None, "report", None,
                                  "make bench BENCH=generation", details=found))
    for key, label in (("torch_compile_fp32", "torch.compile (inductor), fp32"),  # 3. compiled graphs
                       ("openvino_f32", "OpenVINO, f32"), ("openvino_bf16", "OpenVINO, bf16")):
        if key in compiled:
            results.append(Result(f"CPU generation, {size}: one UNet call, eager fp32 vs {label}", "s/call",
                                  compiled["eager_fp32"], compiled[key], speedup(compiled["eager_fp32"], compiled[key]),
                                  "report (keep what wins)", None, "make bench BENCH=generation",
                                  details={"compiled": compiled}))
    if "openvino_f32" not in compiled:
        results.append(Result(f"CPU generation, {size}: OpenVINO (not measured)", "-", None, None, None, "-", None,
                              "make bench BENCH=generation", note="openvino is not installed: pip install openvino"))
    for name, found in whole["levels"].items():  # 4. whole images against their composed figures
        results.append(Result(f"CPU generation, real SD 1.5, {whole['precision']}, level {name} ({found['steps']} "
                              f"steps at {found['side']} px): whole image vs composed", "s/image",
                              found["composed_s"], found["whole_s"], speedup(found["composed_s"], found["whole_s"]),
                              "report (how far composing is off)", None, "make bench BENCH=generation",
                              details=whole))
    for rank, found in switching.items():  # 5. LoRA switching at real size
        results.append(Result(f"CPU generation, real SD 1.5: switching {rank} LoRAs ({found['file_mb']} MB each)",
                              "s/switch", None, round(found["seconds_per_switch"], 3), None,
                              f"report; RSS growth ≤ 50 MB over {found['switches']} switches", found["growth_mb"] <= 50,
                              "make bench BENCH=generation", details=found))
    for piece, key in (("bf16", "unet_bf16"), ("channels-last", "unet_fp32_channels_last"),
                       ("DeepCache step vs full step", "unet_deep_cache_step")):
        results.append(Result(f"CPU generation, {size}: one UNet call, fp32 vs {piece}", "s/call",
                              parts["unet_fp32"], parts[key], speedup(parts["unet_fp32"], parts[key]), "report",
                              None, "make bench BENCH=generation", details={"parts": parts}))
    return results
