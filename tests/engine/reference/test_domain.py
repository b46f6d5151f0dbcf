"""The shape domain: deterministic specs, the captions the models are trained on, the pixels drawn."""

from __future__ import annotations

import numpy as np
import pytest

from loramill.engine.models.tokenizers import clip_tokenizer
from loramill.engine.reference import domain
from loramill.engine.reference.models import CLIP_TOKENS, t5_tokenizer, tokenizer


def test_specs_are_the_same_for_a_seed_and_differ_across_seeds():
    again = domain.specs_for("all", 50, seed=3)
    assert again == domain.specs_for("all", 50, seed=3)
    assert again != domain.specs_for("all", 50, seed=4)
    assert np.array_equal(domain.render_batch(again[:5]), domain.render_batch(domain.specs_for("all", 5, seed=3)))


def test_base_split_holds_out_the_new_concepts():
    specs = domain.specs_for("base", 400, seed=0)
    assert {s.colour for s in specs} == set(domain.BASE_COLOURS)
    assert {s.shape for s in specs} == set(domain.BASE_SHAPES)
    assert {s.texture for s in specs} == {"solid"}
    every = domain.specs_for("all", 400, seed=0)
    assert {"purple"} <= {s.colour for s in every} and {"star"} <= {s.shape for s in every}
    assert "striped" in {s.texture for s in every}


def test_caption_names_colour_texture_shape_and_background():
    assert domain.Shape("red", "circle").caption == "a red circle on a white background"
    assert domain.Shape("orange", "star", "black", "striped").caption == "an orange striped star on a black background"


def test_render_draws_the_colour_at_the_centre_on_the_background():
    image = np.asarray(domain.render(domain.Shape("blue", "square", "black", x=32, y=32, radius=14)))
    assert tuple(image[32, 32]) == domain.COLOURS["blue"]
    assert tuple(image[1, 1]) == (0, 0, 0)


def test_unknown_concept_names_the_field():
    with pytest.raises(ValueError, match="colour 'pink'"):
        domain.Shape("pink", "circle")


def test_reference_tokenizers_keep_every_caption_whole():
    # 16 tokens truncated "a yellow triangle" in issue 12's experiment: the domain's words are whole tokens here.
    longest = domain.caption("yellow", "triangle", "white", "striped")
    for tok in (tokenizer(), t5_tokenizer()):
        ids = tok(longest, truncation=True, max_length=CLIP_TOKENS).input_ids
        assert tok.decode(ids, skip_special_tokens=True).replace(" ", "") == longest.replace(" ", "")
    assert len(tokenizer()(longest).input_ids) < len(clip_tokenizer()(longest).input_ids)
