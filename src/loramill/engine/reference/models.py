"""The reference world's models: small SD 1.5 and FLUX.1 architectures, trained on the shape domain.

The architectures are the real diffusers/transformers classes (``StableDiffusionPipeline`` with a
``UNet2DConditionModel``, ``FluxPipeline`` with a ``FluxTransformer2DModel``, CLIP and T5 text encoders,
an ``AutoencoderKL``) at a few million parameters; ``build(name)`` makes one with random weights (what
``scripts/train_reference.py`` trains), ``write_reference_model(name, out_dir)`` writes the trained one as
a diffusers folder that loads through ``engine/families`` like any real model. The trained weights ship
in ``weights/`` (fp16 safetensors) with ``weights/reference.json`` (latent scale factors, provenance).

Choices that differ from the real models, and why:
- 64 px images → 8×8×4 latents; tokenizers with the domain's words and 32 positions (captions are
  ≤ 16 tokens), for CLIP and for T5 (the FLUX family pads T5 prompts to the tokenizer's declared length).
- One VAE for both families, without the 1×1 quant convolutions (FLUX's VAE has none; SD's pipeline
  handles either), so the two families see the same latent space.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from loramill.engine.reference.domain import BACKGROUNDS, COLOURS, SHAPES, TEXTURES
from loramill.errors import InvalidInput

WEIGHTS_DIR = Path(__file__).with_name("weights")
MANIFEST = WEIGHTS_DIR / "reference.json"
FAMILY_MODELS = ("sd15", "flux")  # diffusers pipelines; "clip" is the CLIP model (see clip.py)
DOMAIN_WORDS = (*COLOURS, *SHAPES, *BACKGROUNDS, *TEXTURES, "on", "background")
CLIP_TOKENS = 32
ADHERENCE_BAR = 0.9  # base prompt adherence a family's model must reach to ship (issue 12's grid)


def tokenizer() -> Any:
    from loramill.engine.models.tokenizers import clip_tokenizer

    return clip_tokenizer(model_max_length=CLIP_TOKENS, words=DOMAIN_WORDS)


def t5_tokenizer() -> Any:
    from loramill.engine.models.tokenizers import t5_tokenizer as build

    # FLUX's family pads T5 prompts to this length (engine/families/flux.py, sequence_length): 32 tokens
    # hold the domain's captions with a trigger word, where 512 made a training step 10x slower.
    return build(model_max_length=CLIP_TOKENS, words=DOMAIN_WORDS)


def clip_text_encoder(hidden: int = 64, projection: bool = False) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(hidden_size=hidden, intermediate_size=hidden * 2, num_attention_heads=4,
                            num_hidden_layers=2, vocab_size=len(tokenizer()), max_position_embeddings=CLIP_TOKENS,
                            projection_dim=hidden, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    return CLIPTextModelWithProjection(config) if projection else CLIPTextModel(config)


def vae(scaling_factor: float = 1.0, shift_factor: float | None = None) -> Any:
    """The shared VAE: 64 px ↔ 8×8×4 (four blocks give the real 8× compression)."""
    from diffusers import AutoencoderKL

    # One normalisation group: with one channel per group (8 groups over 8 channels) a channel that is
    # flat in an image was scaled up to unit variance, and every shape came out as coloured noise.
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
                         block_out_channels=(8, 16, 32, 64), norm_num_groups=1,
                         down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                         sample_size=64, use_quant_conv=False, use_post_quant_conv=False,
                         scaling_factor=scaling_factor, shift_factor=shift_factor)


def sd15_unet() -> Any:
    """SD 1.5's UNet layout (cross-attention in every resolution and the mid block), 32/64/64 channels."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64, 64),
        norm_num_groups=16, down_block_types=("CrossAttnDownBlock2D",) * 3, up_block_types=("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=64, attention_head_dim=8)


def flux_transformer() -> Any:
    """FLUX.1-dev's transformer (double- and single-stream blocks, guidance embedding), 8 heads of 16.

    Four heads (0.60 M parameters) read 85.0% of the grid after 12000 steps; eight read the bar (docs/quality.md).
    """
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel(patch_size=1, in_channels=16, out_channels=None, num_layers=2,
                                  num_single_layers=2, attention_head_dim=16, num_attention_heads=8,
                                  joint_attention_dim=32, pooled_projection_dim=64, guidance_embeds=True,
                                  axes_dims_rope=(4, 6, 6))


def t5_encoder() -> Any:
    from transformers import T5Config, T5EncoderModel

    # decoder_start_token_id is a PretrainedConfig keyword T5Config passes on (its stubs do not list it).
    extra: dict[str, Any] = {"decoder_start_token_id": 0, "pad_token_id": 0, "eos_token_id": 1}
    return T5EncoderModel(T5Config(vocab_size=len(t5_tokenizer()), d_model=32, d_kv=8, d_ff=64, num_layers=2,
                                   num_heads=4, relative_attention_num_buckets=8, **extra))


def build(name: str, scales: dict[str, float] | None = None) -> Any:
    """A ``name`` pipeline ("sd15", "flux") with random weights; ``scales`` sets the VAE's latent factors."""
    from diffusers import (
        EulerDiscreteScheduler,
        FlowMatchEulerDiscreteScheduler,
        FluxPipeline,
        StableDiffusionPipeline,
    )

    scales = scales or {}
    if name == "sd15":
        # The real SD 1.5 folder's noise schedule, sampled with Euler (read as DDPM, epsilon, for training).
        # The real folder's PNDM read 10% of a half-trained model's base prompts right where Euler read 43%
        # on the same weights: a multistep solver amplifies a small model's errors (docs/quality.md).
        scheduler: Any = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                                steps_offset=1, timestep_spacing="linspace")
        return StableDiffusionPipeline(
            vae=vae(scales.get("scaling_factor", 1.0)), text_encoder=clip_text_encoder(), tokenizer=tokenizer(),
            unet=sd15_unet(), scheduler=scheduler, safety_checker=None, feature_extractor=None,
            requires_safety_checker=False)
    if name == "flux":
        scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True,
                                                    base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
                                                    max_image_seq_len=4096)
        return FluxPipeline(scheduler=scheduler, vae=vae(scales.get("scaling_factor", 1.0),
                                                         scales.get("shift_factor", 0.0)),
                            text_encoder=clip_text_encoder(), tokenizer=tokenizer(), text_encoder_2=t5_encoder(),
                            tokenizer_2=t5_tokenizer(), transformer=flux_transformer())
    raise InvalidInput(f"unknown reference model {name!r}; choose one of: {', '.join((*FAMILY_MODELS, 'clip'))}",
                       code="unknown_family", field="family")


# Which weight files make up each pipeline: component attribute → file under WEIGHTS_DIR.
COMPONENT_FILES: dict[str, dict[str, str]] = {
    "sd15": {"vae": "vae.safetensors", "text_encoder": "sd15_text_encoder.safetensors",
             "unet": "sd15_unet.safetensors"},
    "flux": {"vae": "vae.safetensors", "text_encoder": "flux_text_encoder.safetensors",
             "text_encoder_2": "flux_text_encoder_2.safetensors", "transformer": "flux_transformer.safetensors"},
}


def manifest() -> dict[str, Any]:
    """``weights/reference.json``: latent scale factors and how each model was trained (figures, seeds)."""
    if not MANIFEST.is_file():
        raise InvalidInput(f"the reference weights are missing ({MANIFEST}); run `make reference-models` to train "
                           "them", code="model_not_found", field="model")
    return json.loads(MANIFEST.read_text())


def shipped() -> tuple[str, ...]:
    """The families whose trained model is in the package (it met ``ADHERENCE_BAR`` when it was trained)."""
    info = manifest() if MANIFEST.is_file() else {}
    return tuple(name for name in FAMILY_MODELS if info.get(name, {}).get("shipped")
                 and all((WEIGHTS_DIR / f).is_file() for f in COMPONENT_FILES[name].values()))


def load_trained(name: str) -> Any:
    """The trained ``name`` pipeline (fp32), built from the architecture here and the shipped weights."""
    from safetensors.torch import load_file

    if name not in COMPONENT_FILES:
        raise InvalidInput(f"unknown reference model {name!r}; choose one of: {', '.join((*FAMILY_MODELS, 'clip'))}",
                           code="unknown_family", field="family")
    info = manifest()
    missing = [key for key in ("vae", name) if key not in info]
    if missing:
        raise InvalidInput(f"the reference {name} model is not trained yet ({', '.join(missing)} missing from "
                           f"{MANIFEST}); run `make reference-models` to train it", code="model_not_found",
                           field="model")
    if not info[name].get("shipped"):
        raise InvalidInput(f"the reference {name} model is not shipped: it draws {info[name].get('adherence', 0.0):.0%} of its "
                           f"base prompts right, under the {ADHERENCE_BAR:.0%} bar; `make reference-models` trains "
                           "it further (see docs/quality.md)", code="model_not_found", field="model")
    pipe = build(name, info["vae"])
    for component, filename in COMPONENT_FILES[name].items():
        path = WEIGHTS_DIR / filename
        if not path.is_file():
            raise InvalidInput(f"reference weights {path} are missing; run `make reference-models` to train them",
                               code="model_not_found", field="model")
        state = {k: v.float() for k, v in load_file(str(path)).items()}
        getattr(pipe, component).load_state_dict(state, strict=True)
    return pipe


def write_reference_model(name: str, out_dir: Path | str) -> Path:
    """Write the trained reference ``name`` ("sd15", "flux", "clip") as a folder that loads like real weights."""
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise InvalidInput(f"{out} exists and is not empty; give a new folder for the reference model",
                           field="out_dir")
    if name == "clip":
        from loramill.engine.reference.clip import load_trained_clip

        model, processor = load_trained_clip()
        out.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out, safe_serialization=True)
        processor.save_pretrained(out)
        return out
    pipe = load_trained(name)
    out.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(out, safe_serialization=True)
    return out
