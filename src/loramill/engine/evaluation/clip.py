"""CLIP image and text embeddings from any CLIP model a user points at (a transformers ``CLIPModel`` folder).

Fidelity and preservation compare images by the cosine of their CLIP image embeddings, the metric
the consistency checks in the field use. The model is whatever the user trusts: OpenAI's ViT-L/14 on
a GPU host, or the tiny one the reference world ships, trained on its shapes so that its similarity
means something there. Images are preprocessed as the folder's ``preprocessor_config.json`` says, or,
when there is none, resized to the vision tower's input size and normalised with CLIP's statistics.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from PIL import Image

from loramill.errors import InvalidInput

# OpenAI CLIP's normalisation, the default of every CLIPImageProcessor.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ClipEncoder:
    """A loaded CLIP model: unit-length image and text embeddings, on the CPU unless told otherwise."""

    def __init__(self, model: Any, processor: Any = None, tokenizer: Any = None, device: str = "cpu") -> None:
        self.model = model.eval().to(device)
        self.processor = processor
        self.tokenizer = tokenizer
        self.device = device
        self.image_size = int(model.config.vision_config.image_size)

    @classmethod
    def load(cls, source: str | Path, device: str = "cpu") -> ClipEncoder:
        """Load a ``CLIPModel`` folder (``save_pretrained``); its processor and tokenizer when it has them."""
        from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

        path = Path(source).expanduser()
        if not (path / "config.json").is_file():
            raise InvalidInput(f"--clip {source}: not a CLIP model folder (no config.json); give a folder saved "
                               "with transformers' CLIPModel.save_pretrained, e.g. the reference world's "
                               "(loramill models reference)", code="model_not_found", field="clip")
        try:
            model = CLIPModel.from_pretrained(str(path))
        except (OSError, ValueError) as exc:
            raise InvalidInput(f"--clip {source}: could not load it as a transformers CLIPModel ({exc})",
                               code="model_load_failed", field="clip") from exc
        processor = None
        # CLIPImageProcessor.save_pretrained writes preprocessor_config.json; CLIPProcessor (newer
        # transformers) may write processor_config.json holding the image processor's settings
        if any((path / name).is_file() for name in ("preprocessor_config.json", "processor_config.json")):
            processor = CLIPImageProcessor.from_pretrained(str(path))
        tokenizer = None
        if any((path / name).is_file() for name in ("tokenizer.json", "vocab.json", "tokenizer_config.json")):
            tokenizer = AutoTokenizer.from_pretrained(str(path))
        return cls(model, processor, tokenizer, device)

    def pixels(self, images: list[Image.Image]) -> torch.Tensor:
        """The model's input tensor for ``images`` (N, 3, size, size)."""
        if self.processor is not None:
            return self.processor(images=images, return_tensors="pt")["pixel_values"]
        size = self.image_size
        mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
        std = torch.tensor(CLIP_STD).view(3, 1, 1)
        rows = []
        for image in images:
            resized = image.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
            tensor = torch.frombuffer(bytearray(resized.tobytes()), dtype=torch.uint8).view(size, size, 3)
            rows.append((tensor.permute(2, 0, 1).float() / 255 - mean) / std)
        return torch.stack(rows)

    @torch.no_grad()
    def embed_images(self, images: list[Image.Image], batch_size: int = 32) -> torch.Tensor:
        """Unit-length image embeddings, one row per image."""
        if not images:
            return torch.empty(0, self.model.config.projection_dim)
        parts = []
        for start in range(0, len(images), batch_size):
            pixels = self.pixels(images[start:start + batch_size]).to(self.device)
            parts.append(_features(self.model.get_image_features(pixel_values=pixels)))
        return torch.nn.functional.normalize(torch.cat(parts).float(), dim=-1).cpu()

    @torch.no_grad()
    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        """Unit-length text embeddings, one row per text (needs a tokenizer in the folder)."""
        if self.tokenizer is None:
            raise InvalidInput("this CLIP folder has no tokenizer, so it cannot embed text; use image similarity "
                               "or save the tokenizer beside the model", field="clip")
        tokens = self.tokenizer(texts, padding=True, truncation=True, return_tensors="pt").to(self.device)
        features = _features(self.model.get_text_features(**tokens))
        return torch.nn.functional.normalize(features.float(), dim=-1).cpu()


def _features(output: Any) -> torch.Tensor:
    # transformers 5 returns a model output whose pooler_output is the projected embedding; 4.x a tensor
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def mean_similarity(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean cosine similarity over all pairs of rows of two unit-length embedding matrices."""
    if a.numel() == 0 or b.numel() == 0:
        raise ValueError("mean_similarity needs at least one embedding on each side")
    return float((a @ b.T).mean())


def paired_similarity(a: torch.Tensor, b: torch.Tensor) -> list[float]:
    """Cosine similarity of row i of ``a`` with row i of ``b`` (the same prompt and seed, two models)."""
    return [float(x) for x in (a * b).sum(dim=-1)]
