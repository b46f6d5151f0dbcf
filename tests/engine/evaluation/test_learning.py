"""A LoRA learns a concept the base never saw, and keeps what the base knew: on the trained reference world.

The reference SD 1.5 (engine/reference) draws the base colours × circle, square and triangle; it never
saw a star. Five star images with the trigger word go through ``train`` with the recipe
``bench/lora_quality.py`` found best, and the run's own final evaluation must pass the floors below
(set with margin under what the bench measured, docs/quality.md). The same run with the sign of the
training target flipped (a test double of the family) must fail them: these floors catch a wrong target.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import pytest
from bench.lora_quality import (
    BASE_MULTIPLE,
    CENTRE,
    FIDELITY_FLOOR,
    PRESERVATION_FLOOR,
    flipped_target,
    train_recipe,
)

from loramill.engine.reference.clip import CLIP_WEIGHTS
from loramill.engine.reference.models import COMPONENT_FILES, MANIFEST, WEIGHTS_DIR

TRAINED = MANIFEST.is_file() and all((WEIGHTS_DIR / f).is_file() for f in (*COMPONENT_FILES["sd15"].values(),
                                                                             CLIP_WEIGHTS))
pytestmark = pytest.mark.skipif(not TRAINED, reason="the trained reference SD 1.5 and CLIP weights are not in this "
                                "checkout (make reference-models)")


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from loramill.engine.reference.models import write_reference_model

    root = tmp_path_factory.mktemp("reference")
    return write_reference_model("sd15", root / "sd15"), write_reference_model("clip", root / "clip")


@pytest.mark.parametrize("target", ["correct", "flipped"])
def test_new_concept_lora_passes_the_floors_only_with_the_right_target(reference, tmp_path, target) -> None:
    model, clip = reference
    with flipped_target() if target == "flipped" else nullcontext():
        run = train_recipe(model, clip, CENTRE, tmp_path, eval_every=CENTRE.steps)
    final = run["final"]
    fidelity_ok = final["classifier"] >= FIDELITY_FLOOR and final["classifier"] >= BASE_MULTIPLE * final[
        "classifier_base"]
    preservation_ok = final["preservation_classifier"] >= PRESERVATION_FLOOR
    if target == "correct":
        assert fidelity_ok, f"fidelity {final['classifier']} (base {final['classifier_base']})"
        assert preservation_ok, f"preservation {final['preservation_classifier']}"
        assert final["clip"] > final["clip_base"]
    else:
        assert not (fidelity_ok and preservation_ok), f"a flipped target passed the floors: {final}"
