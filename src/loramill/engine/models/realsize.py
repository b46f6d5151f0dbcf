"""Real-size models with random weights: the published architectures at full size, for benchmarks and GPU checks.

Speed and memory depend on shapes, not on what the weights learned, so a random SD 1.5 (1.07B
parameters), SDXL (3.5B) or FLUX.1 (16.9B) times and sizes like the real one, with no download.
Tokenizers and schedulers are the tiny models' (engine/models/tiny.py): they fix no shape that matters.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from loramill.engine.planning.architectures import architecture


def build_real_size(family: str, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                    seed: int = 0) -> Any:
    """The ``family`` pipeline at real size with seeded random weights, built directly on ``device``."""
    import diffusers
    import transformers

    from loramill.engine.models import tiny
    from loramill.engine.planning.architectures import ARCHITECTURES

    arch = ARCHITECTURES[family] if family in ARCHITECTURES else architecture(family)
    template = tiny.BUILDERS[family]()  # tokenizers, scheduler and pipeline class of the family
    torch.manual_seed(seed)
    default = torch.get_default_dtype()
    # Parameters are created in ``dtype`` on ``device`` (FLUX in fp32 would be 48 GB before any cast).
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            cls_name, config = arch.denoiser
            components: dict[str, Any] = {_denoiser_attr(family): getattr(diffusers, cls_name).from_config(config),
                                          "vae": diffusers.AutoencoderKL.from_config(arch.vae)}
            for name, (cls_name, config) in arch.text_encoders.items():
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
