"""Convert trained LoRA weights to the layouts users' tools read (``--format``; which tool reads which:
``engine/lora/layouts.py`` and README's "LoRA layouts" table).

``diffusers``: ``<component>.<module path>.lora_A.weight`` / ``lora_B.weight``. No alpha is stored in
this layout, so the alpha/rank scale is folded into ``lora_B``; every loader that assumes alpha = rank
(diffusers, ComfyUI) then computes exactly what training computed.

``kohya``: ``<prefix>_<module path with _>.lora_down.weight`` / ``lora_up.weight`` / ``.alpha`` — the
layout sd-scripts writes and A1111, ComfyUI and diffusers read (``lora_unet_``, ``lora_te_``/``lora_te1_``,
``lora_te2_``; FLUX uses ``lora_transformer_`` with diffusers module names, which diffusers, ComfyUI and
Forge read but sd-scripts does not).

``sd-scripts``: for FLUX, sd-scripts' own BFL block names with fused qkv (``engine/lora/flux_blocks.py``);
for SD 1.5 and SDXL the kohya file, whose names sd-scripts reads as they are.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from loramill.engine.lora.flux_blocks import bfl_name, to_sd_scripts_flux
from loramill.engine.lora.layouts import check_format

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


def to_sd_scripts(layers: LoraLayers, prefixes: dict[str, str], alpha: float) -> dict[str, torch.Tensor]:
    """sd-scripts' naming: FLUX's transformer in BFL blocks, everything else as kohya."""
    out = to_kohya({c: s for c, s in layers.items() if c != "transformer"}, prefixes, alpha)
    if "transformer" in layers:
        out.update(to_sd_scripts_flux(layers["transformer"], alpha))
    return out


_WRITERS: dict[str, Callable[[LoraLayers, dict[str, str], int, float], dict[str, torch.Tensor]]] = {
    "kohya": lambda layers, prefixes, rank, alpha: to_kohya(layers, prefixes, alpha),
    "diffusers": lambda layers, prefixes, rank, alpha: to_diffusers(layers, rank, alpha),
    "sd-scripts": lambda layers, prefixes, rank, alpha: to_sd_scripts(layers, prefixes, alpha),
}


def to_layout(fmt: str, layers: LoraLayers, prefixes: dict[str, str], rank: int,
              alpha: float) -> dict[str, torch.Tensor]:
    """The tensors of a LoRA file in layout ``fmt`` (one of ``layouts.LORA_FORMATS``)."""
    check_format(fmt)
    return _WRITERS[fmt](layers, prefixes, rank, alpha)


def check_layout(fmt: str, layers: LoraLayers) -> None:
    """Fail before training, not at export, when a trained module has no name in layout ``fmt``."""
    check_format(fmt)
    if fmt == "sd-scripts":
        for key in layers.get("transformer", {}):
            if ".lora_A." in key:
                bfl_name(key.split(".lora_A.")[0])


def layout_of(keys: list[str] | set[str]) -> str:
    """``sd-scripts`` (FLUX BFL names), ``kohya``, ``diffusers`` or ``unknown``, from a state dict's keys."""
    if any(k.startswith(("lora_unet_double_blocks_", "lora_unet_single_blocks_")) for k in keys):
        return "sd-scripts"
    if any(k.endswith((".lora_down.weight", ".lora_up.weight")) for k in keys):
        return "kohya"
    if any(".lora_A." in k or ".lora_B." in k for k in keys):
        return "diffusers"
    return "unknown"
