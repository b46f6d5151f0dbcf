"""Real-size models with random weights: the published architectures at full size, for benchmarks and GPU checks.

Speed and memory depend on shapes, not on what the weights learned, so a random SD 1.5 (1.07B
parameters), SDXL (3.5B) or FLUX.1 (16.9B) times and sizes like the real one, with no download.
Tokenizers and schedulers are the tiny models' (engine/models/tiny.py): they fix no shape that matters.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from loramill.engine.planning.architectures import OPEN_CLIP_BIG_G, architecture

# Würstchen v2 is generation-only, so the training planner's architectures do not list it. Its parts as
# diffusers' conversion script builds warp-ai/wuerstchen and warp-ai/wuerstchen-prior: the prior (stage C)
# with c 1536, depth 32, 24 heads, conditioned on OpenCLIP bigG's hidden states; the decoder (stage B) and
# the Paella VQ-GAN (stage A) at their classes' defaults, the decoder conditioned on OpenCLIP ViT-H.
OPEN_CLIP_H = dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_hidden_layers=24,
                   max_position_embeddings=77, vocab_size=49408, hidden_act="gelu", projection_dim=1024)
WUERSTCHEN: dict[str, tuple[str, dict[str, Any]]] = {
    "prior_prior": ("WuerstchenPrior", dict(c_in=16, c=1536, c_cond=1280, c_r=64, depth=32, nhead=24)),
    "decoder": ("WuerstchenDiffNeXt", {}),
    "vqgan": ("PaellaVQModel", {}),
    "prior_text_encoder": ("CLIPTextModel", OPEN_CLIP_BIG_G),
    "text_encoder": ("CLIPTextModel", OPEN_CLIP_H),
}


def build_real_size(family: str, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                    seed: int = 0) -> Any:
    """The ``family`` pipeline at real size with seeded random weights, built directly on ``device``."""
    import diffusers
    import transformers

    from loramill.engine.models import tiny
    from loramill.engine.planning.architectures import ARCHITECTURES

    if family != "wuerstchen":
        arch = ARCHITECTURES[family] if family in ARCHITECTURES else architecture(family)
        parts = {_denoiser_attr(family): arch.denoiser, "vae": ("AutoencoderKL", arch.vae), **arch.text_encoders}
    else:
        parts = WUERSTCHEN
    template = tiny.BUILDERS[family]()  # tokenizers, scheduler and pipeline class of the family
    torch.manual_seed(seed)
    default = torch.get_default_dtype()
    # Parameters are created in ``dtype`` on ``device`` (FLUX in fp32 would be 48 GB before any cast).
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            components: dict[str, Any] = {}
            for name, (cls_name, config) in parts.items():
                if cls_name.startswith("Wuerstchen") or cls_name.startswith("Paella"):
                    from diffusers.pipelines.deprecated import wuerstchen

                    components[name] = getattr(wuerstchen, cls_name).from_config(config)
                elif hasattr(diffusers, cls_name):
                    components[name] = getattr(diffusers, cls_name).from_config(config)
                else:
                    config_class = transformers.T5Config if cls_name.startswith("T5") else transformers.CLIPTextConfig
                    components[name] = getattr(transformers, cls_name)(config_class(**config))
    finally:
        torch.set_default_dtype(default)
    if family == "flux":
        components["vae"].register_to_config(scaling_factor=0.3611, shift_factor=0.1159)
    extras = {k: v for k, v in template.components.items() if k not in components}
    return type(template)(**components, **extras)


def write_real_size(family: str, out_dir: Path | str, *, seed: int = 0) -> Path:
    """Save the real-size random ``family`` model as a diffusers folder (SD 1.5: 4.3 GB in fp32)."""
    out = Path(out_dir)
    if (out / "model_index.json").exists():
        return out
    pipe = build_real_size(family, seed=seed)
    out.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(out, safe_serialization=True)
    return out


def _denoiser_attr(family: str) -> str:
    return "transformer" if family == "flux" else "unet"
