"""Many LoRAs on one base model: a stream of generation jobs over 20 LoRAs with Zipf-like popularity.

Four ways over the same jobs and the same denoising, each on its own resident pipeline, interleaved in
chunks of ``CHUNK`` jobs (so that other processes' load on a shared machine falls on all of them alike):
1. naive: ``load_lora_weights`` then ``unload_lora_weights`` for every job (public inference services);
2. all loaded: every LoRA loaded once up front, ``set_adapters`` per job (its load time counts);
3. loramill as its worker runs generation jobs: it holds up to twice ``LORAMILL_GENERATION_BATCH``
   deliveries, each in a thread, and ``GenerationBatcher`` groups them by adapter and settings into
   shared denoising runs (``AdapterScheduler``: no job overtaken more than
   ``LORAMILL_GENERATION_MAX_OVERTAKEN`` times), on a ``Generator`` with its bounded ``AdapterCache``
   (state dicts in RAM, a few adapters resident, LRU); and, to show what each part brings, the
   ``Generator`` alone, one job after another in arrival order (the cache without batching).
Then 1,000 switches through loramill's cache with resident memory (RSS) read before and after.
"""

from __future__ import annotations

import gc
import random
import time
from pathlib import Path
from typing import Any

import torch

from bench.common import PROMPT, Result, speedup, tiny_model, training_images, workdir

LORAS, JOBS, ZIPF_S = 20, 200, 1.1
STEPS, SIDE = 8, 64
SWITCHES = 1000
# A chunk exists only to spread the machine's noise over the four ways alike; each arrives as a burst,
# and the next one only after it is done. A worker's pipeline drains at every chunk's end, which a real
# queue of 200 jobs never does, so chunks are as long as the noise allows.
CHUNK = 50


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


def run_naive(pipe: Any, stream: list[tuple[int, Path]], totals: dict[str, float]) -> None:
    started = time.perf_counter()
    for seed, path in stream:
        t = time.perf_counter()
        pipe.load_lora_weights(str(path), adapter_name="job")
        totals["switch_seconds"] += time.perf_counter() - t
        with torch.inference_mode():
            pipe(**_kwargs(seed))
        t = time.perf_counter()
        pipe.unload_lora_weights()
        totals["switch_seconds"] += time.perf_counter() - t
    totals["seconds"] += time.perf_counter() - started


def load_all(pipe: Any, files: list[Path], totals: dict[str, float]) -> None:
    started = time.perf_counter()
    for i, path in enumerate(files):
        pipe.load_lora_weights(str(path), adapter_name=f"a{i}")
    totals["load_seconds"] = time.perf_counter() - started
    totals["seconds"] += totals["load_seconds"]


def run_all_loaded(pipe: Any, stream: list[tuple[int, Path]], files: list[Path], totals: dict[str, float]) -> None:
    started = time.perf_counter()
    for seed, path in stream:
        t = time.perf_counter()
        pipe.set_adapters([f"a{files.index(path)}"], adapter_weights=[1.0])
        totals["switch_seconds"] += time.perf_counter() - t
        with torch.inference_mode():
            pipe(**_kwargs(seed))
    totals["seconds"] += time.perf_counter() - started


def run_loramill(generator: Any, stream: list[tuple[int, Path]], batched: bool, totals: dict[str, Any]) -> None:
    """One chunk of the stream through loramill. ``batched``: as the worker runs generation jobs — it holds
    up to ``hold`` deliveries, each in a thread, and ``GenerationBatcher`` groups them by adapter into
    shared denoising runs (fairness bound ``max_overtaken``), with the worker's default settings.
    Otherwise one ``Generator.generate`` after another in arrival order (the adapter cache alone)."""
    from concurrent.futures import ThreadPoolExecutor

    from loramill.engine.generation.generate import GenerateRequest
    from loramill.engine.generation.request import LoraRef
    from loramill.jobs.batching import GenerationBatcher

    cache = generator.adapters
    activate, generate_batch = cache.activate, generator.generate_batch

    def timed_activate(loras: list[Any]) -> list[str]:
        t = time.perf_counter()
        try:
            return activate(loras)
        finally:
            totals["switch_seconds"] += time.perf_counter() - t

    def recorded_batch(plans: list[Any], *args: Any, **kwargs: Any) -> Any:
        totals["order"] += [by_seed[p.seed] for p in plans]
        totals["runs"] += 1
        return generate_batch(plans, *args, **kwargs)

    by_seed = {seed: (seed, path) for seed, path in stream}
    cache.activate, generator.generate_batch = timed_activate, recorded_batch

    def request(seed: int, path: Path) -> GenerateRequest:
        return GenerateRequest(prompt=PROMPT, loras=[LoraRef(path=path, weight=1.0)], steps=STEPS, width=SIDE, height=SIDE,
                               seed=seed)

    misses_before = cache.misses
    started = time.perf_counter()
    if batched:
        settings = worker_settings()
        batcher = GenerationBatcher(max_images=settings.generation_batch,
                                    max_overtaken=settings.generation_max_overtaken)
        with ThreadPoolExecutor(max_workers=2 * settings.generation_batch) as held:
            for future in [held.submit(batcher.generate, generator, request(seed, path)) for seed, path in stream]:
                future.result()
    else:
        for seed, path in stream:
            generator.generate(request(seed, path))
    totals["seconds"] += time.perf_counter() - started
    del cache.activate, generator.generate_batch
    totals["loads"] += cache.misses - misses_before


def worker_settings() -> Any:
    """The worker's generation batching settings as a default install has them."""
    from loramill.jobs.settings import WorkerSettings

    return WorkerSettings()


def _overtaken(arrival: list[tuple[int, Path]], order: list[tuple[int, Path]]) -> list[int]:
    position = {job[0]: i for i, job in enumerate(arrival)}
    return [sum(1 for other in order[:i] if position[other[0]] > position[job[0]]) for i, job in enumerate(order)]


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2 ** 20


def memory_over_switches(generator: Any, files: list[Path], switches: int) -> dict[str, float]:
    """RSS before and after ``switches`` activations cycling through all LoRAs (each one a load or eviction)."""
    from loramill.engine.generation.request import LoraRef

    cache = generator.adapters
    for path in files:  # warm: every state dict read once, allocator pools grown
        cache.activate([LoraRef(path=path, weight=1.0)])
    gc.collect()
    before = rss_mb()
    started = time.perf_counter()
    for i in range(switches):
        cache.activate([LoraRef(path=files[i % len(files)], weight=1.0)])
    elapsed = time.perf_counter() - started
    gc.collect()
    after = rss_mb()
    return {"rss_before_mb": round(before, 1), "rss_after_mb": round(after, 1), "growth_mb": round(after - before, 1),
            "switches": switches, "seconds_per_switch": elapsed / switches}


def run(quick: bool = False) -> list[Result]:
    """The four ways over the same stream, interleaved in chunks so that load from other processes
    (the machine is shared) falls on all of them alike; each way has its own pipeline."""
    from loramill.engine.generation.generate import Generator
    from loramill.jobs.scheduling import switches

    files = make_loras(LORAS)
    stream = job_stream(files, JOBS // 4 if quick else JOBS)
    ways = ("naive", "all_loaded", "loramill_fifo", "loramill")
    settings = worker_settings()  # the worker's defaults: adapters resident, batch size, fairness bound
    generators = {way: Generator(str(tiny_model()), max_resident_loras=settings.lora_cache_size) for way in ways}
    totals: dict[str, dict[str, Any]] = {way: {"seconds": 0.0, "switch_seconds": 0.0, "loads": 0, "order": [],
                                               "runs": 0} for way in ways}
    for generator in generators.values():  # lazy initialisation is not what is measured
        generator.pipe.load_lora_weights(str(files[0]), adapter_name="warm")
        with torch.inference_mode():
            generator.pipe(**_kwargs(0))
        generator.pipe.unload_lora_weights()
    load_all(generators["all_loaded"].pipe, files, totals["all_loaded"])
    # Chunks of the stream in arrival order; a chunk arrives at once (a burst) and the worker takes it in order.
    for start in range(0, len(stream), CHUNK):
        chunk = stream[start:start + CHUNK]
        run_naive(generators["naive"].pipe, chunk, totals["naive"])
        run_all_loaded(generators["all_loaded"].pipe, chunk, files, totals["all_loaded"])
        run_loramill(generators["loramill_fifo"], chunk, False, totals["loramill_fifo"])
        run_loramill(generators["loramill"], chunk, True, totals["loramill"])
    for way in ("loramill_fifo", "loramill"):
        order = totals[way].pop("order")
        totals[way]["adapter_changes"] = switches(order, key=lambda job: job[1])
        totals[way]["max_overtaken"] = max(_overtaken(stream, order))
        totals[way]["images_per_run"] = round(len(order) / max(1, totals[way]["runs"]), 2)
    for way in ("naive", "all_loaded"):
        totals[way].pop("order")
        totals[way].pop("runs")
    memory = memory_over_switches(generators["loramill"], files, SWITCHES // 5 if quick else SWITCHES)
    jobs = len(stream)
    throughput = {way: jobs / totals[way]["seconds"] for way in ways}
    ours = totals["loramill"]
    switch_share = ours["switch_seconds"] / (ours["seconds"] - ours["switch_seconds"])
    details = {"jobs": jobs, "loras": LORAS, "zipf_s": ZIPF_S, "steps": STEPS, "side": SIDE, "chunk": CHUNK,
               "max_resident": settings.lora_cache_size, "generation_batch": settings.generation_batch,
               "held_deliveries": 2 * settings.generation_batch,
               "max_overtaken": settings.generation_max_overtaken, "jobs_per_s": throughput, **totals,
               "switch_share_of_generation": round(switch_share, 4), "memory": memory}
    command = "make bench BENCH=loras"
    ratio = speedup(totals["naive"]["seconds"], ours["seconds"])
    return [
        Result("many LoRAs: throughput vs naive", "jobs/s", throughput["naive"], throughput["loramill"], ratio,
               "≥ 3×", bool(ratio and ratio >= 3), command, details,
               note=f"all-loaded set_adapters: {throughput['all_loaded']:.2f} jobs/s; loramill one job at a time "
                    f"(adapter cache only): {throughput['loramill_fifo']:.2f} jobs/s; images per denoising run: "
                    f"{ours['images_per_run']}"),
        Result("many LoRAs: switching share", "switch s / generation s", None, round(switch_share, 4), None,
               "≤ 10%", switch_share <= 0.10, command, {}),
        Result("many LoRAs: RSS growth over 1,000 switches", "MB", None, memory["growth_mb"], None, "≤ 50 MB",
               memory["growth_mb"] <= 50, command, memory),
    ]
