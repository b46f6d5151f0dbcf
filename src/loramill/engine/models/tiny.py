"""Tiny random-weight models of the real SD 1.5, SDXL and FLUX.1 architectures.

Real weights cannot be downloaded on the machines loramill is developed and tested on, so every family
is exercised with a model of its real architecture — the same pipeline, UNet or transformer, VAE, text
encoders, tokenizers and scheduler classes — shrunk to a few hundred thousand parameters and saved as
a real diffusers folder. The loading code that reads these reads the real ones. Deterministic for a
seed: the same seed writes the same weights.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from loramill.engine.models.tokenizers import clip_tokenizer, t5_tokenizer
from loramill.errors import InvalidInput


def _clip_text_encoder(vocab_size: int, hidden: int, projection: bool = False, layers: int = 2, heads: int = 2,
                       mlp_ratio: int = 2):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        hidden_size=hidden, intermediate_size=hidden * mlp_ratio, num_attention_heads=heads, num_hidden_layers=layers,
        vocab_size=vocab_size, max_position_embeddings=77, projection_dim=hidden,
        bos_token_id=0, eos_token_id=1, pad_token_id=1,
    )
    return CLIPTextModelWithProjection(config) if projection else CLIPTextModel(config)


def _vae(latent_channels: int = 4, flux: bool = False, channels: tuple[int, ...] = (8, 16, 16, 16),
         layers_per_block: int = 1):
    from diffusers import AutoencoderKL

    # Four blocks give the real 8x spatial compression, so latent shapes match real models.
    kwargs = dict(
        in_channels=3, out_channels=3, latent_channels=latent_channels, layers_per_block=layers_per_block,
        block_out_channels=channels, norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        sample_size=64,
    )
    if flux:
        kwargs.update(use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.1159, scaling_factor=0.3611)
    return AutoencoderKL(**kwargs)


# "larger": the same tiny UNet with a VAE and text encoder grown until they are a real share of a
# training step, as in real SD 1.5 at 512 px (the per-step benchmark uses it; tests use the default).
LARGER_VAE = dict(channels=(32, 64, 128, 128), layers_per_block=2)
LARGER_TEXT = dict(hidden=128, layers=6, heads=4, mlp_ratio=4)


def build_sd15(size: str = "default"):
    from diffusers import PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    tokenizer = clip_tokenizer()
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), norm_num_groups=16,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        # The UNet attends to the text encoder's hidden states, so it follows the encoder's width.
        cross_attention_dim=LARGER_TEXT["hidden"] if size == "larger" else 32, attention_head_dim=8,
    )
    # The real SD 1.5 folder ships PNDM for inference; training reads the same config as DDPM.
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1)
    if size == "larger":
        vae = _vae(**LARGER_VAE)  # type: ignore[arg-type]
        text = LARGER_TEXT
        text_encoder = _clip_text_encoder(len(tokenizer), text["hidden"], layers=text["layers"], heads=text["heads"],
                                          mlp_ratio=text["mlp_ratio"])
    else:
        vae, text_encoder = _vae(), _clip_text_encoder(len(tokenizer), 32)
    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


def build_sdxl():
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    tok1, tok2 = clip_tokenizer(), clip_tokenizer()
    te1 = _clip_text_encoder(len(tok1), 32)
    te2 = _clip_text_encoder(len(tok2), 32, projection=True)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), norm_num_groups=16,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True,
        # SDXL conditions on both encoders' hidden states (32 + 32) and on pooled text + 6 time ids.
        cross_attention_dim=64, addition_embed_type="text_time", addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2), projection_class_embeddings_input_dim=6 * 8 + 32,
    )
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       steps_offset=1, timestep_spacing="leading")
    return StableDiffusionXLPipeline(
        vae=_vae(), text_encoder=te1, text_encoder_2=te2, tokenizer=tok1, tokenizer_2=tok2, unet=unet,
        scheduler=scheduler, force_zeros_for_empty_prompt=True,
    )


def build_flux():
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    tok1 = clip_tokenizer()
    tok2 = t5_tokenizer(model_max_length=512)
    te1 = _clip_text_encoder(len(tok1), 32)
    te2 = T5EncoderModel(T5Config(vocab_size=len(tok2), d_model=32, d_kv=8, d_ff=64, num_layers=2,
                                  num_heads=4, relative_attention_num_buckets=8, decoder_start_token_id=0,
                                  pad_token_id=0, eos_token_id=1))
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, out_channels=None, num_layers=1, num_single_layers=1,
        attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
        guidance_embeds=True, axes_dims_rope=(4, 4, 8),
    )
    # FLUX.1-dev's scheduler: resolution-dependent timestep shift.
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
        base_image_seq_len=256, max_image_seq_len=4096,
    )
    return FluxPipeline(scheduler=scheduler, vae=_vae(latent_channels=4, flux=True), text_encoder=te1,
                        tokenizer=tok1, text_encoder_2=te2, tokenizer_2=tok2, transformer=transformer)


def build_wuerstchen():
    from diffusers import DDPMWuerstchenScheduler, WuerstchenCombinedPipeline
    from diffusers.pipelines.deprecated.wuerstchen import PaellaVQModel, WuerstchenDiffNeXt, WuerstchenPrior

    # Würstchen v2's three stages at a few ten thousand parameters each: the text-conditioned prior (stage C,
    # 16-channel latent), the decoder (stage B, conditioned on the prior's latent through its effnet
    # mappers) and the Paella VQ-GAN (stage A). The decoder's blocks follow the real level layout ("CT",
    # then "CTA" levels with cross-attention and effnet injection).
    tokenizer, prior_tokenizer = clip_tokenizer(), clip_tokenizer()
    prior = WuerstchenPrior(c_in=16, c=32, c_cond=32, c_r=8, depth=2, nhead=2, dropout=0.0)
    decoder = WuerstchenDiffNeXt(c_in=4, c_out=4, c_r=8, patch_size=2, c_cond=32, c_hidden=[16, 32],
                                 nhead=[-1, 2], blocks=[1, 1], level_config=["CT", "CTA"],
                                 inject_effnet=[False, True], effnet_embd=16, clip_embd=32, dropout=0.0)
    vqgan = PaellaVQModel(levels=2, bottleneck_blocks=1, embed_dim=16, latent_channels=4, num_vq_embeddings=64)
    return WuerstchenCombinedPipeline(
        tokenizer=tokenizer, text_encoder=_clip_text_encoder(len(tokenizer), 32), decoder=decoder,
        scheduler=DDPMWuerstchenScheduler(), vqgan=vqgan, prior_tokenizer=prior_tokenizer,
        prior_text_encoder=_clip_text_encoder(len(prior_tokenizer), 32), prior_prior=prior,
        prior_scheduler=DDPMWuerstchenScheduler(),
    )


BUILDERS: dict[str, Callable] = {"sd15": build_sd15, "sdxl": build_sdxl, "flux": build_flux,
                                 "wuerstchen": build_wuerstchen}
SIZES: dict[str, tuple[str, ...]] = {"default": ("sd15", "sdxl", "flux", "wuerstchen"), "larger": ("sd15",)}


def write_tiny_model(family: str, out_dir: Path | str, seed: int = 0, size: str = "default") -> Path:
    """Build a tiny random model of ``family`` with ``seed`` and save it as a diffusers folder at ``out_dir``.

    ``size="larger"`` (SD 1.5 only) grows the VAE and text encoder, for benchmarks where their share of a
    training step matters; the default models are unchanged by it.
    """
    if family not in BUILDERS:
        raise InvalidInput(f"unknown model family {family!r}; choose one of: {', '.join(BUILDERS)}",
                           code="unknown_family", field="family")
    if family not in SIZES.get(size, ()):
        sizes = [name for name, families in SIZES.items() if family in families]
        raise InvalidInput(f"size {size!r} is not available for {family}; choose one of: {', '.join(sizes)}",
                           code="invalid_option", field="size")
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        if not (out / "model_index.json").exists():
            raise InvalidInput(f"{out} exists and is not empty; give a new folder for the tiny model",
                               field="out_dir")
    torch.manual_seed(seed)
    pipe = BUILDERS[family](size=size) if size != "default" else BUILDERS[family]()
    out.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(out, safe_serialization=True)
    return out
