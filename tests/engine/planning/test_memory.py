"""The memory plan: real architectures on the meta device, counted activations, and what it suggests."""

from __future__ import annotations

import pytest
import torch

from loramill.engine.families import get_family
from loramill.engine.planning.activations import count_activations
from loramill.engine.planning.architectures import architecture, architecture_from_folder, build_on_meta
from loramill.engine.planning.memory import GIB, PlanOptions, check_fits, plan_training, suggest
from loramill.engine.training import adapters
from loramill.errors import UnsupportedHardware


def _millions(class_name, config):
    return round(sum(p.numel() for p in build_on_meta(class_name, config).parameters()) / 1e6, 2)


def test_real_sd15_architecture_has_the_published_parameter_counts():
    arch = architecture("sd15")
    assert _millions(*arch.denoiser) == 859.52
    assert _millions("AutoencoderKL", arch.vae) == 83.65
    assert _millions(*arch.text_encoders["text_encoder"]) == 123.06


def _saved_bytes_on_cpu(model, inputs):
    """What autograd really keeps for backward on a CPU step (weights excluded), deduplicated by storage."""
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in weights:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(**inputs)
    return sum(seen.values())


def test_meta_count_matches_what_a_real_cpu_step_keeps(tiny_models):
    arch = architecture_from_folder(str(tiny_models["sd15"]), "sd15")
    family = get_family("sd15")
    counted_model = build_on_meta(*arch.denoiser)
    adapters.add_lora(counted_model, 4, 4.0, family.DEFAULT_TARGET_MODULES)
    counted = count_activations(counted_model, arch, "sd15", 128, 2, torch.float32)

    pipe = family.load_pipeline(str(tiny_models["sd15"]))
    real = pipe.unet.requires_grad_(False)
    adapters.add_lora(real, 4, 4.0, family.DEFAULT_TARGET_MODULES)
    side = 128 // arch.vae_scale
    inputs = dict(sample=torch.randn(2, 4, side, side), timestep=torch.tensor([10, 20]),
                  encoder_hidden_states=torch.randn(2, arch.text_tokens, arch.denoiser[1]["cross_attention_dim"]))
    measured = _saved_bytes_on_cpu(real, inputs)
    assert abs(counted.saved - measured) <= 0.15 * measured, (counted.saved, measured)
    assert counted.checkpointed < counted.saved


def test_options_move_the_plan_the_way_they_should():
    base = plan_training(PlanOptions("sd15", mixed_precision="fp16"))
    int8 = plan_training(PlanOptions("sd15", mixed_precision="fp16", quantize_base="int8"))
    nf4 = plan_training(PlanOptions("sd15", mixed_precision="fp16", quantize_base="nf4"))
    checkpointed = plan_training(PlanOptions("sd15", mixed_precision="fp16", gradient_checkpointing=True))
    batch2 = plan_training(PlanOptions("sd15", mixed_precision="fp16", batch_size=2))
    fp32 = plan_training(PlanOptions("sd15"))

    weights = base.parts["denoiser weights"]
    # Only Linears are quantised (SD 1.5's UNet is mostly convolutions; FLUX is all Linears): int8 saves one
    # byte per fp16 Linear weight, NF4 a further ~0.44.
    unet = build_on_meta(*architecture("sd15").denoiser)
    linear = sum(m.weight.numel() for m in unet.modules() if type(m) is torch.nn.Linear)
    assert abs((weights - int8.parts["denoiser weights"]) - linear) < 0.01 * linear
    assert abs((int8.parts["denoiser weights"] - nf4.parts["denoiser weights"]) - 0.4375 * linear) < 0.01 * linear
    assert checkpointed.parts["activations"] < base.parts["activations"] / 3
    assert 1.8 < batch2.parts["activations"] / base.parts["activations"] < 2.2
    assert fp32.parts["denoiser weights"] == 2 * weights
    assert set(base.phases) == {"caching", "training step"}


def test_a_run_that_does_not_fit_is_refused_with_the_flags_that_make_it_fit():
    plan = plan_training(PlanOptions("sd15"))
    available = int(plan.peak * 0.75)
    tried = suggest(plan, available)
    assert tried and tried[-1][1].peak <= available
    assert tried[0][0] == "--gradient-checkpointing"
    with pytest.raises(UnsupportedHardware, match=r"needs ~\d+\.\d GiB, Test GPU has .*--gradient-checkpointing"):
        check_fits(plan, available, "Test GPU")
    check_fits(plan, plan.peak, "Test GPU")  # fits exactly: no error


def test_a_run_nothing_can_fit_says_so():
    plan = plan_training(PlanOptions("sd15"))
    with pytest.raises(UnsupportedHardware, match="lower --resolution"):
        check_fits(plan, 1 * GIB, "Small GPU")
