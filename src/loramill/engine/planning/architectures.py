"""The real architectures, as their published config files describe them, built on the meta device.

The values are those of the models' own ``config.json`` files (runwayml/stable-diffusion-v1-5,
stabilityai/stable-diffusion-xl-base-1.0, black-forest-labs/FLUX.1-dev); only what differs from the
diffusers / transformers defaults is spelled out. Built on the meta device, a model has its real
shapes and no weights: FLUX's 11.9B parameters cost nothing, so the plan needs no download.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from loramill.errors import InvalidInput

CLIP_L = dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
              max_position_embeddings=77, vocab_size=49408, hidden_act="quick_gelu", projection_dim=768)
OPEN_CLIP_BIG_G = dict(hidden_size=1280, intermediate_size=5120, num_attention_heads=20, num_hidden_layers=32,
                       max_position_embeddings=77, vocab_size=49408, hidden_act="gelu", projection_dim=1280)
T5_XXL = dict(d_model=4096, d_ff=10240, d_kv=64, num_heads=64, num_layers=24, vocab_size=32128,
              feed_forward_proj="gated-gelu", relative_attention_num_buckets=32, is_encoder_decoder=False)
SD_VAE = dict(block_out_channels=[128, 256, 512, 512], down_block_types=["DownEncoderBlock2D"] * 4,
              up_block_types=["UpDecoderBlock2D"] * 4, latent_channels=4, layers_per_block=2, sample_size=512)
FLUX_VAE = dict(SD_VAE, latent_channels=16, use_quant_conv=False, use_post_quant_conv=False, sample_size=1024)
SD15_UNET = dict(block_out_channels=[320, 640, 1280, 1280], cross_attention_dim=768, attention_head_dim=8,
                 down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
                 up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3, layers_per_block=2, sample_size=64)
SDXL_UNET = dict(block_out_channels=[320, 640, 1280], cross_attention_dim=2048, attention_head_dim=[5, 10, 20],
                 down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
                 up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], layers_per_block=2,
                 transformer_layers_per_block=[1, 2, 10], use_linear_projection=True, addition_embed_type="text_time",
                 addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816, sample_size=128)
FLUX_DEV = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
                axes_dims_rope=[16, 56, 56])


@dataclass(frozen=True)
class Architecture:
    """One family at real size: its denoiser, VAE and text encoders (class name, config)."""

    denoiser: tuple[str, dict[str, Any]]
    vae: dict[str, Any]
    text_encoders: dict[str, tuple[str, dict[str, Any]]]
    latent_channels: int
    vae_scale: int = 8
    text_tokens: int = 77


ARCHITECTURES = {
    "sd15": Architecture(("UNet2DConditionModel", SD15_UNET), SD_VAE, {"text_encoder": ("CLIPTextModel", CLIP_L)}, 4),
    "sdxl": Architecture(("UNet2DConditionModel", SDXL_UNET), SD_VAE,
                         {"text_encoder": ("CLIPTextModel", CLIP_L),
                          "text_encoder_2": ("CLIPTextModelWithProjection", OPEN_CLIP_BIG_G)}, 4),
    "flux": Architecture(("FluxTransformer2DModel", FLUX_DEV), FLUX_VAE,
                         {"text_encoder": ("CLIPTextModel", CLIP_L), "text_encoder_2": ("T5EncoderModel", T5_XXL)},
                         16, text_tokens=512),
}


def architecture(family: str) -> Architecture:
    if family not in ARCHITECTURES:
        raise InvalidInput(f"--family: unknown family {family!r}; choose one of: {', '.join(ARCHITECTURES)}",
                           code="invalid_option", field="family")
    return ARCHITECTURES[family]


def build_on_meta(class_name: str, config: dict[str, Any], dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """Instantiate a diffusers or transformers model class from ``config`` with meta tensors (no memory)."""
    import diffusers
    import transformers

    with torch.device("meta"):
        if hasattr(diffusers, class_name):
            model = getattr(diffusers, class_name).from_config(config)
        else:
            config_class = getattr(transformers, "T5Config" if class_name.startswith("T5") else "CLIPTextConfig")
            model = getattr(transformers, class_name)(config_class(**config))
    # diffusers logs a notice for every cast of a model it did not load itself; a plan casts on purpose.
    level = diffusers.utils.logging.get_verbosity()
    diffusers.utils.logging.set_verbosity_error()
    try:
        return model.to(dtype).requires_grad_(False)
    finally:
        diffusers.utils.logging.set_verbosity(level)


def architecture_of(pipe: Any, family: str) -> Architecture:
    """The architecture of a loaded pipeline (its components' own configs), to plan a run on that very model."""
    from loramill.engine.families import get_family

    module = get_family(family)
    reference = architecture(family)
    denoiser = getattr(pipe, module.DENOISER)
    encoders = {name: (type(getattr(pipe, name)).__name__, getattr(pipe, name).config.to_dict())
                for name in module.TEXT_ENCODERS if getattr(pipe, name, None) is not None}
    tokens = getattr(getattr(pipe, "tokenizer_2", None) or pipe.tokenizer, "model_max_length", reference.text_tokens)
    return Architecture((type(denoiser).__name__, dict(denoiser.config)), dict(pipe.vae.config), encoders,
                        latent_channels=pipe.vae.config.latent_channels,
                        vae_scale=2 ** (len(pipe.vae.config.block_out_channels) - 1),
                        text_tokens=min(int(tokens), 512))


def architecture_from_folder(folder: str, family: str) -> Architecture:
    """The architecture of a diffusers model folder, read from its config files alone (no weights loaded)."""
    import json
    from pathlib import Path

    from loramill.engine.families import get_family

    module = get_family(family)
    root = Path(folder)

    def config(sub: str) -> dict[str, Any]:
        path = root / sub / "config.json"
        if not path.is_file():
            raise InvalidInput(f"--model {folder}: no {sub}/config.json; give a diffusers model folder",
                               code="invalid_option", field="model")
        return dict(json.loads(path.read_text()))

    index = json.loads((root / "model_index.json").read_text()) if (root / "model_index.json").is_file() else {}
    denoiser = config(module.DENOISER)
    encoders = {}
    for name in module.TEXT_ENCODERS:
        if (root / name / "config.json").is_file():
            cfg = config(name)
            cls = index.get(name, [None, None])[1] or cfg.get("architectures", ["CLIPTextModel"])[0]
            encoders[name] = (cls, {k: v for k, v in cfg.items() if not k.startswith("_")})
    vae = config("vae")
    return Architecture((denoiser["_class_name"], denoiser), vae, encoders, latent_channels=vae["latent_channels"],
                        vae_scale=2 ** (len(vae["block_out_channels"]) - 1),
                        text_tokens=architecture(family).text_tokens)
