"""The domain's scorer reads every rendered concept right and rejects garbage with a reason."""

from __future__ import annotations

import numpy as np
import pytest

from loramill.engine.reference import domain
from loramill.engine.reference.scorer import adherence, score


def test_scorer_reads_every_concept_at_random_places_and_sizes():
    specs = domain.specs_for("all", 240, seed=5)
    assert {(s.colour, s.shape, s.texture) for s in specs} >= {("purple", "star", "striped"), ("red", "circle", "solid")}
    assert adherence(domain.render_batch(specs), specs) == 1.0


def test_scorer_reports_position_and_size():
    result = score(domain.render(domain.Shape("green", "triangle", x=20, y=44, radius=12)))
    assert result.valid and result.shape == "triangle"
    assert abs(result.x * domain.SIZE - 20) < 1.5 and abs(result.y * domain.SIZE - 44) < 1.5
    assert abs(result.radius - 12) < 1.5


def _two_shapes() -> np.ndarray:
    a = np.asarray(domain.render(domain.Shape("red", "circle", x=16, y=16, radius=10)))
    b = np.asarray(domain.render(domain.Shape("blue", "square", x=46, y=46, radius=10)))
    return np.minimum(a, b)


def _two_colours() -> np.ndarray:
    image = np.asarray(domain.render(domain.Shape("red", "square", radius=16))).copy()
    image[:32][np.all(image[:32] == domain.COLOURS["red"], axis=-1)] = domain.COLOURS["blue"]
    return image


def _grey_blob() -> np.ndarray:
    image = np.full((64, 64, 3), 255, np.uint8)
    image[20:44, 20:44] = 120
    return image


def _scribble() -> np.ndarray:
    image = np.full((64, 64, 3), 255, np.uint8)
    for i in range(8, 56):
        image[i, i:i + 3] = domain.COLOURS["green"]
        image[i, 60 - i:63 - i] = domain.COLOURS["green"]
    return image


GARBAGE = {
    "noise": (lambda: np.random.default_rng(0).integers(0, 256, (64, 64, 3)).astype(np.uint8),
              "background is not one of the domain's"),
    "blank": (lambda: np.full((64, 64, 3), 255, np.uint8), "no shape"),
    "speck": (lambda: np.asarray(domain.render(domain.Shape("red", "circle", radius=2))), "shape too small"),
    "two shapes": (_two_shapes, "more than one blob"),
    "two colours": (_two_colours, "not one colour"),
    "grey blob": (_grey_blob, "not one colour"),
    "scribble": (_scribble, "no known shape fits"),
    "grey background": (lambda: np.where(np.asarray(domain.render(domain.Shape("red", "circle"))) == 255, 128,
                                         np.asarray(domain.render(domain.Shape("red", "circle")))).astype(np.uint8),
                        "background is not one of the domain's"),
}


@pytest.mark.parametrize("name", sorted(GARBAGE))
def test_scorer_rejects_garbage_with_a_reason(name):
    make, reason = GARBAGE[name]
    result = score(make())
    assert not result.valid and result.reason == reason and result.shape is None


def test_partial_border_noise_is_not_a_clean_background():
    image = np.asarray(domain.render(domain.Shape("red", "circle"))).copy()
    image[:, :4] = np.random.default_rng(1).integers(0, 256, (64, 4, 3))
    result = score(image)
    assert not result.valid and result.reason == "background is not clean"


def test_match_needs_every_named_field():
    result = score(domain.render(domain.Shape("yellow", "star", "black", "striped")))
    assert result.matches(domain.Shape("yellow", "star", "black", "striped"))
    assert not result.matches(domain.Shape("yellow", "star", "black", "solid"))
    assert result.matches(domain.Shape("yellow", "star", "white"), fields=("colour", "shape"))
