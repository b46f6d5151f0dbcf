"""The key rules by which ComfyUI, Forge, A1111 and sd-scripts accept LoRA keys, re-implemented for tests.

None of those tools can be installed here (each needs its own app and torch build), so the rules that
decide *which keys load* are re-implemented from their source, cited per function. Only key names and
shapes are checked: once a tool accepts a key, its arithmetic is the usual ``alpha / rank · up @ down``
(ComfyUI ``comfy/weight_adapter/lora.py`` calculate_weight: ``alpha = v[2] / mat2.shape[0]``).
"""

from __future__ import annotations

import re

import torch

# comfy/lora.py LORA_CLIP_MAP
CLIP_MAP = {"mlp.fc1": "mlp_fc1", "mlp.fc2": "mlp_fc2", "self_attn.k_proj": "self_attn_k_proj",
            "self_attn.q_proj": "self_attn_q_proj", "self_attn.v_proj": "self_attn_v_proj",
            "self_attn.out_proj": "self_attn_out_proj"}


def weight_modules(model: torch.nn.Module) -> list[str]:
    """Paths of the modules that own a ``.weight`` (what ComfyUI's key maps enumerate)."""
    return [name for name, m in model.named_modules() if name and isinstance(getattr(m, "weight", None), torch.Tensor)]


def comfy_unet_map(diffusers_unet_modules: list[str]) -> set[str]:
    """comfy/lora.py model_lora_keys_unet, the part over ``unet_to_diffusers`` (SD 1.5 / SDXL UNets)."""
    keys = set()
    for k in diffusers_unet_modules:
        keys.add("lora_unet_" + k.replace(".", "_"))
        keys.add("lycoris_" + k.replace(".", "_"))
        for prefix in ("", "unet."):
            key = prefix + k.replace(".to_", ".processor.to_")
            keys.add(key[:-2] if key.endswith(".to_out.0") else key)
    return keys


def comfy_flux_map(diffusers_modules: list[str], bfl_modules: list[str]) -> set[str]:
    """comfy/lora.py model_lora_keys_unet for Flux: ``lora_unet_`` + the model's (BFL) keys, and over
    ``flux_to_diffusers``: ``transformer.``, ``lycoris_``, ``lora_transformer_`` + diffusers names."""
    keys = {"lora_unet_" + k.replace(".", "_") for k in bfl_modules} | set(bfl_modules)
    for k in diffusers_modules:
        keys |= {"transformer." + k, "lycoris_" + k.replace(".", "_"), "lora_transformer_" + k.replace(".", "_")}
    return keys


def comfy_clip_map(layers: int, component: str) -> set[str]:
    """comfy/lora.py model_lora_keys_clip: CLIP-L (``text_encoder``) and, for SDXL, CLIP-G (``text_encoder_2``)."""
    keys = set()
    for b in range(layers):
        for c, flat in CLIP_MAP.items():
            if component == "text_encoder":
                keys |= {f"lora_te_text_model_encoder_layers_{b}_{flat}", f"lora_te1_text_model_encoder_layers_{b}_{flat}",
                         f"text_encoder.text_model.encoder.layers.{b}.{c}"}
            else:
                keys |= {f"lora_te2_text_model_encoder_layers_{b}_{flat}",
                         f"text_encoder_2.text_model.encoder.layers.{b}.{c}"}
    return keys


def comfy_loaded(file_keys: set[str], key_map: set[str]) -> set[str]:
    """comfy/lora.py load_lora (comfy/weight_adapter/lora.py LoRAAdapter.load): the file keys it consumes
    for each mapped name x; every other key is logged as "lora key not loaded" and ignored."""
    loaded = set()
    for x in key_map:
        for up, down in ((".lora_up.weight", ".lora_down.weight"), ("_lora.up.weight", "_lora.down.weight"),
                         (".lora_B.weight", ".lora_A.weight"), (".lora.up.weight", ".lora.down.weight"),
                         (".lora_linear_layer.up.weight", ".lora_linear_layer.down.weight")):
            if x + up in file_keys:
                loaded |= {x + up, x + down}
                break
        if x + ".alpha" in file_keys:
            loaded.add(x + ".alpha")
    return loaded & file_keys


# extensions-builtin/Lora/networks.py convert_diffusers_name_to_compvis: the names it translates, plus
# load_network's fallbacks (lora_unet_ → diffusion_model_, lora_te1_text_model → 0_transformer_text_model).
_A1111_NAMES = [re.compile(p) for p in (
    r"^lora_unet_conv_(in|out)", r"^lora_unet_time_embedding_linear_\d+",
    r"^lora_unet_down_blocks_\d+_(attentions|resnets)_\d+_.+", r"^lora_unet_mid_block_(attentions|resnets)_\d+_.+",
    r"^lora_unet_up_blocks_\d+_(attentions|resnets)_\d+_.+", r"^lora_unet_(input_blocks|middle_block|output_blocks)_.+",
    r"^lora_te_text_model_encoder_layers_\d+_.+", r"^lora_te1_text_model_encoder_layers_\d+_.+",
    r"^lora_te2_text_model_encoder_layers_\d+_.+")]


def a1111_loaded(file_keys: set[str]) -> set[str]:
    """A1111 load_network: a key is split at its *first* dot into module name and weight part; the module
    name must be one it translates, and network_lora.py wants ``lora_up.weight``/``lora_down.weight``/``alpha``."""
    loaded = set()
    for key in file_keys:
        name, _, part = key.partition(".")
        if part in ("lora_up.weight", "lora_down.weight", "alpha") and any(p.match(name) for p in _A1111_NAMES):
            loaded.add(key)
    return loaded


# library/flux_models.py DoubleStreamBlock / SingleStreamBlock: the Linear layers sd-scripts' lora_flux.py
# wraps (named lora_unet_ + path with _), with (out, in) features for hidden size h.
def bfl_linears(double: int, single: int, hidden: int) -> dict[str, tuple[int, int]]:
    shapes = {}
    for i in range(double):
        for stream in ("img", "txt"):
            shapes.update({f"double_blocks.{i}.{stream}_mod.lin": (6 * hidden, hidden),
                           f"double_blocks.{i}.{stream}_attn.qkv": (3 * hidden, hidden),
                           f"double_blocks.{i}.{stream}_attn.proj": (hidden, hidden),
                           f"double_blocks.{i}.{stream}_mlp.0": (4 * hidden, hidden),
                           f"double_blocks.{i}.{stream}_mlp.2": (hidden, 4 * hidden)})
    for i in range(single):
        shapes.update({f"single_blocks.{i}.linear1": (7 * hidden, hidden),
                       f"single_blocks.{i}.linear2": (hidden, 5 * hidden),
                       f"single_blocks.{i}.modulation.lin": (3 * hidden, hidden)})
    return shapes


def sd_scripts_loaded(file_keys: set[str], module_names: set[str]) -> set[str]:
    """networks/lora.py, lora_flux.py create_network_from_weights: modules are named
    ``lora_name = key.split('.')[0]`` from keys holding ``lora_down``; a name that is not one of the
    network's own modules creates nothing, and load_weights (load_state_dict strict=False) drops its keys."""
    return {k for k in file_keys if k.split(".")[0] in module_names
            and k.split(".", 1)[1] in ("lora_up.weight", "lora_down.weight", "alpha")}


def sd_scripts_sd_names(unet_modules: list[str], te_layers: dict[str, int], sdxl: bool) -> set[str]:
    """sd-scripts' module names for SD: lora_unet_ + path (library/original_unet.py keeps diffusers' block
    names; for SDXL, convert_diffusers_to_sai_if_needed renames diffusers-named keys on load, so they
    match too) and lora_te*_ + CLIP path inside the attention/MLP modules it targets."""
    names = {"lora_unet_" + m.replace(".", "_") for m in unet_modules
             if ".attentions." in m or (not sdxl and ("resnets" in m or "samplers" in m))}
    for prefix, layers in te_layers.items():
        names |= {f"{prefix}_text_model_encoder_layers_{b}_{flat}" for b in range(layers) for flat in CLIP_MAP.values()}
    return names
