"""Convert trained LoRA weights to the two layouts users' tools read.

``diffusers``: ``<component>.<module path>.lora_A.weight`` / ``lora_B.weight``. No alpha is stored in
this layout, so the alpha/rank scale is folded into ``lora_B``; every loader that assumes alpha = rank
(diffusers, ComfyUI) then computes exactly what training computed.

``kohya``: ``<prefix>_<module path with _>.lora_down.weight`` / ``lora_up.weight`` / ``.alpha`` — the
layout sd-scripts writes and A1111, ComfyUI and diffusers read (``lora_unet_``, ``lora_te_``/``lora_te1_``,
``lora_te2_``; FLUX uses ``lora_transformer_`` with diffusers module names, which diffusers and ComfyUI
read). SPEC.md section 5, item 1: a LoRA that silently does nothing in another tool is the most common
complaint, so both layouts are tested to load in plain diffusers and give the same image.
"""

from __future__ import annotations

import torch

LoraLayers = dict[str, dict[str, torch.Tensor]]  # component ("unet", "text_encoder", …) -> peft state dict


def canonical_key(component: str, key: str) -> str:
    """Module paths as every LoRA tool names them.

    transformers 5 flattened ``CLIPTextModel`` (``encoder.layers…``), while A1111, ComfyUI, sd-scripts
    and every LoRA already published use ``text_model.encoder.layers…``; write the published form.
    """
    if component.startswith("text_encoder") and not key.startswith("text_model."):
        return "text_model." + key
    return key


def to_diffusers(layers: LoraLayers, rank: int, alpha: float) -> dict[str, torch.Tensor]:
    """The diffusers/PEFT layout with the alpha/rank scale folded into ``lora_B``."""
    scale = alpha / rank
    out: dict[str, torch.Tensor] = {}
    for component, state in layers.items():
        for key, tensor in state.items():
            value = tensor.detach().to("cpu").contiguous()
            if ".lora_B." in key and scale != 1.0:
                value = value * scale
            out[f"{component}.{canonical_key(component, key)}"] = value
    return out


def to_kohya(layers: LoraLayers, prefixes: dict[str, str], alpha: float) -> dict[str, torch.Tensor]:
    """The kohya layout: ``lora_down``/``lora_up`` pairs named by module path, with an ``.alpha`` each."""
    out: dict[str, torch.Tensor] = {}
    for component, state in layers.items():
        prefix = prefixes[component]
        for key, tensor in state.items():
            if ".lora_A." in key:
                module, kind = key.split(".lora_A.")[0], "lora_down"
            elif ".lora_B." in key:
                module, kind = key.split(".lora_B.")[0], "lora_up"
            else:
                continue
            name = f"{prefix}_{canonical_key(component, module).replace('.', '_')}"
            out[f"{name}.{kind}.weight"] = tensor.detach().to("cpu").contiguous()
            out[f"{name}.alpha"] = torch.tensor(float(alpha))
    return out


def layout_of(keys: list[str] | set[str]) -> str:
    """``kohya``, ``diffusers`` or ``unknown``, from a state dict's keys."""
    if any(k.endswith((".lora_down.weight", ".lora_up.weight")) for k in keys):
        return "kohya"
    if any(".lora_A." in k or ".lora_B." in k for k in keys):
        return "diffusers"
    return "unknown"
