"""Continuing from a LoRA: its weights, read from a kohya, diffusers or sd-scripts file, as the run's starting point.

This is not ``--resume`` (which continues the same run exactly, optimizer and all): a continued LoRA
trains further on new data with fresh optimizer state. The file must fit the run — the same family,
the same rank, only layers the run trains — or the error says which option to change. The weights are
rescaled so the continued LoRA computes exactly what the file computed: a kohya file's ``alpha/rank``,
a diffusers file's folded scale 1, and this run's ``alpha/rank`` may all differ.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from loramill.engine.lora.files import LoraFile, read_lora
from loramill.engine.lora.flux_blocks import from_sd_scripts_flux
from loramill.engine.lora.formats import canonical_key, layout_of
from loramill.errors import InvalidInput

LoraStates = dict[str, dict[str, torch.Tensor]]  # component -> peft state dict (adapter name removed)


def _bad(message: str, code: str = "init_lora_mismatch") -> InvalidInput:
    return InvalidInput(f"init_lora: {message}", code=code, field="init_lora")


def read_init_lora(path: str | Path, family: str) -> LoraFile:
    """Read and check the file: safetensors only, a LoRA layout, trained for ``family``."""
    lora = read_lora(path)
    name = Path(path).name
    if layout_of(set(lora.tensors)) == "sd-scripts":  # FLUX in BFL blocks: split the fused layers back
        lora = LoraFile(path=lora.path, tensors=from_sd_scripts_flux(lora.tensors), metadata=lora.metadata)
    if layout_of(set(lora.tensors)) == "unknown":
        raise _bad(f"{name}: not a LoRA (no lora_down/lora_up or lora_A/lora_B weights); give a LoRA file in "
                   "the kohya or diffusers layout", code="invalid_lora")
    if lora.family is not None and lora.family != family:
        raise _bad(f"{name} was trained for {lora.family}; this run trains {family}. Continue it on a "
                   f"{lora.family} base model, or start a fresh {family} LoRA without init_lora")
    return lora


def init_states(lora: LoraFile, expected: LoraStates, prefixes: dict[str, str], rank: int,
                alpha: float) -> LoraStates:
    """The file's weights as peft state dicts shaped like ``expected`` (the run's freshly injected LoRA).

    Layers the run trains that the file lacks keep their fresh start (zero ``B``: no change to the model).
    """
    name = lora.path.name
    layout = layout_of(set(lora.tensors))
    scale = alpha / rank
    used: set[str] = set()
    states: LoraStates = {}
    for component, state in expected.items():
        out: dict[str, torch.Tensor] = {}
        for key in state:
            if ".lora_A." not in key:
                continue
            module = key.split(".lora_A.")[0]
            canonical = canonical_key(component, module)
            if layout == "kohya":
                base = f"{prefixes[component]}_{canonical.replace('.', '_')}"
                down_key, up_key = f"{base}.lora_down.weight", f"{base}.lora_up.weight"
            else:
                down_key, up_key = f"{component}.{canonical}.lora_A.weight", f"{component}.{canonical}.lora_B.weight"
            if down_key not in lora.tensors or up_key not in lora.tensors:
                continue
            down, up = lora.tensors[down_key].float(), lora.tensors[up_key].float()
            if down.shape[0] != rank:
                raise _bad(f"{name} has rank {down.shape[0]} (layer {module}); this run has rank {rank}. "
                           f"Set rank to {down.shape[0]} to continue it")
            if down.shape != state[key].shape:
                raise _bad(f"{name}: layer {module} has shape {tuple(down.shape)}, the model's is "
                           f"{tuple(state[key].shape)}; the file was trained for another architecture")
            # What the file computes: kohya (alpha_file / rank) · up · down; diffusers up · down (folded).
            file_scale = (float(lora.tensors[f"{base}.alpha"]) / rank
                          if layout == "kohya" and f"{base}.alpha" in lora.tensors else 1.0)
            out[key] = down.clone()
            out[key.replace(".lora_A.", ".lora_B.")] = up * (file_scale / scale)
            used.update((down_key, up_key, f"{down_key.rsplit('.lora_', 1)[0]}.alpha"))
        if out:
            states[component] = out
    unused = sorted(k for k in lora.tensors if k not in used and not k.endswith(".alpha"))
    if not states:
        raise _bad(f"{name} matched no layer this run trains; it belongs to another architecture or was trained "
                   "on other layers (check target_modules)")
    if unused:
        text = any(k.startswith(("lora_te", "text_encoder")) for k in unused)
        hint = ("it trains the text encoder too: set train_text_encoder" if text else
                "set target_modules to the layers it was trained on")
        raise _bad(f"{name} has {len(unused)} weights for layers this run does not train (e.g. {unused[0]}); "
                   f"{hint}, or they would be lost")
    return states


def init_from_lora(config: Any, family: Any, family_name: str, trained: dict[str, torch.nn.Module]) -> str | None:
    """Load ``config.init_lora`` into the run's fresh adapters; with teacher preservation from it, also as a
    frozen second adapter. Returns the teacher adapter's name, or ``None`` when the teacher is the base."""
    from loramill.engine.training import adapters

    lora = read_init_lora(config.init_lora, family_name)
    expected = {name: adapters.lora_state(module) for name, module in trained.items()}
    states = init_states(lora, expected, family.KOHYA_PREFIXES, config.rank, float(config.alpha))
    for name, module in trained.items():
        if name in states:
            adapters.load_lora_state(module, states[name])
    if not config.preserve_weight or config.preserve_teacher == "base":
        return None
    for name, module in trained.items():
        targets = (config.target_modules or family.DEFAULT_TARGET_MODULES) if name == family.DENOISER \
            else family.TEXT_ENCODER_TARGET_MODULES
        adapters.add_frozen_lora(module, adapters.TEACHER, config.rank, float(config.alpha), targets,
                                 states.get(name, {}))
    return adapters.TEACHER
