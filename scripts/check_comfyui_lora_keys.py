"""Check loramill's LoRA exports against ComfyUI's own key-map code, at the real models' sizes.

Not part of ``make test`` (it needs a checkout nobody vendors): give it Forge's bundled copy of ComfyUI's
``lora.py``/``utils.py`` (``packages_3rdparty/comfyui_lora_collection`` in lllyasviel/stable-diffusion-webui-forge,
which imports only torch, numpy and PIL). For each layout × family it builds the real SD 1.5, SDXL and
FLUX.1 module names (on the meta device: no weights), exports a rank-1 LoRA on loramill's default layers,
asks ComfyUI's ``model_lora_keys_unet``/``model_lora_keys_clip``/``load_lora`` which keys load, and compares
the result with the ComfyUI and Forge cells of ``engine/lora/layouts.py``. Exit status 1 on a mismatch.

    python scripts/check_comfyui_lora_keys.py /path/to/stable-diffusion-webui-forge
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

from loramill.engine.families import get_family
from loramill.engine.lora.formats import to_layout
from loramill.engine.lora.layouts import FAMILIES, LOADS, LORA_FORMATS, NO, TEXT_ONLY, YES

CLIP_PARTS = ("mlp.fc1", "mlp.fc2", "self_attn.k_proj", "self_attn.q_proj", "self_attn.v_proj", "self_attn.out_proj")
# The configs ComfyUI detects for these checkpoints (comfy/model_detection.py, supported_models.py).
COMFY_UNET = {
    "sd15": {"num_res_blocks": [2, 2, 2, 2], "channel_mult": [1, 2, 4, 4], "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
             "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], "transformer_depth_middle": 1},
    "sdxl": {"num_res_blocks": [2, 2, 2], "channel_mult": [1, 2, 4], "transformer_depth": [0, 0, 2, 2, 10, 10],
             "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10], "transformer_depth_middle": 10},
    "flux": {"depth": 19, "depth_single_blocks": 38, "hidden_size": 3072},
}
CLIP_LAYERS = {"sd15": {"clip_l": 12}, "sdxl": {"clip_l": 12, "clip_g": 32}, "flux": {"clip_l": 12}}


def real_models(family: str) -> dict[str, torch.nn.Module]:
    """The family's denoiser and CLIP text encoders at real size, without weights."""
    from diffusers import FluxTransformer2DModel, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    clip_l = CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12)
    with torch.device("meta"):
        if family == "sd15":
            return {"unet": UNet2DConditionModel(cross_attention_dim=768), "text_encoder": CLIPTextModel(clip_l)}
        if family == "sdxl":
            clip_g = CLIPTextConfig(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                                    num_attention_heads=20, projection_dim=1280)
            unet = UNet2DConditionModel(
                block_out_channels=(320, 640, 1280), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D",
                                                                       "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                transformer_layers_per_block=(1, 2, 10), cross_attention_dim=2048, attention_head_dim=(5, 10, 20),
                use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
                projection_class_embeddings_input_dim=2816)
            return {"unet": unet, "text_encoder": CLIPTextModel(clip_l),
                    "text_encoder_2": CLIPTextModelWithProjection(clip_g)}
        return {"transformer": FluxTransformer2DModel(), "text_encoder": CLIPTextModel(clip_l)}


def rank1_lora(module: torch.nn.Module, targets: list[str]) -> dict[str, torch.Tensor]:
    """A peft-style state dict (rank 1, real shapes) on the Linear layers peft would pick for ``targets``."""
    state = {}
    for name, layer in module.named_modules():
        if isinstance(layer, torch.nn.Linear) and any(name == t or name.endswith("." + t) for t in targets):
            state[f"{name}.lora_A.weight"] = torch.zeros(1, layer.in_features)
            state[f"{name}.lora_B.weight"] = torch.zeros(layer.out_features, 1)
    return state


def comfy_model(family: str, utils) -> tuple[SimpleNamespace, SimpleNamespace]:  # type: ignore[no-untyped-def]
    """Stand-ins for ComfyUI's model and CLIP objects: their state-dict key names and configs."""
    config = COMFY_UNET[family]
    if family == "flux":
        mapped = utils.flux_to_diffusers(config, output_prefix="diffusion_model.").values()
        unet_keys = {v[0] if isinstance(v, tuple) else v for v in mapped}
        repo = "black-forest-labs/FLUX.1-dev"
    else:
        unet_keys = {"diffusion_model." + v for v in utils.unet_to_diffusers(config).values()}
        repo = "runwayml/stable-diffusion-v1-5" if family == "sd15" else "stabilityai/stable-diffusion-xl-base-1.0"
    clip_keys = {f"{clip}.transformer.text_model.encoder.layers.{b}.{part}.weight"
                 for clip, layers in CLIP_LAYERS[family].items() for b in range(layers) for part in CLIP_PARTS}
    model = SimpleNamespace(state_dict=lambda: dict.fromkeys(unet_keys), diffusion_model=SimpleNamespace(config=config),
                            config=SimpleNamespace(huggingface_repo=repo))
    return model, SimpleNamespace(state_dict=lambda: dict.fromkeys(clip_keys))


def main(forge_root: str) -> int:
    sys.path.insert(0, str(Path(forge_root).resolve()))
    from packages_3rdparty.comfyui_lora_collection import lora as comfy_lora
    from packages_3rdparty.comfyui_lora_collection import utils as comfy_utils

    logging.disable(logging.WARNING)
    failures = 0
    print(f"{'layout':<11} {'family':<6} {'keys':>6} {'loaded':>7} {'text-encoder':>13}  ComfyUI rule  table")
    for family in FAMILIES:
        fam = get_family(family)
        models = real_models(family)
        layers = {name: rank1_lora(module, fam.DEFAULT_TARGET_MODULES if name == fam.DENOISER
                                   else fam.TEXT_ENCODER_TARGET_MODULES) for name, module in models.items()}
        model, clip = comfy_model(family, comfy_utils)
        _, key_map = comfy_lora.model_lora_keys_unet(model, {})
        _, key_map = comfy_lora.model_lora_keys_clip(clip, key_map)
        for fmt in LORA_FORMATS:
            tensors = to_layout(fmt, layers, fam.KOHYA_PREFIXES, 1, 1.0)
            _, remaining = comfy_lora.load_lora(tensors, key_map)
            loaded = set(tensors) - set(remaining)
            text = {k for k in tensors if k.startswith(("lora_te", "text_encoder"))}
            seen = YES if not remaining else NO if not loaded else TEXT_ONLY if loaded == text else "partly"
            claimed = LOADS[(fmt, family)]["ComfyUI"].loads
            ok = seen == claimed == LOADS[(fmt, family)]["Forge"].loads
            failures += not ok
            print(f"{fmt:<11} {family:<6} {len(tensors):>6} {len(loaded):>7} {len(text & loaded):>6}/{len(text):<6}"
                  f"  {seen:<12}  {claimed}{'' if ok else '  MISMATCH'}")
    return 1 if failures else 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1]))
