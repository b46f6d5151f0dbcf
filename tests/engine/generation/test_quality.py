"""The load policy: full quality when idle, cheaper levels as the expected wait grows, never below the floor."""

from __future__ import annotations

import pytest

from loramill.engine.generation.quality import (
    DEFAULT_LEVELS,
    FULL,
    STEPS_ONLY_LEVELS,
    LoadPolicy,
    QualityLevel,
    apply_level,
    choose_level,
    degrade_request,
    expected_wait,
    level_request,
    levels_for,
)
from loramill.engine.generation.request import GenerateRequest, LoraRef


def test_choose_level_full_quality_when_idle() -> None:
    assert choose_level(0.0, 2.0, target_seconds=1.0) == FULL


def test_choose_level_full_quality_without_target() -> None:
    assert choose_level(1000.0, 2.0, target_seconds=None) == FULL


@pytest.mark.parametrize(("wait", "expected"), [
    (2.0, "full"),      # (2 + 2) × 1.0 = 4 ≤ 5
    (5.0, "fast"),      # (5 + 2) × 0.6 = 4.2
    (8.0, "faster"),    # (8 + 2) × 0.4 = 4
    (12.0, "fastest"),  # (12 + 2) × 0.225 = 3.15
    (500.0, "fastest"),  # nothing meets it: the cheapest level
])
def test_choose_level_degrades_as_wait_grows(wait: float, expected: str) -> None:
    assert choose_level(wait, 2.0, target_seconds=5.0).name == expected


def test_choose_level_is_monotonic_in_wait() -> None:
    costs = [choose_level(w / 4, 1.0, target_seconds=3.0).cost for w in range(0, 200)]
    assert costs == sorted(costs, reverse=True)


def test_choose_level_steps_only_keeps_resolution() -> None:
    assert choose_level(1e6, 1.0, 1.0, STEPS_ONLY_LEVELS).resolution_factor == 1.0


def test_apply_level_rounds_steps_up_and_sides_down_to_multiple() -> None:
    assert apply_level(25, 512, 512, DEFAULT_LEVELS[1]) == (15, 512, 512)
    assert apply_level(1, 512, 512, DEFAULT_LEVELS[2]) == (1, 512, 512)
    assert apply_level(20, 512, 768, DEFAULT_LEVELS[3], multiple=64) == (8, 384, 576)
    assert apply_level(20, 64, 64, QualityLevel("tiny", 0.5, 0.1), multiple=8, min_side=8) == (10, 8, 8)
    assert apply_level(20, 128, 64, DEFAULT_LEVELS[3]) == (8, 96, 64)  # never below the 64 px a request allows


def test_quality_level_rejects_factors_outside_unit_interval() -> None:
    with pytest.raises(ValueError, match="factors"):
        QualityLevel("bad", steps_factor=1.5)


def test_expected_wait_shares_queue_between_workers() -> None:
    assert expected_wait(10, 2.0, workers=2) == 10.0
    assert expected_wait(-1, 2.0) == 0.0


def test_degrade_request_fills_model_defaults_and_leaves_full_alone() -> None:
    request = GenerateRequest("a dog")
    assert degrade_request(request, FULL, default_steps=20, default_size=64) is request
    degraded = degrade_request(request, DEFAULT_LEVELS[3], default_steps=20, default_size=128)
    assert (degraded.steps, degraded.width, degraded.height) == (8, 96, 96)
    assert request.steps is None


def test_load_policy_learns_full_quality_seconds_from_degraded_jobs() -> None:
    policy = LoadPolicy(target_seconds=5.0, initial_seconds=1.0, smoothing=1.0)
    policy.observe(0.6, DEFAULT_LEVELS[1])  # 0.6 s at cost 0.6 → 1 s at full quality
    assert policy.seconds_per_job == pytest.approx(1.0)
    assert policy.level_for(0) == FULL
    assert policy.level_for(3).name == "full"  # 4 jobs × 1 s ≤ 5 s
    assert policy.level_for(20).name == "fastest"


def test_load_policy_uses_measured_time_of_a_level_over_the_cost_model() -> None:
    policy = LoadPolicy(target_seconds=10.0, initial_seconds=1.0, smoothing=1.0)
    assert policy.level_for(15).name == "fast"  # model: 16 × 0.6 s = 9.6 s
    policy.observe(0.9, DEFAULT_LEVELS[1])  # fixed costs: "fast" really takes 0.9 s
    assert policy.seconds_at(DEFAULT_LEVELS[1]) == pytest.approx(0.9)
    assert policy.level_for(15).name == "faster"


def test_load_policy_counts_time_already_waited() -> None:
    policy = LoadPolicy(target_seconds=10.0, initial_seconds=1.0)
    assert policy.level_for(5).name == "full"  # 6 × 1 s ≤ 10 s
    assert policy.level_for(5, waited=6.0).name == "fast"  # 6 × 0.6 s ≤ 4 s left
    assert policy.level_for(0, waited=11.0).name == "fastest"  # already late: the cheapest


def test_load_policy_without_target_is_off() -> None:
    assert LoadPolicy(None).level_for(10_000) == FULL


def test_serving_levels_get_cheaper_in_order() -> None:
    costs = [level.cost for level in levels_for()]
    assert costs == sorted(costs, reverse=True) and costs[0] == 1.0
    assert [level.name for level in levels_for("lcm.safetensors", "sd15")][-1] == "few-step"


def test_levels_without_a_torch_unet_are_steps_and_sizes_only() -> None:
    # OpenVINO serving: DeepCache and LoRAs (the few-step one too) need the torch modules
    levels = levels_for("lcm.safetensors", "sd15", torch_unet=False)
    assert [level.name for level in levels] == [level.name for level in levels_for()]
    assert all(level.deep_cache == 1 and level.few_step_lora is None for level in levels)
    assert [level.steps_factor for level in levels] == [level.steps_factor for level in levels_for()]


def test_level_request_uses_deep_cache_on_unet_models_only() -> None:
    faster = {level.name: level for level in levels_for()}["faster"]
    on_sd15 = level_request(GenerateRequest("a dog"), faster, "sd15")
    # 40% of SD 1.5's 20 steps; the solver stays the generator's (Euler, measured best on the reference world)
    assert (on_sd15.steps, on_sd15.sampler, on_sd15.deep_cache) == (8, "default", 2)
    on_flux = level_request(GenerateRequest("a dog"), faster, "flux")
    assert (on_flux.sampler, on_flux.deep_cache) == ("default", 1)
    # A solver the user chose is kept; full quality is the request itself.
    assert level_request(GenerateRequest("a dog", sampler="unipc"), faster, "sd15").sampler == "unipc"
    request = GenerateRequest("a dog")
    assert level_request(request, FULL, "sd15") is request


def test_few_step_level_adds_its_lora_only_on_its_family(tmp_path) -> None:
    few = levels_for(tmp_path / "lcm.safetensors", "sd15")[-1]
    mine = LoraRef(path=tmp_path / "mine.safetensors", weight=0.8)
    on_sd15 = level_request(GenerateRequest("a dog", loras=[mine], steps=30), few, "sd15")
    assert (on_sd15.steps, on_sd15.guidance, on_sd15.sampler) == (4, 1.0, "lcm")
    assert [lora.path.name for lora in on_sd15.loras] == ["mine.safetensors", "lcm.safetensors"]
    # On another family the level renders like "fastest": the generator's own solver, no foreign LoRA.
    on_sdxl = level_request(GenerateRequest("a dog", loras=[mine], steps=30), few, "sdxl")
    assert (on_sdxl.steps, on_sdxl.sampler, len(on_sdxl.loras)) == (12, "default", 1)
