"""Many LoRAs on one base model: a stream of generation jobs over 20 LoRAs with Zipf-like popularity.

Three ways on the same resident pipeline, the same jobs, the same denoising:
1. naive: ``load_lora_weights`` then ``unload_lora_weights`` for every job (public inference services);
2. all loaded: every LoRA loaded once up front, ``set_adapters`` per job (its load time counts);
3. loramill: ``Generator`` with its bounded ``AdapterCache`` (state dicts in RAM, a few adapters
   resident, LRU), the queued jobs ordered by ``AdapterScheduler`` (grouped by adapter, no job
   overtaken more than ``MAX_OVERTAKEN`` times).
Then 1,000 switches through loramill's cache with resident memory (RSS) read before and after.
"""

from __future__ import annotations

import gc
import random
import time
from pathlib import Path
from typing import Any

import torch

from bench.common import PROMPT, Result, mean, speedup, tiny_model, training_images, workdir

LORAS, JOBS, ZIPF_S = 20, 200, 1.1
STEPS, SIDE = 8, 64
MAX_RESIDENT, MAX_OVERTAKEN = 4, 16
SWITCHES = 1000


def make_loras(count: int) -> list[Path]:
    """One trained LoRA (kohya layout), and ``count`` files of its layout with seeded random weights."""
    from loramill.engine.lora.files import read_lora, write_lora
    from loramill.engine.training.config import TrainConfig
    from loramill.engine.training.run import train

    work = workdir("loras")
    files = [work / f"lora-{i:02d}.safetensors" for i in range(count)]
    if all(f.exists() for f in files):
        return files
    base = work / "trained.safetensors"
    if not base.exists():
        train(TrainConfig(model=str(tiny_model()), images=str(training_images(4, 96)), trigger="sks", out=str(base),
                          resolution=64, rank=8, max_steps=3, prepare="never"))
    trained = read_lora(base)
    for i, path in enumerate(files):
        g = torch.Generator().manual_seed(i)
        tensors = {k: (v if k.endswith(".alpha") else v + 0.05 * torch.randn(v.shape, generator=g))
                   for k, v in trained.tensors.items()}
        write_lora(path, tensors, dict(trained.metadata))
    return files


def job_stream(files: list[Path], jobs: int, seed: int = 0) -> list[tuple[int, Path]]:
    """``jobs`` (seed, LoRA) pairs; LoRA k drawn with weight 1/(k+1)^s (a few popular, a long tail)."""
    rng = random.Random(seed)
    weights = [1 / (k + 1) ** ZIPF_S for k in range(len(files))]
    return [(n, files[rng.choices(range(len(files)), weights)[0]]) for n in range(jobs)]


def _kwargs(seed: int) -> dict[str, Any]:
    from loramill.engine.families import sd15

    return sd15.generation_kwargs(prompt=PROMPT, negative_prompt="", steps=STEPS, guidance=7.5, width=SIDE,
                                  height=SIDE, num_images=1, generator=torch.Generator().manual_seed(seed))


def run_naive(pipe: Any, stream: list[tuple[int, Path]]) -> dict[str, float]:
    switch = 0.0
    started = time.perf_counter()
    for seed, path in stream:
        t = time.perf_counter()
        pipe.load_lora_weights(str(path), adapter_name="job")
        switch += time.perf_counter() - t
        with torch.inference_mode():
            pipe(**_kwargs(seed))
        t = time.perf_counter()
        pipe.unload_lora_weights()
        switch += time.perf_counter() - t
    return {"seconds": time.perf_counter() - started, "switch_seconds": switch}


def run_all_loaded(pipe: Any, stream: list[tuple[int, Path]], files: list[Path]) -> dict[str, float]:
    started = time.perf_counter()
    for i, path in enumerate(files):
        pipe.load_lora_weights(str(path), adapter_name=f"a{i}")
    load = time.perf_counter() - started
    switch = 0.0
    for seed, path in stream:
        t = time.perf_counter()
        pipe.set_adapters([f"a{files.index(path)}"], adapter_weights=[1.0])
        switch += time.perf_counter() - t
        with torch.inference_mode():
            pipe(**_kwargs(seed))
    total = time.perf_counter() - started
    pipe.unload_lora_weights()
    return {"seconds": total, "switch_seconds": switch, "load_seconds": load}


def run_loramill(generator: Any, stream: list[tuple[int, Path]], schedule: bool) -> dict[str, float]:
    from loramill.engine.generation.generate import GenerateRequest
    from loramill.engine.generation.loras import LoraSpec
    from loramill.jobs.scheduling import AdapterScheduler, switches

    cache = generator.adapters
    activate = cache.activate
    spent = [0.0]

    def timed_activate(loras: list[Any]) -> list[str]:
        t = time.perf_counter()
        try:
            return activate(loras)
        finally:
            spent[0] += time.perf_counter() - t

    cache.activate = timed_activate
    order = stream
    started = time.perf_counter()
    if schedule:
        scheduler: AdapterScheduler[tuple[int, Path]] = AdapterScheduler(key=lambda job: job[1],
                                                                          max_overtaken=MAX_OVERTAKEN)
        for job in stream:
            scheduler.add(job)
        order = []
        while len(scheduler):
            order.append(scheduler.next(resident=_resident_paths(cache, stream)))
    misses_before = cache.misses
    for seed, path in order:
        generator.generate(GenerateRequest(prompt=PROMPT, loras=[LoraSpec(path, 1.0)], steps=STEPS, width=SIDE,
                                           height=SIDE, seed=seed))
    total = time.perf_counter() - started
    del cache.activate
    waits = _overtaken(stream, order)
    return {"seconds": total, "switch_seconds": spent[0], "loads": cache.misses - misses_before,
            "adapter_changes": switches(order, key=lambda job: job[1]), "max_overtaken": max(waits)}


def _resident_paths(cache: Any, stream: list[tuple[int, Path]]) -> set[Path]:
    from loramill.engine.generation.loras import adapter_name

    names = set(cache._resident)
    return {path for _, path in stream if adapter_name(path) in names}


def _overtaken(arrival: list[tuple[int, Path]], order: list[tuple[int, Path]]) -> list[int]:
    position = {job[0]: i for i, job in enumerate(arrival)}
    return [sum(1 for other in order[:i] if position[other[0]] > position[job[0]]) for i, job in enumerate(order)]


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2 ** 20


def memory_over_switches(generator: Any, files: list[Path], switches: int) -> dict[str, float]:
    """RSS before and after ``switches`` activations cycling through all LoRAs (each one a load or eviction)."""
    from loramill.engine.generation.loras import LoraSpec

    cache = generator.adapters
    for path in files:  # warm: every state dict read once, allocator pools grown
        cache.activate([LoraSpec(path, 1.0)])
    gc.collect()
    before = rss_mb()
    started = time.perf_counter()
    for i in range(switches):
        cache.activate([LoraSpec(files[i % len(files)], 1.0)])
    elapsed = time.perf_counter() - started
    gc.collect()
    after = rss_mb()
    return {"rss_before_mb": round(before, 1), "rss_after_mb": round(after, 1), "growth_mb": round(after - before, 1),
            "switches": switches, "seconds_per_switch": elapsed / switches}


def run(quick: bool = False) -> list[Result]:
    from loramill.engine.generation.generate import Generator

    files = make_loras(LORAS)
    stream = job_stream(files, JOBS // 4 if quick else JOBS)
    generator = Generator(str(tiny_model()), max_resident_loras=MAX_RESIDENT)
    pipe = generator.pipe
    # One untimed generation of each kind first: lazy init is not what is measured.
    pipe.load_lora_weights(str(files[0]), adapter_name="warm")
    with torch.inference_mode():
        pipe(**_kwargs(0))
    pipe.unload_lora_weights()

    naive = run_naive(pipe, stream)
    loaded = run_all_loaded(pipe, stream, files)
    fifo = run_loramill(generator, stream, schedule=False)
    ours = run_loramill(generator, stream, schedule=True)
    memory = memory_over_switches(generator, files, SWITCHES // 5 if quick else SWITCHES)
    jobs = len(stream)
    throughput = {name: jobs / r["seconds"] for name, r in
                  (("naive", naive), ("all_loaded", loaded), ("loramill_fifo", fifo), ("loramill", ours))}
    switch_share = ours["switch_seconds"] / (ours["seconds"] - ours["switch_seconds"])
    details = {"jobs": jobs, "loras": LORAS, "zipf_s": ZIPF_S, "steps": STEPS, "side": SIDE,
               "max_resident": MAX_RESIDENT, "max_overtaken": MAX_OVERTAKEN, "jobs_per_s": throughput,
               "naive": naive, "all_loaded": loaded, "loramill_fifo": fifo, "loramill": ours,
               "switch_share_of_generation": round(switch_share, 4), "memory": memory,
               "generation_s_mean": mean([ours["seconds"] / jobs])}
    command = "make bench BENCH=loras"
    ratio = speedup(naive["seconds"], ours["seconds"])
    return [
        Result("many LoRAs: throughput vs naive", "jobs/s", throughput["naive"], throughput["loramill"], ratio,
               "≥ 3×", bool(ratio and ratio >= 3), command, details,
               note=f"all-loaded set_adapters: {throughput['all_loaded']:.2f} jobs/s; loramill without grouping: "
                    f"{throughput['loramill_fifo']:.2f} jobs/s"),
        Result("many LoRAs: switching share", "switch s / generation s", None, round(switch_share, 4), None,
               "≤ 10%", switch_share <= 0.10, command, {}),
        Result("many LoRAs: RSS growth over 1,000 switches", "MB", None, memory["growth_mb"], None, "≤ 50 MB",
               memory["growth_mb"] <= 50, command, memory),
    ]
