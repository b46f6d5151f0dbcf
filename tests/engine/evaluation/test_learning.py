"""A LoRA on the trained reference world: a wrong training target is caught, and a new concept is learned.

The reference SD 1.5 (engine/reference) was trained on five colours × circle, square and triangle; it
never saw purple. Five purple images whose captions name the colour with the trigger word go through
``train`` with the centre recipe of ``bench/lora_quality.py`` and the run's own final evaluation is
checked; so is the same recipe, a third as long, with the sign of the training target flipped (a test
double of the family's ``add_noise``). Figures: docs/quality.md.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from bench.lora_quality import (
    BASE_MULTIPLE,
    CENTRE,
    FIDELITY_FLOOR,
    PRESERVATION_FLOOR,
    flipped_target,
    passes_floors,
    train_recipe,
)

from loramill.engine.reference.clip import CLIP_WEIGHTS
from loramill.engine.reference.models import COMPONENT_FILES, MANIFEST, WEIGHTS_DIR

TRAINED = MANIFEST.is_file() and all((WEIGHTS_DIR / f).is_file() for f in (*COMPONENT_FILES["sd15"].values(),
                                                                             CLIP_WEIGHTS))
BASE_ADHERENCE = 0.9  # issue 12's target for the base models
pytestmark = pytest.mark.skipif(not TRAINED, reason="the trained reference SD 1.5 and CLIP weights are not in this "
                                "checkout (make reference-models)")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """The centre recipe trained on the reference SD 1.5 as it is, and for a third of its steps with the target's
    sign flipped (100 flipped steps already break everything: divergence 0.39, CLIP preservation −0.17, loss
    1.85; the full 300 cost 30 s more of every ``make test``)."""
    from loramill.engine.reference.models import write_reference_model

    root = tmp_path_factory.mktemp("learning")
    model, clip = write_reference_model("sd15", root / "sd15"), write_reference_model("clip", root / "clip")
    good = train_recipe(model, clip, CENTRE, root / "good", eval_every=CENTRE.steps)
    flipped = replace(CENTRE, steps=CENTRE.steps // 3)
    with flipped_target():
        bad = train_recipe(model, clip, flipped, root / "flipped", eval_every=flipped.steps)
    return {"good": good["final"], "flipped": bad["final"]}


def test_flipped_training_target_is_caught_by_preservation_and_loss(runs: dict[str, dict[str, Any]]) -> None:
    good, bad = runs["good"], runs["flipped"]
    # Measured (docs/quality.md): divergence 0.0006 vs 0.083, preservation_clip 0.97 vs 0.23, loss 0.017 vs
    # 1.18. Teacher preservation (in the centre recipe) holds the denoiser's outputs near the base's on the
    # base prompts even with a wrong target (at lr 2e-3 the divergence rose only 8x); the images still break.
    assert bad["divergence"] > 4 * good["divergence"]
    assert bad["preservation_clip"] < good["preservation_clip"] - 0.2
    assert bad["loss_train"] > 5 * good["loss_train"]


def test_new_concept_passes_the_floors_only_with_the_right_target(runs: dict[str, dict[str, Any]]) -> None:
    good, bad = runs["good"], runs["flipped"]
    if good["preservation_classifier_base"] < BASE_ADHERENCE:
        # the world's premise is a base that draws its own prompts (tests/engine/reference checks it); without it
        # fidelity and preservation by the scorer mean nothing, and the failure is the reference model's
        pytest.skip(f"the reference SD 1.5 draws {good['preservation_classifier_base']:.0%} of its base prompts "
                    f"right, under {BASE_ADHERENCE:.0%}: learning cannot be judged by the scorer on it")
    assert good["classifier"] >= FIDELITY_FLOOR and good["classifier"] >= BASE_MULTIPLE * good["classifier_base"]
    assert good["preservation_classifier"] >= PRESERVATION_FLOOR
    assert passes_floors(good) and not passes_floors(bad)
