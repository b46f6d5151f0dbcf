"""Class images for prior preservation are drawn as the model reads its prompts."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from PIL import Image

from loramill.engine.families import get_family
from loramill.engine.training.preservation import generate_class_images


class RecordingPipe:
    """A FLUX.1 pipeline's call, recorded; its T5 tokenizer declares 32 tokens, as the reference model's does."""

    def __init__(self) -> None:
        self.tokenizer_2 = SimpleNamespace(model_max_length=32)
        self.calls: list[dict[str, Any]] = []

    def __call__(self, **kwargs: Any) -> Any:
        self.calls.append(kwargs)
        return SimpleNamespace(images=[Image.new("RGB", (kwargs["width"], kwargs["height"]))])


def test_flux_class_images_pad_prompts_to_the_length_the_model_reads(tmp_path: Path) -> None:
    # Without the pipeline the family pads T5 prompts to FLUX.1's 512: a model whose tokenizer declares fewer
    # (trained on 32) then draws from features it never saw (the reference FLUX.1: 12% of its prompts, not 90%).
    pipe = RecordingPipe()
    generate_class_images(get_family("flux"), pipe, "a shape", 2, tmp_path, side=64, seed=0, steps=2)
    assert [call["max_sequence_length"] for call in pipe.calls] == [32, 32]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["class-0000.png", "class-0000.txt", "class-0001.png",
                                                            "class-0001.txt"]
