"""FLUX LoRAs in sd-scripts' own naming: BFL block names, with q/k/v (and the single blocks' MLP input) fused.

diffusers splits FLUX's attention into ``to_q``/``to_k``/``to_v``; the original (BFL) model, and so
sd-scripts (``networks/lora_flux.py``), ComfyUI and Forge, hold one fused ``qkv`` layer per stream and one
``linear1`` = q ‖ k ‖ v ‖ MLP-in per single block. Separate LoRAs (Aᵢ, Bᵢ) on the parts of a fused layer
are exactly one LoRA on the fused layer with ``down`` = A₁ ‖ A₂ ‖ … stacked and ``up`` block-diagonal
(Bᵢ on the diagonal): ``up @ down`` stacks Bᵢ Aᵢ. This is how sd-scripts' ``split_qkv`` state_dict writes
them, so its loader, diffusers' ``_convert_kohya_flux_lora_to_diffusers`` (which recognises the
block-diagonal form and splits it back) and ComfyUI all read the file. Every loader scales a module by
``alpha / down.shape[0]``, so a part-count k fused module stores ``alpha × k`` to keep training's
``alpha / rank``.
"""

from __future__ import annotations

import re

import torch

from loramill.errors import InvalidInput

PREFIX = "lora_unet"
# diffusers module (inside transformer_blocks.N.) → (BFL module inside double_blocks.N., part of a fused layer)
DOUBLE = {
    "attn.to_q": ("img_attn.qkv", 0), "attn.to_k": ("img_attn.qkv", 1), "attn.to_v": ("img_attn.qkv", 2),
    "attn.add_q_proj": ("txt_attn.qkv", 0), "attn.add_k_proj": ("txt_attn.qkv", 1),
    "attn.add_v_proj": ("txt_attn.qkv", 2),
    "attn.to_out.0": ("img_attn.proj", None), "attn.to_add_out": ("txt_attn.proj", None),
    "ff.net.0.proj": ("img_mlp.0", None), "ff.net.2": ("img_mlp.2", None),
    "ff_context.net.0.proj": ("txt_mlp.0", None), "ff_context.net.2": ("txt_mlp.2", None),
    "norm1.linear": ("img_mod.lin", None), "norm1_context.linear": ("txt_mod.lin", None),
}
# diffusers module (inside single_transformer_blocks.N.) → BFL module inside single_blocks.N.
SINGLE = {
    "attn.to_q": ("linear1", 0), "attn.to_k": ("linear1", 1), "attn.to_v": ("linear1", 2),
    "proj_mlp": ("linear1", 3), "proj_out": ("linear2", None), "norm.linear": ("modulation.lin", None),
}
MLP_RATIO = 4  # FLUX.1's single-block MLP width is 4 × the hidden size (the fused layer's 4th part)
_BLOCK = re.compile(r"^(transformer_blocks|single_transformer_blocks)\.(\d+)\.(.+)$")


def bfl_name(module: str) -> tuple[str, int | None]:
    """The BFL module of a diffusers FLUX transformer module, and which part of a fused layer it is."""
    m = _BLOCK.match(module)
    table, kind = (DOUBLE, "double_blocks") if m and m.group(1) == "transformer_blocks" else (SINGLE, "single_blocks")
    if m is None or m.group(3) not in table:
        raise InvalidInput(f"format: FLUX module {module!r} has no sd-scripts (BFL) name; sd-scripts "
                           f"LoRAs cover the blocks' {', '.join(sorted(set(DOUBLE) | set(SINGLE)))}. Drop it from "
                           "target_modules or export as kohya", code="invalid_option", field="format")
    bfl, part = table[m.group(3)]
    return f"{kind}.{m.group(2)}.{bfl}", part


def part_sizes(bfl: str, hidden: int) -> list[int]:
    """Output rows of each part of a fused BFL layer of a ``hidden``-wide FLUX."""
    return [hidden] * 3 + ([MLP_RATIO * hidden] if bfl.endswith("linear1") else [])


def to_sd_scripts_flux(state: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """A FLUX transformer's peft LoRA state (``….to_q.lora_A.weight``) as sd-scripts' ``lora_unet_*`` keys."""
    # 1. Group A/B pairs by BFL module; parts of a fused layer go together.
    groups: dict[str, dict[int | None, tuple[torch.Tensor, torch.Tensor]]] = {}
    for key in state:
        if ".lora_A." not in key:
            continue
        module = key.split(".lora_A.")[0]
        bfl, part = bfl_name(module)
        down = state[key].detach().to("cpu")
        up = state[f"{module}.lora_B.weight"].detach().to("cpu")
        groups.setdefault(bfl, {})[part] = (down, up)

    # 2. Plain modules keep their pair; fused ones get stacked downs and a block-diagonal up, with zero
    #    blocks for parts that were not trained (so sd-scripts' split_qkv loader can chunk them evenly).
    out: dict[str, torch.Tensor] = {}
    for bfl, parts in groups.items():
        name = f"{PREFIX}_{bfl.replace('.', '_')}"
        if None in parts:
            down, up = parts[None]
            out.update({f"{name}.lora_down.weight": down.contiguous(), f"{name}.lora_up.weight": up.contiguous(),
                        f"{name}.alpha": torch.tensor(float(alpha))})
            continue
        first = min(i for i in parts if i is not None)
        first_down, first_up = parts[first]
        rank, dtype = first_down.shape[0], first_down.dtype
        hidden = first_up.shape[0] if first < 3 else first_up.shape[0] // MLP_RATIO
        sizes = part_sizes(bfl, hidden)
        down = torch.zeros(rank * len(sizes), first_down.shape[1], dtype=dtype)
        up = torch.zeros(sum(sizes), rank * len(sizes), dtype=dtype)
        row = 0
        for i, size in enumerate(sizes):
            if i in parts:
                part_down, part_up = parts[i]
                if part_down.shape[0] != rank or part_up.shape[0] != size:
                    raise InvalidInput(f"format: the sd-scripts parts of {bfl} have unequal ranks or widths; export "
                                       "as kohya", code="invalid_option", field="format")
                down[i * rank:(i + 1) * rank] = part_down
                up[row:row + size, i * rank:(i + 1) * rank] = part_up
            row += size
        out.update({f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up,
                    f"{name}.alpha": torch.tensor(float(alpha) * len(sizes))})
    return out


def _flat_names() -> dict[tuple[str, str], list[tuple[str, int | None]]]:
    """(block kind, BFL module with _) → its diffusers modules in part order."""
    names: dict[tuple[str, str], list[tuple[str, int | None]]] = {}
    for kind, table in (("double", DOUBLE), ("single", SINGLE)):
        for module, (bfl, part) in sorted(table.items(), key=lambda item: item[1][1] or 0):
            names.setdefault((kind, bfl.replace(".", "_")), []).append((module, part))
    return names


_KEY = re.compile(r"^lora_unet_(double|single)_blocks_(\d+)_(.+)\.lora_down\.weight$")


def from_sd_scripts_flux(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An sd-scripts FLUX file as the kohya layout (``lora_transformer_`` + diffusers names), fused layers split.

    Exact either way: a block-diagonal fused ``lora_up`` (what loramill and sd-scripts' ``split_qkv`` write)
    splits into rank-r parts, leaving out parts that are all zero (the untrained MLP part of ``linear1``);
    a LoRA trained on the fused layer itself gives each part the whole ``lora_down`` and its rows of
    ``lora_up`` (as diffusers' converter does). Unlike diffusers' converter, any FLUX width works.
    """
    names = _flat_names()
    out = {k: v for k, v in tensors.items() if not k.startswith(("lora_unet_double_blocks_", "lora_unet_single_blocks_"))}
    for key, down in tensors.items():
        m = _KEY.match(key)
        if m is None:
            continue
        kind, index, flat = m.groups()
        base = key[: -len(".lora_down.weight")]
        up = tensors[f"{base}.lora_up.weight"]
        parts = names.get((kind, flat))
        if parts is None:
            raise InvalidInput(f"LoRA key {key}: {flat} is not a FLUX block layer loramill knows", code="invalid_lora",
                               field="loras")
        prefix = "transformer_blocks" if kind == "double" else "single_transformer_blocks"
        alpha = float(tensors.get(f"{base}.alpha", torch.tensor(float(down.shape[0]))))
        count = len(parts)
        sizes = part_sizes(flat, up.shape[0] // (3 + (MLP_RATIO if count == 4 else 0))) if count > 1 else [up.shape[0]]
        if sum(sizes) != up.shape[0]:
            raise InvalidInput(f"LoRA key {base}.lora_up.weight: {up.shape[0]} rows are not a fused {count}-part FLUX "
                               "layer", code="invalid_lora", field="loras")
        rows = list(torch.split(up, sizes))
        sparse = count > 1 and down.shape[0] % count == 0 and _block_diagonal(rows, down.shape[0] // count)
        rank = down.shape[0] // count if sparse else down.shape[0]
        for i, ((module, _), part_rows) in enumerate(zip(parts, rows)):
            part_up = part_rows[:, i * rank:(i + 1) * rank] if sparse else part_rows
            part_down = down[i * rank:(i + 1) * rank] if sparse else down
            if count > 1 and not torch.any(part_up):
                continue
            name = f"lora_transformer_{prefix}_{index}_{module.replace('.', '_')}"
            out.update({f"{name}.lora_down.weight": part_down.contiguous(), f"{name}.lora_up.weight": part_up.contiguous(),
                        f"{name}.alpha": torch.tensor(alpha / count if sparse else alpha)})
    return out


def _block_diagonal(rows: list[torch.Tensor], rank: int) -> bool:
    """Whether part i's rows of a fused ``lora_up`` are zero outside columns i·rank … (i+1)·rank."""
    return all(not torch.any(torch.cat([r[:, : i * rank], r[:, (i + 1) * rank:]], dim=1)) for i, r in enumerate(rows))
