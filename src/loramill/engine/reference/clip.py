"""A tiny CLIP (transformers' ``CLIPModel``: a ViT image tower and a text tower) trained contrastively on
the shape domain, so that CLIP similarity means something in the reference world.

It is a real CLIP folder: ``CLIPModel.from_pretrained(dir)`` and ``CLIPProcessor.from_pretrained(dir)``
read it as they read ``openai/clip-vit-base-patch32``, so code that measures CLIP similarity takes any
CLIP a user points at and this one alike. API:

- ``load_clip(source)`` → ``(model, processor)`` from a folder or hub id (``load_trained_clip()``: the shipped one)
- ``image_embeddings(model, processor, images)`` / ``text_embeddings(model, processor, texts)`` → L2-normalised rows
- ``build_clip()``: the architecture with random weights (what ``scripts/train_reference.py`` trains)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from loramill.engine.reference.domain import SIZE
from loramill.errors import InvalidInput

CLIP_WEIGHTS = "clip.safetensors"
# CLIP's own normalisation constants, as in every CLIP processor config.
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


def build_clip() -> Any:
    """ViT-style image tower (8 px patches of 64 px images) and a text tower, both 64 wide, 64-d projection."""
    from transformers import CLIPConfig, CLIPModel

    from loramill.engine.reference.models import CLIP_TOKENS, tokenizer

    text = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_hidden_layers=2,
                vocab_size=len(tokenizer()), max_position_embeddings=CLIP_TOKENS, bos_token_id=0, eos_token_id=1,
                pad_token_id=1)
    vision = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_hidden_layers=3,
                  image_size=SIZE, patch_size=8)
    return CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=64))


def build_processor() -> Any:
    from transformers import CLIPImageProcessor, CLIPProcessor

    from loramill.engine.reference.models import tokenizer

    images = CLIPImageProcessor(size={"shortest_edge": SIZE}, crop_size={"height": SIZE, "width": SIZE},
                                image_mean=list(MEAN), image_std=list(STD))
    return CLIPProcessor(image_processor=images, tokenizer=tokenizer())


def load_clip(source: str | Path) -> tuple[Any, Any]:
    """A CLIP model and its processor from a folder (or hub id), in eval mode."""
    from transformers import CLIPModel, CLIPProcessor

    try:
        model = CLIPModel.from_pretrained(str(source))
        processor = CLIPProcessor.from_pretrained(str(source))
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"could not load a CLIP model from {source!r}: {exc}. Give a folder with a CLIP model "
                           "and its processor (`loramill models reference clip DIR` writes one)",
                           code="model_load_failed", field="clip") from exc
    return model.eval(), processor


def load_trained_clip() -> tuple[Any, Any]:
    """The shipped reference CLIP (fp32) and its processor."""
    from safetensors.torch import load_file

    from loramill.engine.reference.models import WEIGHTS_DIR

    path = WEIGHTS_DIR / CLIP_WEIGHTS
    if not path.is_file():
        raise InvalidInput(f"reference weights {path} are missing; run `make reference-models` to train them",
                           code="model_not_found", field="clip")
    model = build_clip()
    model.load_state_dict({k: v.float() for k, v in load_file(str(path)).items()}, strict=True)
    return model.eval(), build_processor()


def pixel_tensor(images: Sequence[Image.Image]) -> torch.Tensor:
    """Images as CLIP input at SIZE px (resized, normalised); what the processor computes, in torch."""
    import numpy as np

    arrays = [np.asarray(im.convert("RGB").resize((SIZE, SIZE), Image.Resampling.BICUBIC), dtype=np.float32)
              for im in images]
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 255.0
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


@torch.no_grad()
def image_embeddings(model: Any, processor: Any, images: Sequence[Image.Image]) -> torch.Tensor:
    """L2-normalised image embeddings, one row per image."""
    pixels = processor(images=list(images), return_tensors="pt")["pixel_values"]
    features = model.get_image_features(pixel_values=pixels)
    features = getattr(features, "pooler_output", features)
    return torch.nn.functional.normalize(features.float(), dim=-1)


@torch.no_grad()
def text_embeddings(model: Any, processor: Any, texts: Sequence[str]) -> torch.Tensor:
    """L2-normalised text embeddings, one row per text."""
    tokens = processor(text=list(texts), return_tensors="pt", padding=True, truncation=True)
    features = model.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
    features = getattr(features, "pooler_output", features)
    return torch.nn.functional.normalize(features.float(), dim=-1)
