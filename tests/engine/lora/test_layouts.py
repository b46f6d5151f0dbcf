"""Every cell of the layout × family × tool table holds for real exports, and the docs show that table.

ComfyUI, Forge, A1111 and sd-scripts are checked by their key rules (tests/engine/lora/tool_rules.py,
each cited to its source); diffusers by loading the files and rendering. FLUX's sd-scripts layout is
proven twice: at FLUX.1's width through diffusers' own converter (the weights it recovers equal ours
exactly), and on the tiny FLUX, where the converted file renders the same image as the diffusers layout.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from loramill.engine.families import get_family
from loramill.engine.lora.flux_blocks import bfl_name, from_sd_scripts_flux, to_sd_scripts_flux
from loramill.engine.lora.formats import check_layout, layout_of, to_layout
from loramill.engine.lora.layouts import (
    FAMILIES,
    LOADS,
    LORA_FORMATS,
    NO,
    TEXT_ONLY,
    YES,
    best_layout,
    layout_warnings,
    markdown_table,
)
from loramill.engine.training import adapters
from loramill.errors import InvalidInput
from tests.engine.lora import tool_rules as rules

README = Path(__file__).resolve().parents[3] / "README.md"


@pytest.fixture(scope="module")
def pipes(tiny_models) -> dict[str, object]:
    return {family: get_family(family).load_pipeline(str(tiny_models[family])) for family in FAMILIES}


def _lora_layers(pipe, family: str, text_encoder: bool = True, seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    """A LoRA on the family's default modules with random (non-zero) weights, as training leaves it."""
    fam = get_family(family)
    trained = {fam.DENOISER: getattr(pipe, fam.DENOISER)}
    if text_encoder:
        trained.update({name: getattr(pipe, name) for name in fam.TEXT_ENCODERS})
    torch.manual_seed(seed)
    layers = {}
    for name, module in trained.items():
        targets = fam.DEFAULT_TARGET_MODULES if name == fam.DENOISER else fam.TEXT_ENCODER_TARGET_MODULES
        adapters.add_lora(module, 4, 8.0, targets)
        with torch.no_grad():
            for param_name, param in module.named_parameters():
                if "lora_B" in param_name:  # peft starts B at zero, which would make every layout trivially equal
                    param.normal_(0, 0.3)
        layers[name] = adapters.lora_state(module)
        adapters.remove_lora(module)
    return layers


def _tool_sees(tool: str, family: str, pipe, keys: set[str]) -> set[str]:
    """The file keys ``tool`` loads, by its rule."""
    fam = get_family(family)
    denoiser = getattr(pipe, fam.DENOISER)
    clip_layers = {name: getattr(pipe, name).config.num_hidden_layers for name in fam.TEXT_ENCODERS}
    if tool in ("ComfyUI", "Forge"):  # Forge's packages_3rdparty/comfyui_lora_collection is ComfyUI's lora.py
        if family == "flux":
            cfg = denoiser.config
            hidden = cfg.num_attention_heads * cfg.attention_head_dim
            key_map = rules.comfy_flux_map(rules.weight_modules(denoiser),
                                           list(rules.bfl_linears(cfg.num_layers, cfg.num_single_layers, hidden)))
        else:
            key_map = rules.comfy_unet_map(rules.weight_modules(denoiser))
        for name, layers in clip_layers.items():
            key_map |= rules.comfy_clip_map(layers, name)
        return rules.comfy_loaded(keys, key_map)
    if tool == "A1111":
        return rules.a1111_loaded(keys)
    if family == "flux":
        cfg = denoiser.config
        hidden = cfg.num_attention_heads * cfg.attention_head_dim
        names = {"lora_unet_" + m.replace(".", "_")
                 for m in rules.bfl_linears(cfg.num_layers, cfg.num_single_layers, hidden)}
        names |= rules.sd_scripts_sd_names([], {"lora_te1": clip_layers["text_encoder"]}, sdxl=False)
        return rules.sd_scripts_loaded(keys, names)
    prefixes = {"text_encoder": "lora_te" if family == "sd15" else "lora_te1", "text_encoder_2": "lora_te2"}
    names = rules.sd_scripts_sd_names(rules.weight_modules(denoiser),
                                      {prefixes[n]: layers for n, layers in clip_layers.items()}, family == "sdxl")
    return rules.sd_scripts_loaded(keys, names)


@pytest.mark.parametrize("fmt", LORA_FORMATS)
@pytest.mark.parametrize("family", FAMILIES)
def test_tool_rules_load_exports_as_the_table_says(pipes, family, fmt):
    pipe = pipes[family]
    layers = _lora_layers(pipe, family)
    tensors = to_layout(fmt, layers, get_family(family).KOHYA_PREFIXES, 4, 8.0)
    keys = set(tensors)
    text_keys = {k for k in keys if k.startswith(("lora_te", "text_encoder"))}
    assert text_keys and keys - text_keys
    for tool in ("ComfyUI", "Forge", "A1111", "sd-scripts"):
        claimed = LOADS[(fmt, family)][tool].loads
        if tool == "A1111" and family == "flux":
            continue  # A1111 has no FLUX at all
        loaded = _tool_sees(tool, family, pipe, keys)
        seen = YES if loaded == keys else NO if not loaded else TEXT_ONLY if loaded == text_keys else "partly"
        assert seen == claimed, f"{tool} on a {fmt} {family} file: rule says {seen}, table says {claimed}; " \
                                f"not loaded: {sorted(keys - loaded)[:4]}"


def test_comfyui_rule_reproduces_the_reported_failure(pipes):
    """The issue as reported: ComfyUI loads 0 of the UNet keys of a diffusers-layout SD 1.5 file."""
    layers = _lora_layers(pipes["sd15"], "sd15", text_encoder=False)
    keys = set(to_layout("diffusers", layers, get_family("sd15").KOHYA_PREFIXES, 4, 8.0))
    assert keys and not _tool_sees("ComfyUI", "sd15", pipes["sd15"], keys)
    kohya = set(to_layout("kohya", layers, get_family("sd15").KOHYA_PREFIXES, 4, 8.0))
    assert _tool_sees("ComfyUI", "sd15", pipes["sd15"], kohya) == kohya


def test_sd_scripts_flux_file_has_bfl_shapes(pipes):
    transformer = pipes["flux"].transformer
    cfg = transformer.config
    hidden = cfg.num_attention_heads * cfg.attention_head_dim
    shapes = rules.bfl_linears(cfg.num_layers, cfg.num_single_layers, hidden)
    tensors = to_layout("sd-scripts", _lora_layers(pipes["flux"], "flux"), get_family("flux").KOHYA_PREFIXES, 4, 8.0)
    assert layout_of(set(tensors)) == "sd-scripts"
    fused = {"double_blocks.0.img_attn.qkv": 3, "double_blocks.0.txt_attn.qkv": 3, "single_blocks.0.linear1": 4}
    for module, parts in fused.items():
        name = "lora_unet_" + module.replace(".", "_")
        up, down = tensors[f"{name}.lora_up.weight"], tensors[f"{name}.lora_down.weight"]
        assert (up.shape[0], down.shape[1]) == shapes[module]  # ComfyUI patches the model's own weight shape
        assert down.shape[0] == 4 * parts and float(tensors[f"{name}.alpha"]) == 8.0 * parts  # alpha/rank kept


def test_sd_scripts_flux_survives_diffusers_converter_at_flux1_width():
    """diffusers' converter hard-codes FLUX.1's widths (3072, MLP 12288), so test at that width: every
    module's weight change (alpha/rank · B @ A) comes back exactly, and the untrained MLP part as zero."""
    from diffusers.loaders.lora_conversion_utils import _convert_kohya_flux_lora_to_diffusers

    width, rank, alpha = 3072, 2, 8.0
    gen = torch.Generator().manual_seed(0)
    modules = [f"transformer_blocks.0.attn.{m}" for m in
               ("to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj", "to_out.0", "to_add_out")]
    modules += [f"single_transformer_blocks.0.attn.{m}" for m in ("to_q", "to_k", "to_v")]
    state = {}
    for m in modules:
        state[f"{m}.lora_A.weight"] = torch.randn(rank, width, generator=gen)
        state[f"{m}.lora_B.weight"] = torch.randn(width, rank, generator=gen)
    converted = _convert_kohya_flux_lora_to_diffusers(to_sd_scripts_flux(state, alpha))
    for m in modules:
        ours = alpha / rank * state[f"{m}.lora_B.weight"] @ state[f"{m}.lora_A.weight"]
        theirs = converted[f"transformer.{m}.lora_B.weight"] @ converted[f"transformer.{m}.lora_A.weight"]
        assert torch.equal(ours, theirs), m
    mlp = "transformer.single_transformer_blocks.0.proj_mlp"
    assert not torch.any(converted[f"{mlp}.lora_B.weight"] @ converted[f"{mlp}.lora_A.weight"])


def test_sd_scripts_flux_splits_back_into_the_kohya_file(pipes):
    """Reading our own sd-scripts file (e.g. as --init-lora) recovers the kohya file's every weight change."""
    layers = _lora_layers(pipes["flux"], "flux")
    prefixes = get_family("flux").KOHYA_PREFIXES
    kohya = to_layout("kohya", layers, prefixes, 4, 8.0)
    back = from_sd_scripts_flux(to_layout("sd-scripts", layers, prefixes, 4, 8.0))
    assert set(back) == set(kohya)
    for key in (k for k in kohya if k.endswith(".lora_down.weight")):
        base = key[: -len(".lora_down.weight")]
        assert torch.allclose(_kohya_delta(back, base), _kohya_delta(kohya, base), atol=1e-6), base


def _kohya_delta(tensors: dict[str, torch.Tensor], base: str) -> torch.Tensor:
    """What a kohya module adds to its layer's weight: alpha / rank · up @ down."""
    down, up = tensors[f"{base}.lora_down.weight"], tensors[f"{base}.lora_up.weight"]
    return float(tensors[f"{base}.alpha"]) / down.shape[0] * up @ down


def test_sd_scripts_flux_splits_a_lora_trained_on_the_fused_layer():
    """sd-scripts' default trains one LoRA on the fused qkv; each part then gets its rows, exactly."""
    gen = torch.Generator().manual_seed(0)
    down, up = torch.randn(6, 8, generator=gen), torch.randn(24, 6, generator=gen)
    fused = {"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": down,
             "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight": up,
             "lora_unet_double_blocks_0_img_attn_qkv.alpha": torch.tensor(3.0)}
    split = from_sd_scripts_flux(fused)
    for i, part in enumerate(("to_q", "to_k", "to_v")):
        base = f"lora_transformer_transformer_blocks_0_attn_{part}"
        assert torch.allclose(_kohya_delta(split, base), 3.0 / 6 * up[8 * i:8 * (i + 1)] @ down)


def _render(pipe) -> np.ndarray:
    return pipe("a photo of sks", num_inference_steps=2, height=64, width=64, guidance_scale=3.5,
                generator=torch.Generator().manual_seed(0), output_type="np").images[0]


def test_sd_scripts_flux_renders_like_diffusers_layout(pipes, tmp_path):
    """On the tiny FLUX through FluxPipeline.load_lora_weights (which converts sd-scripts names with
    diffusers' own converter). Double blocks only: the converter's single-block widths are FLUX.1's."""
    from safetensors.torch import save_file

    pipe = pipes["flux"]
    layers = _lora_layers(pipe, "flux", text_encoder=False, seed=3)
    layers["transformer"] = {k: v for k, v in layers["transformer"].items()
                             if not k.startswith("single_transformer_blocks.")}
    base = _render(pipe)
    images = {}
    for fmt in ("diffusers", "sd-scripts"):
        path = tmp_path / f"{fmt}.safetensors"
        save_file(to_layout(fmt, layers, get_family("flux").KOHYA_PREFIXES, 4, 8.0), str(path))
        pipe.load_lora_weights(str(path), adapter_name=fmt.replace("-", "_"))
        images[fmt] = _render(pipe)
        pipe.unload_lora_weights()
    assert np.abs(images["diffusers"] - base).max() > 0.05, "the LoRA must change the image"
    assert np.abs(images["diffusers"] - images["sd-scripts"]).max() <= 1 / 255
    assert np.array_equal(_render(pipe), base)


def test_sd_scripts_refuses_a_module_with_no_bfl_name():
    with pytest.raises(InvalidInput, match="^format: .*export as kohya") as err:
        bfl_name("x_embedder")
    assert err.value.field == "format"
    with pytest.raises(InvalidInput, match="no sd-scripts"):
        check_layout("sd-scripts", {"transformer": {"context_embedder.lora_A.weight": torch.zeros(1, 1)}})
    check_layout("kohya", {"transformer": {"context_embedder.lora_A.weight": torch.zeros(1, 1)}})


def test_warnings_name_the_tools_and_the_layout_that_works():
    for family in ("sd15", "sdxl"):
        [note] = layout_warnings("diffusers", family)
        assert "only its text-encoder part (if any) in ComfyUI, Forge and nothing in A1111, sd-scripts" in note
        assert "export with --format kohya or sd-scripts" in note
        assert layout_warnings("kohya", family) == [] == layout_warnings("sd-scripts", family)
    [note] = layout_warnings("kohya", "flux")
    assert "only its text-encoder part (if any) in sd-scripts" in note and "--format sd-scripts" in note
    assert "nothing in sd-scripts" in layout_warnings("diffusers", "flux")[0]
    assert layout_warnings("sd-scripts", "flux") == []
    assert best_layout("flux") == "sd-scripts" and best_layout("sd15") == "kohya"
    with pytest.raises(InvalidInput, match="choose one of: kohya, diffusers, sd-scripts"):
        layout_warnings("peft", "sd15")


def test_readme_shows_the_table():
    assert markdown_table() in README.read_text(encoding="utf-8"), \
        "README's LoRA layouts table differs from engine/lora/layouts.py; paste markdown_table()'s output"


