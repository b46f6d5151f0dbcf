"""CPU generation at real size for Würstchen v2 (Prompt2Pic's model): loramill's levels vs diffusers' defaults.

1. Parts. The real Würstchen v2 architecture (random weights, full size: ``engine.models.realsize``, 3.1B
   parameters, 12.5 GB in fp32) in one process: the two text encoders, one prior call (stage C, with
   classifier-free guidance: batch 2), one decoder call (stage B, guidance 0: batch 1) and the VQ-GAN
   decode, at every side the comparison needs, in fp32 and then bf16 (the same weights cast in place).
2. Images, composed from the parts as ``bench/generation.py`` does for SD 1.5: encodes + the prior's calls
   + the decoder's 12 + the decode. diffusers' defaults are ``WuerstchenCombinedPipeline(...)(prompt)``:
   60 prior steps, 12 decoder steps, fp32, at 512 px unless asked; loramill renders 1024 px (Würstchen's
   own side) with 30 prior steps, in bf16 on CPUs with native bf16. Both are compared at the same side.
3. Quality. The reference world has no trained Würstchen, so what fewer prior steps cost in adherence is
   not measured here (SD 1.5's levels are: bench/generation.py). bf16's numerical drift is: the relative
   L2 error of the features each bf16 call hands its output head, against fp32 on the same inputs (the
   outputs themselves are no measure with random weights: the decoder's head is zero-initialised and the
   prior's output divides by ``|1 - b|``, which random weights bring near zero).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from bench.common import Result, speedup
from bench.generation import PRECISIONS, best_seconds, in_child

SIDES = (1024, 768, 512, 384)  # both sides compared, and what the "fastest" level scales each to
BASELINE_PRIOR_STEPS = 60  # WuerstchenCombinedPipeline's defaults
DECODER_STEPS = 12
PRIOR_RESOLUTION_MULTIPLE = 42.67  # the prior's latent side is ceil(side / 42.67); the decoder's 10.67× that
DECODER_SCALE = 10.67


def real_size_parts(sides: tuple[int, ...] = SIDES) -> dict[str, float]:
    """Seconds of each part of a real-size Würstchen v2 image (random weights), best of two each."""
    import resource

    import torch

    from loramill.engine.models.realsize import build_real_size

    pipe = build_real_size("wuerstchen")
    prior, decoder, vqgan = pipe.prior_prior.eval(), pipe.decoder.eval(), pipe.vqgan.eval()
    prior_text, decoder_text = pipe.prior_text_encoder.eval(), pipe.text_encoder.eval()
    tokens = torch.randint(0, 49408, (2, 77))
    parts: dict[str, float] = {}
    reference: dict[str, torch.Tensor] = {}
    heads = {"prior": prior.out, "decoder": decoder.clf}
    for precision in PRECISIONS:
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        # Cast in place (the fp32 weights are freed) and outside inference mode: weights cast inside it
        # become inference tensors, on which the decoder's bf16 convolutions ran 12× slower here.
        for module in (prior, decoder, vqgan, prior_text, decoder_text):
            module.to(dtype=dtype)
        with torch.inference_mode():
            parts[f"encode_{precision}"] = round(best_seconds(lambda: prior_text(tokens))
                                                 + best_seconds(lambda: decoder_text(tokens[:1])), 3)
            gen = torch.Generator().manual_seed(0)
            for side in sides:
                h = math.ceil(side / PRIOR_RESOLUTION_MULTIPLE)
                d = int(h * DECODER_SCALE)
                x, c = torch.randn(2, 16, h, h, generator=gen), torch.randn(2, 77, 1280, generator=gen)
                latents, effnet = torch.randn(1, 4, d, d, generator=gen), torch.randn(1, 16, h, h, generator=gen)
                clip = torch.randn(1, 77, 1024, generator=gen)
                calls: dict[str, Callable[[], Any]] = {
                    "prior": lambda x=x, c=c, dt=dtype: prior(x.to(dt), torch.full((2,), 0.5, dtype=dt), c.to(dt)),
                    "decoder": lambda z=latents, e=effnet, t=clip, dt=dtype: decoder(
                        z.to(dt), torch.full((1,), 0.5, dtype=dt), effnet=e.to(dt), clip=t.to(dt))}
                for name, call in calls.items():
                    parts[f"{name}_{side}_{precision}"] = best_seconds(call)
                    if side == sides[0]:  # bf16's drift against fp32 on the same inputs
                        features = head_input(heads[name], call)
                        if precision == "fp32":
                            reference[name] = features
                        else:
                            drift = (features - reference[name]).norm() / reference[name].norm()
                            parts[f"{name}_bf16_rel_l2_error"] = round(float(drift), 5)
                parts[f"decode_{side}_{precision}"] = best_seconds(lambda z=latents, dt=dtype: vqgan.decode(z.to(dt)))
    parts["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return parts


def head_input(head: Any, call: Callable[[], Any]) -> Any:
    """What ``call`` hands ``head`` (the model's output layer), in fp32."""
    seen: dict[str, Any] = {}
    hook = head.register_forward_pre_hook(lambda module, args: seen.update(x=args[0].float()))
    try:
        call()
    finally:
        hook.remove()
    return seen["x"]


def image_seconds(parts: dict[str, float], side: int, prior_steps: int, precision: str) -> float:
    """One image composed from its parts: encodes, the prior's steps, the decoder's 12 and the decode."""
    return round(parts[f"encode_{precision}"] + prior_steps * parts[f"prior_{side}_{precision}"]
                 + DECODER_STEPS * parts[f"decoder_{side}_{precision}"] + parts[f"decode_{side}_{precision}"], 2)


def run(quick: bool = False) -> list[Result]:
    from loramill.engine.families import get_family
    from loramill.engine.generation.quality import apply_level, levels_for

    # 1. The parts in their own process (its peak RSS is the model's).
    sides = (256, 128) if quick else SIDES
    parts = in_child("real_size_parts", {"sides": sides}, module="wuerstchen")
    family = get_family("wuerstchen")
    results = []
    # 2. diffusers' defaults against each level (steps and sizes: Würstchen has no UNet for DeepCache or a
    # solver swap), at Würstchen's own side and at diffusers' default side.
    for side in sides[::2]:
        baseline = image_seconds(parts, side, BASELINE_PRIOR_STEPS, "fp32")
        for precision in PRECISIONS:
            for level in levels_for():
                steps, width, _ = apply_level(family.DEFAULT_STEPS, side, side, level, family.RESOLUTION_MULTIPLE)
                ours = image_seconds(parts, width, steps, precision)
                ratio = speedup(baseline, ours)
                target, met = "report", None
                if level.name == "full":
                    target, met = "≥ 3× (quality cost not measurable: no trained Würstchen)", bool(ratio and ratio >= 3)
                elif level.name == "fastest":
                    target, met = "≥ 10×", bool(ratio and ratio >= 10)
                results.append(Result(
                    f"CPU generation, real Würstchen v2, {side} px, {precision}, level {level.name} ({steps} prior "
                    f"steps at {width} px)", "s/image (composed)", baseline, ours, ratio, target, met,
                    "make bench BENCH=wuerstchen", details={"parts": parts},
                    note=f"diffusers' defaults: {BASELINE_PRIOR_STEPS} prior + {DECODER_STEPS} decoder steps, fp32"))
    for name in ("prior", "decoder"):
        side = sides[0]
        results.append(Result(f"CPU generation, real Würstchen v2, {side} px: one {name} call, fp32 vs bf16",
                              "s/call", parts[f"{name}_{side}_fp32"], parts[f"{name}_{side}_bf16"],
                              speedup(parts[f"{name}_{side}_fp32"], parts[f"{name}_{side}_bf16"]), "report", None,
                              "make bench BENCH=wuerstchen", details={"parts": parts},
                              note=f"bf16 relative L2 error of the head's input {parts[f'{name}_bf16_rel_l2_error']}; "
                                   f"peak RSS {parts['peak_rss_mb']} MB"))
    return results
