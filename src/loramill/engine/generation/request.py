"""``GenerateRequest`` and ``LoraRef``: every option of a generation, declared once (see ``loramill.engine.options``).

The spec of the generation job kind: ``loramill generate``'s flags, the queue's generation job and the
API's ``GenerationCreate`` derive from these declarations. Kept free of torch so the services that only
check jobs load quickly.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import ConfigDict

from loramill.engine.generation.serving import SAMPLERS, UNET_FAMILIES
from loramill.engine.options import NegativePrompt, Prompt, Spec, WireCap, option


class LoraRef(Spec):
    """A LoRA file and the weight to apply it with (a queue job names it by registry id instead)."""

    model_config = ConfigDict(frozen=True)

    path: Path = option(help="the LoRA file (.safetensors)")
    weight: float = option(1.0, ge=-4, le=4, wire="weight", help="strength; 0.6-1.0 is typical")


_SHARED_GPU = "a queue worker is one shared GPU: this bounds how long one job may hold it"


class GenerateRequest(Spec):
    """One generation: a prompt, its settings and the LoRAs to apply; ``None`` = the model family's default.

    The spec of the generation job kind: ``loramill generate``'s flags, the queue's generation job and
    the API's ``GenerationCreate`` derive from these declarations (see ``loramill.engine.options``).
    """

    prompt: Prompt = option(wire="prompt", help="what to draw; may hold A1111 tags <lora:NAME:WEIGHT> (lora_dir)")
    negative_prompt: NegativePrompt = option("", wire="negativePrompt", help="what to avoid")
    loras: list[LoraRef] = option([], help="LoRAs to apply (compose a style and a subject by listing both)")
    lora_dir: Path | None = option(None, help="folder where <lora:NAME> tags in the prompt are looked up")
    steps: int | None = option(None, ge=1, le=500, wire="steps", help="denoising steps (default: the family's)",
                               wire_cap=WireCap(le=200, reason=_SHARED_GPU))
    guidance: float | None = option(None, ge=0, le=30, wire="guidanceScale", cli="--guidance",
                                    help="classifier-free guidance scale (default: the family's)")
    width: int | None = option(None, ge=64, le=4096, wire="width",
                               help="pixels (default: the model's own side, e.g. 512 for SD 1.5)",
                               wire_cap=WireCap(le=2048, multiple_of=8, reason=_SHARED_GPU + " and its memory"))
    height: int | None = option(None, ge=64, le=4096, wire="height",
                                help="pixels (default: the model's own side, e.g. 512 for SD 1.5)",
                                wire_cap=WireCap(le=2048, multiple_of=8, reason=_SHARED_GPU + " and its memory"))
    seed: int = option(0, ge=0, le=2**32 - 1, wire="seed", help="seed of the first image; image n uses seed + n")
    num_images: int = option(1, ge=1, le=16, wire="numImages", help="images to generate",
                             wire_cap=WireCap(le=8, reason=_SHARED_GPU))
    sampler: str = option("default", choices=SAMPLERS, wire="sampler", families=UNET_FAMILIES,
                          why="FLUX and Würstchen keep their own schedulers",
                          help="the solver: default (the generator's: Euler unless LORAMILL_GENERATION_SAMPLER says "
                               "otherwise), euler, dpmpp (DPM-Solver++ 2M), unipc; lcm or tcd only with a few-step "
                               "LoRA")
    deep_cache: int = option(1, ge=1, le=10, wire="deepCache", families=UNET_FAMILIES,
                             why="DeepCache needs a UNet's skip connections",
                             help="run the UNet's deep blocks every N-th step and reuse them between (DeepCache); "
                                  "1 = off, 2-3 trade a little detail for speed")
