"""Base prompt adherence of the reference models (issue 12), beside a random model of the same architecture.

For each shipped family: every base colour × shape × 8 seeds (backgrounds alternate with the seed),
generated through the family's own pipeline from the folder `loramill models reference` writes, and read
back by the reference world's scorer (validity gate included). The baseline is the tiny random-weight
model of the same family (`loramill models tiny`): what a model that learned nothing scores here.
Also records the steps–adherence trade-off (fewer denoising steps), which `make test` relies on.
"""

from __future__ import annotations

import time

from bench.common import Result, tiny_model, workdir

SEEDS = tuple(range(8))


def _adherence(folder: str, family: str, steps: int) -> tuple[float, float]:
    from loramill.engine.families import get_family
    from loramill.engine.reference.adherence import base_prompts, generate_scored

    pipe = get_family(family).load_pipeline(folder)
    pipe.set_progress_bar_config(disable=True)
    started = time.perf_counter()
    results = generate_scored(pipe, family, base_prompts(SEEDS), steps=steps)
    return sum(s.matches(spec) for spec, _, s in results) / len(results), time.perf_counter() - started


def run(quick: bool = False) -> list[Result]:
    import shutil

    from loramill.engine.reference.models import FAMILY_MODELS, manifest, shipped, write_reference_model

    results = []
    for family in set(FAMILY_MODELS) - set(shipped()):  # its figures from training, not measured again
        figures = manifest().get(family, {})
        results.append(Result(f"base adherence {family} (reference vs random)", "share of 120 prompts drawn right",
                              None, figures.get("adherence"), None, "≥ 0.90", False, "make reference-models",
                              note=f"not shipped: the reference {family} model is under the bar (docs/quality.md)"))
    for family in shipped():
        folder = workdir("adherence") / family
        shutil.rmtree(folder, ignore_errors=True)
        write_reference_model(family, folder)
        steps_grid = (20,) if quick else (8, 20, 30)
        by_steps = {steps: _adherence(str(folder), family, steps) for steps in steps_grid}
        ours, seconds = by_steps[20]
        baseline, _ = _adherence(str(tiny_model(family=family)), family, 20)
        results.append(Result(
            f"base adherence {family} (reference vs random)", "share of 120 prompts drawn right", baseline, ours,
            None if baseline == 0 else round(ours / baseline, 2), "≥ 0.90", ours >= 0.9,
            "make bench BENCH=adherence", details={
                "seeds": len(SEEDS), "steps": 20, "generation_seconds": round(seconds, 1),
                "by_steps": {s: round(a, 3) for s, (a, _) in by_steps.items()}},
            note="baseline: the tiny random model of the same architecture"))
    return results
