"""Which LoRA layout loads in which tool, for each family: the table behind ``--format``'s warnings and docs.

A LoRA whose keys a tool does not recognise loads *silently* as nothing (ComfyUI logs "lora key not
loaded" and renders the base model), so export names every tool that will not load the chosen layout
and the layout that will. Each cell cites the loader rule it rests on; tests/engine/lora/test_layouts.py
re-implements the ComfyUI, A1111 and sd-scripts rules and checks every cell against real exports, and
loads the files in diffusers. This module imports nothing heavy: the CLI and the option spec read it.
"""

from __future__ import annotations

from dataclasses import dataclass

from loramill.errors import InvalidInput

# The layouts export can write; the first is the default. ``sd-scripts`` differs from ``kohya`` for FLUX
# only (BFL block names with fused qkv); for SD 1.5 and SDXL the two write the same file.
LORA_FORMATS = ("kohya", "diffusers", "sd-scripts")
TOOLS = ("ComfyUI", "Forge", "A1111", "diffusers", "sd-scripts")
FAMILIES = ("sd15", "sdxl", "flux")

YES, TEXT_ONLY, NO, NOT_APPLICABLE = "yes", "text encoder only", "no", "n/a"


@dataclass(frozen=True)
class Support:
    """How much of a file a tool loads (``yes``, ``text encoder only``, ``no``, ``n/a``) and the rule why."""

    loads: str
    rule: str


_COMFY_KOHYA = Support(YES, "comfy/lora.py model_lora_keys_unet: lora_unet_ + diffusers module names (unet_to_diffusers)")
_COMFY_PEFT_SD = Support(TEXT_ONLY, "comfy/lora.py model_lora_keys_unet maps diffusers UNet keys only as "
                         "unet.<path>.processor.to_q (to_out.0 → processor.to_out); a PEFT key "
                         "unet.<path>.to_q.lora_A matches nothing. model_lora_keys_clip maps text_encoder.*")
_FORGE_PEFT_SD = Support(TEXT_ONLY, "Forge's packages_3rdparty/comfyui_lora_collection/lora.py is ComfyUI's rule")
_A1111_KOHYA = Support(YES, "extensions-builtin/Lora/networks.py convert_diffusers_name_to_compvis: lora_unet_"
                       "{down,mid,up}_blocks_* and lora_te*_text_model_* names")
_A1111_PEFT = Support(NO, "extensions-builtin/Lora/networks.py load_network splits a key at its first '.', so "
                      "every module is named 'unet' or 'text_encoder' and matches nothing")
_DIFFUSERS = Support(YES, "load_lora_weights; tests/engine/lora/test_layouts.py loads the file and renders")
_SDS_SD15 = Support(YES, "networks/lora.py names modules lora_unet_/lora_te_ + path; library/original_unet.py "
                    "uses diffusers' block names")
_SDS_SDXL = Support(YES, "networks/lora.py create_network_from_weights renames diffusers block names to SAI "
                    "ones (convert_diffusers_to_sai_if_needed)")
_SDS_PEFT = Support(NO, "networks/lora*.py read lora_down/lora_up keys named lora_unet_*/lora_te*_ only")
_SDS_FLUX_KOHYA = Support(TEXT_ONLY, "networks/lora_flux.py names FLUX modules by BFL blocks (lora_unet_double_blocks_*, "
                          "single_blocks_*); lora_transformer_* names create no module and are ignored (lora_te1_ loads)")
_SDS_FLUX_PEFT = Support(NO, "networks/lora_flux.py reads lora_down/lora_up keys named by BFL blocks only")
_NO_FLUX = Support(NOT_APPLICABLE, "A1111 does not run FLUX.1")

LOADS: dict[tuple[str, str], dict[str, Support]] = {
    ("kohya", "sd15"): {"ComfyUI": _COMFY_KOHYA, "Forge": _COMFY_KOHYA, "A1111": _A1111_KOHYA,
                        "diffusers": _DIFFUSERS, "sd-scripts": _SDS_SD15},
    ("kohya", "sdxl"): {"ComfyUI": _COMFY_KOHYA, "Forge": _COMFY_KOHYA, "A1111": _A1111_KOHYA,
                        "diffusers": _DIFFUSERS, "sd-scripts": _SDS_SDXL},
    ("kohya", "flux"): {
        "ComfyUI": Support(YES, "comfy/lora.py model_lora_keys_unet: lora_transformer_ + diffusers names (OneTrainer)"),
        "Forge": Support(YES, "comfyui_lora_collection/lora.py maps lora_transformer_ (builds before it did: "
                         "use sd-scripts)"),
        "A1111": _NO_FLUX, "diffusers": _DIFFUSERS, "sd-scripts": _SDS_FLUX_KOHYA},
    ("diffusers", "sd15"): {"ComfyUI": _COMFY_PEFT_SD, "Forge": _FORGE_PEFT_SD, "A1111": _A1111_PEFT,
                            "diffusers": _DIFFUSERS, "sd-scripts": _SDS_PEFT},
    ("diffusers", "sdxl"): {"ComfyUI": _COMFY_PEFT_SD, "Forge": _FORGE_PEFT_SD, "A1111": _A1111_PEFT,
                            "diffusers": _DIFFUSERS, "sd-scripts": _SDS_PEFT},
    ("diffusers", "flux"): {
        "ComfyUI": Support(YES, "comfy/lora.py model_lora_keys_unet: transformer. + diffusers names (flux_to_diffusers)"),
        "Forge": Support(YES, "comfyui_lora_collection/lora.py maps transformer. + diffusers names"),
        "A1111": _NO_FLUX, "diffusers": _DIFFUSERS, "sd-scripts": _SDS_FLUX_PEFT},
    ("sd-scripts", "flux"): {
        "ComfyUI": Support(YES, "comfy/lora.py model_lora_keys_unet: lora_unet_ + the model's own (BFL) key names"),
        "Forge": Support(YES, "comfyui_lora_collection/lora.py: lora_unet_ + BFL key names"),
        "A1111": _NO_FLUX,
        "diffusers": Support(YES, "lora_conversion_utils._convert_kohya_flux_lora_to_diffusers splits the fused "
                             "qkv back (it assumes FLUX.1's 3072-wide blocks)"),
        "sd-scripts": Support(YES, "networks/lora_flux.py: its own names; fused qkv as its split_qkv state_dict "
                              "writes them")},
}
LOADS[("sd-scripts", "sd15")] = LOADS[("kohya", "sd15")]
LOADS[("sd-scripts", "sdxl")] = LOADS[("kohya", "sdxl")]


def check_format(fmt: str) -> None:
    """Refuse an unknown layout, listing the ones there are."""
    if fmt not in LORA_FORMATS:
        raise InvalidInput(f"format: unknown LoRA layout {fmt!r}; choose one of: {', '.join(LORA_FORMATS)}",
                           code="invalid_option", field="format")


def best_layout(family: str) -> str:
    """The layout that loads fully in the most tools for ``family`` (the default on a tie)."""
    return max(LORA_FORMATS, key=lambda fmt: sum(s.loads == YES for s in LOADS[(fmt, family)].values()))


def layout_warnings(fmt: str, family: str) -> list[str]:
    """What a ``fmt`` file for ``family`` will not load in, and the layout that loads there (empty: loads everywhere)."""
    check_format(fmt)
    cells = LOADS.get((fmt, family), {})  # a family the table does not cover makes no claims
    text_only = [tool for tool, s in cells.items() if s.loads == TEXT_ONLY]
    nothing = [tool for tool, s in cells.items() if s.loads == NO]
    if not text_only and not nothing:
        return []
    missed = [f"only its text-encoder part (if any) in {', '.join(text_only)}"] if text_only else []
    missed += [f"nothing in {', '.join(nothing)}"] if nothing else []
    works = [f for f in LORA_FORMATS if all(LOADS[(f, family)][t].loads == YES for t in text_only + nothing)]
    return [f"a {fmt}-layout {family} LoRA loads {' and '.join(missed)}; for {', '.join(text_only + nothing)} "
            f"export with --format {' or '.join(works)} (README: \"LoRA layouts\")"]


def markdown_table() -> str:
    """The layout × family × tool table as docs show it (README's section is checked against this)."""
    marks = {YES: "✓", TEXT_ONLY: "text encoder only", NO: "✗", NOT_APPLICABLE: "—"}
    lines = ["| layout | family | " + " | ".join(TOOLS) + " |", "|---|---|" + "---|" * len(TOOLS)]
    for fmt in LORA_FORMATS:
        for family in FAMILIES:
            cells = LOADS[(fmt, family)]
            lines.append(f"| {fmt} | {family} | " + " | ".join(marks[cells[t].loads] for t in TOOLS) + " |")
    return "\n".join(lines)
