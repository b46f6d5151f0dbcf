"""Quality and speed under load: a burst of generation jobs with a latency target, with and without the policy.

All jobs arrive at once (a burst); one worker renders them in arrival order with the real
``Generator``. Without the policy every job gets what it asked for; with it each job, as it starts,
gets the level ``LoadPolicy.level_for(jobs still queued)`` picks. A job is within target when its
finish time (from the burst) is at most ``TARGET_SECONDS``-equivalent. The quality cost of each
degraded image is measured against its full-quality twin with the same seed (rendered outside the
timed runs): mean absolute pixel difference (0–1) and SSIM, after resizing a smaller image up.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from bench.common import Result, mean, tiny_model

JOBS, STEPS, SIDE = 100, 12, 128
TARGET_FRACTION = 0.4  # the target: 40% of the burst's full-quality drain time


def _render(generator: Any, seed: int, steps: int, side: int) -> Any:
    from loramill.engine.generation.generate import GenerateRequest

    request = GenerateRequest(prompt="a photo of sks dog, white background", steps=steps, width=side, height=side,
                              seed=seed)
    return generator.generate(request)[0].image


def burst(generator: Any, jobs: int, policy: Any | None) -> dict[str, Any]:
    """Run ``jobs`` queued at t=0; each job's finish time and level."""
    from loramill.engine.generation.quality import FULL, apply_level

    started = time.perf_counter()
    finished, levels = [], []
    for n in range(jobs):
        # Every job of the burst was queued at t=0, so the one starting now has waited this long.
        waited = time.perf_counter() - started
        level = policy.level_for(jobs - n - 1, waited) if policy is not None else FULL
        steps, width, _ = apply_level(STEPS, SIDE, SIDE, level)
        t = time.perf_counter()
        _render(generator, n, steps, width)
        if policy is not None:
            policy.observe(time.perf_counter() - t, level)
        finished.append(time.perf_counter() - started)
        levels.append(level)
    return {"finished": finished, "levels": levels}


def image_distance(a: Any, b: Any) -> tuple[float, float]:
    """(mean |a − b| in 0–1, SSIM) of two RGB images, ``a`` resized to ``b``'s size if needed."""
    from PIL import Image
    from skimage.metrics import structural_similarity

    if a.size != b.size:
        a = a.resize(b.size, Image.Resampling.BICUBIC)
    x = np.asarray(a, dtype=np.float32) / 255
    y = np.asarray(b, dtype=np.float32) / 255
    return float(np.abs(x - y).mean()), float(structural_similarity(x, y, channel_axis=2, data_range=1.0))


def run(quick: bool = False) -> list[Result]:
    from loramill.engine.generation.generate import Generator
    from loramill.engine.generation.quality import LoadPolicy, apply_level

    jobs = JOBS // 4 if quick else JOBS
    generator = Generator(str(tiny_model()))
    _render(generator, 0, STEPS, SIDE)  # lazy init is not part of the burst
    # 1. The seconds of one full-quality job on this machine now, which sets the target.
    t = time.perf_counter()
    for seed in range(3):
        _render(generator, seed, STEPS, SIDE)
    full_seconds = (time.perf_counter() - t) / 3
    target = TARGET_FRACTION * jobs * full_seconds
    # 2. The burst without and with the policy (it starts knowing nothing: one full job's guess).
    plain = burst(generator, jobs, None)
    policy = LoadPolicy(target, initial_seconds=full_seconds)
    policed = burst(generator, jobs, policy)
    within_plain = sum(f <= target for f in plain["finished"]) / jobs
    within_policy = sum(f <= target for f in policed["finished"]) / jobs
    # 3. Quality cost: each degraded image against its full-quality twin (same seed).
    distances, ssims = [], []
    for n, level in enumerate(policed["levels"]):
        if level.cost >= 1:
            continue
        steps, width, _ = apply_level(STEPS, SIDE, SIDE, level)
        d, s = image_distance(_render(generator, n, steps, width), _render(generator, n, STEPS, SIDE))
        distances.append(d)
        ssims.append(s)
    counts: dict[str, int] = {}
    for level in policed["levels"]:
        counts[level.name] = counts.get(level.name, 0) + 1
    details = {"jobs": jobs, "steps": STEPS, "side": SIDE, "target_s": round(target, 2),
               "full_job_s": round(full_seconds, 3), "within_target_without": within_plain,
               "within_target_with": within_policy, "levels": counts,
               "drain_s_without": round(plain["finished"][-1], 2), "drain_s_with": round(policed["finished"][-1], 2),
               "p95_s_without": round(float(np.percentile(plain["finished"], 95)), 2),
               "p95_s_with": round(float(np.percentile(policed["finished"], 95)), 2),
               "mean_pixel_distance": round(mean(distances), 4) if distances else 0.0,
               "mean_ssim": round(mean(ssims), 4) if ssims else 1.0, "degraded_jobs": len(distances)}
    command = "make bench BENCH=quality"
    return [Result("quality under load: jobs within target", "share of burst", within_plain, within_policy,
                   round(within_policy / within_plain, 3) if within_plain else None, "more jobs within target",
                   within_policy > within_plain, command, details,
                   note=f"cost: mean pixel distance {details['mean_pixel_distance']:.3f}, SSIM {details['mean_ssim']:.3f} "
                        f"vs the full-quality twin; levels {counts}")]
