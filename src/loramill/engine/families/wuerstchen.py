"""Würstchen (v2): a text-conditioned prior makes a tiny 24×24 latent, a decoder expands it — generation only.

Prompt2Pic serves Würstchen because its denoising runs on a 42× compressed latent, cheap enough for CPU
workers. loramill generates with it but trains no LoRAs for it (the trainers and LoRA files loramill
writes are for SD 1.5, SDXL and FLUX.1), so ``TRAINABLE`` is false and a LoRA request is refused by name.

Why the loader builds the pipeline from its parts: in diffusers ≥ 0.36 the Würstchen classes live in
``diffusers.pipelines.deprecated`` and the library names that real Würstchen folders record in their
``model_index.json`` (``"wuerstchen"``, or ``"diffusers"`` for the decoder) no longer resolve, so
``from_pretrained`` on the folder fails for real weights and ours alike. Loading each component from its
subfolder with its own class reads the same files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from loramill.errors import InvalidInput

PIPELINE_CLASS = "WuerstchenCombinedPipeline"
TRAINABLE = False
DENOISER = "prior_prior"
TEXT_ENCODERS = ("text_encoder", "prior_text_encoder")
DEFAULT_TARGET_MODULES: list[str] = []
TEXT_ENCODER_TARGET_MODULES: list[str] = []
KOHYA_PREFIXES: dict[str, str] = {}
KOHYA_BASE_MODEL_VERSION = ""
# The prior's latent is ceil(side / 42.67); the decoder upsamples it by 10.67 and the VQ-GAN by 4, so any
# multiple of 128 maps back to the same side exactly.
RESOLUTION_MULTIPLE = 128
DEFAULT_SIZE = 1024
DEFAULT_STEPS = 30  # prior steps; the decoder keeps its own 12 (diffusers' default)
DEFAULT_GUIDANCE = 4.0  # the prior's classifier-free guidance (diffusers' default)
DECODER_STEPS = 12
DECODER_GUIDANCE = 0.0
# The combined pipeline reports the prior's steps and the decoder's through two callbacks; progress counts both.
STEP_CALLBACKS = ("prior_callback_on_step_end", "callback_on_step_end")
EXTRA_STEPS = DECODER_STEPS

# component name → (module, class) for the parts that diffusers no longer resolves from the folder.
_COMPONENTS: dict[str, tuple[str, str]] = {
    "prior_prior": ("diffusers.pipelines.deprecated.wuerstchen", "WuerstchenPrior"),
    "decoder": ("diffusers.pipelines.deprecated.wuerstchen", "WuerstchenDiffNeXt"),
    "vqgan": ("diffusers.pipelines.deprecated.wuerstchen", "PaellaVQModel"),
    "text_encoder": ("transformers", "CLIPTextModel"),
    "prior_text_encoder": ("transformers", "CLIPTextModel"),
    "tokenizer": ("transformers", "CLIPTokenizer"),
    "prior_tokenizer": ("transformers", "CLIPTokenizer"),
    "scheduler": ("diffusers", "DDPMWuerstchenScheduler"),
    "prior_scheduler": ("diffusers", "DDPMWuerstchenScheduler"),
}


def load_pipeline(source: str, *, dtype: torch.dtype = torch.float32) -> Any:
    """Load a Würstchen combined pipeline from a diffusers folder (as ``warp-ai/wuerstchen`` ships it)."""
    import importlib

    from diffusers import WuerstchenCombinedPipeline

    folder = Path(source).expanduser()
    if not (folder / "model_index.json").is_file():
        raise InvalidInput(f"Würstchen model {source!r} must be a diffusers folder with model_index.json "
                           "(download warp-ai/wuerstchen where the hub is reachable and pass its folder)",
                           code="model_not_found", field="model")
    parts: dict[str, Any] = {}
    for name, (module_name, class_name) in _COMPONENTS.items():
        cls = getattr(importlib.import_module(module_name), class_name)
        try:
            if class_name.endswith("Tokenizer") or class_name.endswith("Scheduler"):
                parts[name] = cls.from_pretrained(str(folder), subfolder=name)
            else:
                parts[name] = cls.from_pretrained(str(folder), subfolder=name, torch_dtype=dtype)
        except (OSError, ValueError) as exc:
            raise InvalidInput(f"could not load {name} of Würstchen model {source!r}: {exc}; the folder needs "
                               f"the subfolders {', '.join(_COMPONENTS)}", code="model_load_failed",
                               field="model") from exc
    return WuerstchenCombinedPipeline(**parts)


def not_trainable(what: str) -> InvalidInput:
    """The error for asking Würstchen for something that needs LoRA support."""
    return InvalidInput(f"{what}: Würstchen generates without LoRAs in loramill (its LoRAs are trained for SD 1.5, "
                        "SDXL and FLUX.1); remove the LoRAs or choose one of those base models",
                        code="unsupported_for_family", field="loras")


def encode_prompts(pipe: Any, prompts: list[str]) -> dict[str, torch.Tensor]:
    raise not_trainable("training")


def encode_images(pipe: Any, pixels: torch.Tensor) -> torch.Tensor:
    raise not_trainable("training")


def add_noise(*args: Any, **kwargs: Any) -> Any:
    raise not_trainable("training")


def predict(*args: Any, **kwargs: Any) -> torch.Tensor:
    raise not_trainable("training")


def training_target(*args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    raise not_trainable("training")


def claims_lora_keys(keys: set[str]) -> bool:
    return False  # no LoRA file is ever Würstchen's here


def generation_kwargs(*, prompt: str | list[str], negative_prompt: str | list[str], steps: int, guidance: float,
                      width: int, height: int, num_images: int,
                      generator: torch.Generator | list[torch.Generator], pipe: Any = None) -> dict[str, Any]:
    """``steps`` and ``guidance`` drive the prior (where the image is decided); the decoder keeps its defaults."""
    return dict(prompt=prompt, negative_prompt=negative_prompt or None, prior_num_inference_steps=steps,
                prior_guidance_scale=guidance, num_inference_steps=DECODER_STEPS,
                decoder_guidance_scale=DECODER_GUIDANCE, width=width, height=height,
                num_images_per_prompt=num_images, generator=generator)
