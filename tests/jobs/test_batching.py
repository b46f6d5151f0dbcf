"""Concurrent generation requests share denoising runs: grouped by LoRA and settings, each stoppable alone."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from loramill.engine.generation.generate import GeneratedImage, GenerateRequest, Plan
from loramill.engine.generation.loras import LoraRef
from loramill.engine.progress import Progress, StopRequested
from loramill.errors import InvalidInput, OutOfMemory
from loramill.jobs.batching import GenerationBatcher


class FakeGenerator:
    """Plans like the real ``Generator``; ``generate_batch`` records each run and waits for ``release``."""

    adapters = None

    def __init__(self, fail_with: BaseException | None = None) -> None:
        self.runs: list[list[str]] = []
        self.release = threading.Event()
        self.started = threading.Event()
        self.fail_with = fail_with

    def plan(self, request: GenerateRequest) -> Plan:
        if request.prompt == "bad":
            raise InvalidInput("prompt: bad", field="prompt")
        return Plan(prompt=request.prompt, negative_prompt=request.negative_prompt, loras=tuple(request.loras),
                    steps=request.steps or 4, guidance=7.5, width=64, height=64, seed=request.seed,
                    num_images=request.num_images)

    def batch_key(self, plan: Plan) -> tuple[object, ...]:
        return plan.batch_key

    def can_batch(self, plans: list[Plan]) -> bool:
        return len({p.batch_key for p in plans}) == 1

    def fit_together(self, plans: list[Plan]) -> bool:
        return True

    def generate_batch(self, plans: list[Plan], progress: Any) -> list[list[GeneratedImage]]:
        self.runs.append([p.prompt for p in plans])
        self.started.set()
        assert self.release.wait(10)
        for step in range(1, 4):
            progress(Progress("generate", step, 3))
        if self.fail_with is not None:
            raise self.fail_with
        if any(p.prompt == "poison" for p in plans):
            raise InvalidInput("generation failed for these settings: poison", code="generation_failed")
        if len(plans) > 2 and any(p.prompt.startswith("big") for p in plans):
            raise OutOfMemory("generation ran out of device memory rendering 3 image(s) at 512x512")
        return [[GeneratedImage(None, p.seed + i, p.prompt) for i in range(p.num_images)]  # type: ignore[arg-type]
                for p in plans]


def lora(name: str) -> list[LoraRef]:
    return [LoraRef(Path(f"/loras/{name}.safetensors"))]


def submit(batcher: GenerationBatcher, gen: FakeGenerator, request: GenerateRequest, results: dict[str, Any],
           progress: Any = None) -> threading.Thread:
    def work() -> None:
        try:
            results[request.prompt] = batcher.generate(gen, request, progress or (lambda report: None))  # type: ignore[arg-type]
        except BaseException as exc:  # noqa: BLE001 - the test reads what each thread got
            results[request.prompt] = exc

    thread = threading.Thread(target=work)
    thread.start()
    return thread


def wait_waiting(batcher: GenerationBatcher, count: int) -> None:
    deadline = time.monotonic() + 10
    while len(batcher._scheduler) < count:
        assert time.monotonic() < deadline, "requests did not queue"
        time.sleep(0.005)


def test_idle_engine_runs_a_lone_request_at_once_and_later_ones_share_runs_by_lora() -> None:
    batcher, gen, results = GenerationBatcher(max_images=3, max_overtaken=16), FakeGenerator(), {}
    threads = [submit(batcher, gen, GenerateRequest(prompt="first", loras=lora("a")), results)]
    assert gen.started.wait(10)  # nothing else was waiting: it ran alone, without waiting for company
    # While it renders, five more arrive: three of LoRA b, two of LoRA a (one with other settings).
    arrivals = [("b1", "b", 4), ("a1", "a", 4), ("b2", "b", 4), ("a2", "a", 9), ("b3", "b", 4)]
    for prompt, name, steps in arrivals:
        threads.append(submit(batcher, gen, GenerateRequest(prompt=prompt, loras=lora(name), steps=steps), results))
    wait_waiting(batcher, 5)
    gen.release.set()
    for thread in threads:
        thread.join(10)
    # LoRA a is active after the first run: a1 goes next (no switch); a2 differs in steps, so it
    # cannot share a1's run; then the b group as one batch of three.
    assert gen.runs == [["first"], ["a1"], ["a2"], ["b1", "b2", "b3"]]
    assert all(isinstance(results[p], list) and results[p][0].parameters == p for p in results)
    assert batcher.runs == 4 and batcher.jobs == 6


def test_batch_respects_image_budget_and_arrival_order() -> None:
    batcher, gen, results = GenerationBatcher(max_images=4, max_overtaken=16), FakeGenerator(), {}
    threads = [submit(batcher, gen, GenerateRequest(prompt="warm"), results)]
    assert gen.started.wait(10)
    for i, images in enumerate([2, 3, 1, 1]):
        threads.append(submit(batcher, gen, GenerateRequest(prompt=f"j{i}", num_images=images), results))
        wait_waiting(batcher, i + 1)
    gen.release.set()
    for thread in threads:
        thread.join(10)
    assert gen.runs == [["warm"], ["j0", "j2", "j3"], ["j1"]]  # 2 + 1 + 1 images; j1's 3 would make 5
    assert [len(results[f"j{i}"]) for i in range(4)] == [2, 3, 1, 1]


def test_stopping_one_job_leaves_the_others_of_its_batch_their_images() -> None:
    batcher, gen, results = GenerationBatcher(max_images=8), FakeGenerator(), {}
    threads = [submit(batcher, gen, GenerateRequest(prompt="warm"), results)]
    assert gen.started.wait(10)

    def cancel(report: Progress) -> None:
        if report.step == 2:
            raise StopRequested("canceled by its owner")

    threads.append(submit(batcher, gen, GenerateRequest(prompt="keep1"), results))
    wait_waiting(batcher, 1)
    threads.append(submit(batcher, gen, GenerateRequest(prompt="cancel"), results, progress=cancel))
    wait_waiting(batcher, 2)
    threads.append(submit(batcher, gen, GenerateRequest(prompt="keep2"), results))
    wait_waiting(batcher, 3)
    gen.release.set()
    for thread in threads:
        thread.join(10)
    assert gen.runs[1] == ["keep1", "cancel", "keep2"]
    assert isinstance(results["cancel"], StopRequested)
    assert [img.parameters for img in results["keep1"] + results["keep2"]] == ["keep1", "keep2"]


def test_a_failed_run_fails_each_job_of_its_batch_and_a_bad_request_fails_alone() -> None:
    gen = FakeGenerator(fail_with=InvalidInput("generation failed for these settings: boom", code="generation_failed"))
    batcher, results = GenerationBatcher(max_images=8), {}
    with pytest.raises(InvalidInput, match="prompt: bad"):
        batcher.generate(gen, GenerateRequest(prompt="bad"))  # type: ignore[arg-type]
    assert len(batcher._scheduler) == 0 and gen.runs == []  # refused before it waited for anything
    threads = [submit(batcher, gen, GenerateRequest(prompt="x"), results)]
    assert gen.started.wait(10)
    threads.append(submit(batcher, gen, GenerateRequest(prompt="y"), results))
    threads.append(submit(batcher, gen, GenerateRequest(prompt="z"), results))
    wait_waiting(batcher, 2)
    gen.release.set()
    for thread in threads:
        thread.join(10)
    errors = [results[p] for p in "xyz"]
    assert all(isinstance(e, InvalidInput) and e.code == "generation_failed" for e in errors)
    assert len({id(e) for e in errors}) == 3  # each thread raised an exception of its own


def test_a_job_that_breaks_its_batch_fails_alone_and_the_others_get_their_images() -> None:
    batcher, gen, results = GenerationBatcher(max_images=8), FakeGenerator(), {}
    threads = [submit(batcher, gen, GenerateRequest(prompt="warm"), results)]
    assert gen.started.wait(10)
    for i, prompt in enumerate(["ok1", "poison", "ok2"]):
        threads.append(submit(batcher, gen, GenerateRequest(prompt=prompt), results))
        wait_waiting(batcher, i + 1)
    gen.release.set()
    for thread in threads:
        thread.join(10)
    assert gen.runs == [["warm"], ["ok1", "poison", "ok2"], ["ok1"], ["poison"], ["ok2"]]
    assert isinstance(results["poison"], InvalidInput)
    assert [img.parameters for img in results["ok1"] + results["ok2"]] == ["ok1", "ok2"]


def test_running_out_of_memory_renders_the_batch_alone_and_halves_later_batches() -> None:
    batcher, gen, results = GenerationBatcher(max_images=8), FakeGenerator(), {}
    threads = [submit(batcher, gen, GenerateRequest(prompt="warm"), results)]
    assert gen.started.wait(10)
    for i in range(3):
        threads.append(submit(batcher, gen, GenerateRequest(prompt=f"big{i}"), results))
        wait_waiting(batcher, i + 1)
    gen.release.set()
    for thread in threads:
        thread.join(10)
    assert gen.runs == [["warm"], ["big0", "big1", "big2"], ["big0"], ["big1"], ["big2"]]
    assert all(isinstance(results[f"big{i}"], list) for i in range(3))
    assert batcher.max_images == 1  # 3 images did not fit: at most 1 from now on


def test_max_images_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_images"):
        GenerationBatcher(max_images=0)
