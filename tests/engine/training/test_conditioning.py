"""Caption dropout and trigger-free preservation prompts, and LoRA+ parameter groups."""

from __future__ import annotations

import pytest

from loramill.engine.training.conditioning import drop_captions, preservation_prompts, without_trigger


def test_caption_dropout_is_deterministic_and_near_its_rate():
    captions = ["sks, a cat"] * 4
    drawn = [drop_captions(captions, 0.25, seed=3, micro=m) for m in range(500)]
    assert drawn == [drop_captions(captions, 0.25, seed=3, micro=m) for m in range(500)]
    dropped = sum(c == "" for row in drawn for c in row) / 2000
    assert dropped == pytest.approx(0.25, abs=0.04)
    assert drop_captions(captions, 0.0, seed=3, micro=1) == captions


def test_without_trigger_replaces_whole_words_only():
    assert without_trigger("sks, a photo of sks dog", ["sks"], "dog") == "dog, a photo of dog dog"
    assert without_trigger("sks, a drawing", ["sks"], None) == "a drawing"
    assert without_trigger("asks sks", ["sks"], "cat") == "asks cat"
    keep = ["one", "two", "three"]
    drawn = [preservation_prompts(["sks a", "sks b"], ["sks"], None, keep, micro=m) for m in range(3)]
    assert drawn == [["a", "one"], ["a", "two"], ["a", "three"]]
    assert preservation_prompts(["sks a"], ["sks"], None, [], micro=5) == ["a"]
