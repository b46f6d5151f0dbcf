"""Serving settings: bf16 only where the CPU has it, samplers built from the model's own config."""

from __future__ import annotations

import pytest
import torch

from loramill.engine.families import get_family
from loramill.engine.generation.serving import (
    SAMPLERS,
    ServingSettings,
    cpu_has_native_bf16,
    make_sampler,
    resolve_precision,
)
from loramill.errors import InvalidInput

ZEN4 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n"
SKYLAKE = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni\n"


def test_resolve_precision_auto_takes_bf16_only_with_native_instructions():
    cpu = torch.device("cpu")
    assert cpu_has_native_bf16(ZEN4) and not cpu_has_native_bf16(SKYLAKE)
    assert resolve_precision("auto", cpu, ZEN4) == torch.bfloat16
    assert resolve_precision("auto", cpu, SKYLAKE) == torch.float32
    assert resolve_precision("fp32", cpu, ZEN4) == torch.float32
    assert resolve_precision("bf16", cpu, SKYLAKE) == torch.bfloat16


def test_unknown_precision_and_sampler_name_the_field():
    with pytest.raises(InvalidInput, match="choose one of: auto, fp32, bf16") as err:
        ServingSettings(precision="fp8")
    assert err.value.field == "precision"
    with pytest.raises(InvalidInput, match="unknown sampler") as err:
        make_sampler(object(), "heun9000")
    assert err.value.field == "sampler"


def test_make_sampler_keeps_the_models_noise_schedule(tiny_models):
    pipe = get_family("sd15").load_pipeline(str(tiny_models["sd15"]))
    assert make_sampler(pipe, "default") is pipe.scheduler
    for name in set(SAMPLERS) - {"default"}:
        sampler = make_sampler(pipe, name)
        assert sampler.config.beta_schedule == pipe.scheduler.config.beta_schedule
        assert sampler.config.beta_end == pipe.scheduler.config.beta_end
    assert make_sampler(pipe, "dpmpp").config.algorithm_type == "dpmsolver++"


def test_make_sampler_refuses_unet_solvers_on_flux(tiny_models):
    pipe = get_family("flux").load_pipeline(str(tiny_models["flux"]))
    with pytest.raises(InvalidInput, match="FLUX keeps its flow-matching scheduler"):
        make_sampler(pipe, "dpmpp")


def test_generator_runs_a_request_with_its_sampler_and_deep_cache_then_restores_the_scheduler(tiny_models):
    from loramill.engine.generation.generate import Generator
    from loramill.engine.generation.request import GenerateRequest

    generator = Generator(str(tiny_models["sd15"]))
    own = generator.pipe.scheduler
    plain = GenerateRequest("a red circle", steps=6, width=64, height=64)
    fast = GenerateRequest("a red circle", steps=6, width=64, height=64, sampler="dpmpp", deep_cache=2)
    assert generator.plan(plain).batch_key != generator.plan(fast).batch_key  # never one run together
    image = generator.generate(fast)[0]
    assert "Sampler: dpmpp" in image.parameters and "DeepCache interval: 2" in image.parameters
    assert generator.pipe.scheduler is own
    assert "Sampler" not in generator.generate(plain)[0].parameters


def test_resident_sampler_is_euler_unless_the_model_own_is_asked_for(tiny_models):
    from loramill.engine.generation.generate import Generator

    own = type(get_family("sd15").load_pipeline(str(tiny_models["sd15"])).scheduler).__name__
    assert own == "PNDMScheduler"  # diffusers' SD 1.5 default, which the tiny model copies
    euler = Generator(str(tiny_models["sd15"]))
    assert type(euler.pipe.scheduler).__name__ == "EulerDiscreteScheduler"
    assert euler.pipe.scheduler.config.beta_end == get_family("sd15").load_pipeline(
        str(tiny_models["sd15"])).scheduler.config.beta_end
    model = Generator(str(tiny_models["sd15"]), serving=ServingSettings(sampler="model"))
    assert type(model.pipe.scheduler).__name__ == own
    flux = Generator(str(tiny_models["flux"]))  # a flow-matching model keeps its own scheduler
    assert "FlowMatch" in type(flux.pipe.scheduler).__name__
    with pytest.raises(InvalidInput, match="choose one of: euler, model, dpmpp, unipc") as err:
        ServingSettings(sampler="lcm")
    assert err.value.field == "sampler"
