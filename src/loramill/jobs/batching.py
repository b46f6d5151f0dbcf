"""Concurrent generation jobs on one worker share denoising runs: the same LoRAs and settings, one batch.

A worker may hold several generation deliveries at once (``LORAMILL_GENERATION_BATCH``), each handled
in a thread of its own. Each handler hands its request here and waits. Whichever thread finds the
engine idle runs the next batch: ``AdapterScheduler`` picks the job whose adapter costs no switch
(within its fairness bound) and the waiting jobs that can share its run (``Plan.batch_key``), up to
``max_images`` images. So an idle worker starts a lone job at once (no waiting for a batch to fill),
and jobs that arrive while a batch runs form the next one.

Why batch: on one pipeline a denoising step over 8 images costs far less than 8 steps over one
(measured on the tiny SD 1.5 on CPU: 100 ms per image alone, 39 ms per image in a batch of 8), and a
group of same-LoRA jobs pays the LoRA switch once (docs/performance.md, "Many LoRAs").
"""

from __future__ import annotations

import copy
import logging
import threading
from collections.abc import Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from loramill import metrics
from loramill.engine.progress import Progress, ProgressCallback, StopRequested, no_progress
from loramill.errors import LoramillError, OutOfMemory
from loramill.jobs.scheduling import AdapterScheduler, adapter_key

if TYPE_CHECKING:
    from loramill.engine.generation.generate import GeneratedImage, GenerateRequest, Generator, Plan

log = logging.getLogger(__name__)


@dataclass(eq=False)
class _Waiting:
    """One job's request waiting for (or in) a run, and how that run ended for it."""

    generator: Generator
    plan: Plan
    progress: ProgressCallback
    adapters: Hashable  # its pipeline and LoRA set: what the scheduler groups by
    batch_key: Hashable  # which others it may share a run with
    images: list[GeneratedImage] | None = None
    error: BaseException | None = None
    done: bool = False
    stopped: bool = False  # its own progress callback asked to stop (cancel, shutdown)


class GenerationBatcher:
    """Runs the generation requests of a worker's concurrent jobs, same-adapter ones in one denoising run."""

    def __init__(self, *, max_images: int = 8, max_overtaken: int = 16) -> None:
        if max_images < 1:
            raise ValueError(f"max_images must be ≥ 1, got {max_images}")
        self.max_images = max_images
        self._scheduler: AdapterScheduler[_Waiting] = AdapterScheduler(key=lambda w: w.adapters,
                                                                        max_overtaken=max_overtaken)
        self._changed = threading.Condition()
        self._running = False
        self.runs = 0  # denoising runs, for tests and the benchmark
        self.jobs = 0

    def generate(self, generator: Generator, request: GenerateRequest,
                 progress: ProgressCallback = no_progress) -> list[GeneratedImage]:
        """Render ``request`` on ``generator``, in a batch with other waiting requests where they fit."""
        # 1. Resolve it here, in the caller's thread: a bad request fails alone, before it waits.
        plan = generator.plan(request)
        me = _Waiting(generator, plan, progress, adapters=(id(generator), adapter_key(s.path for s in plan.loras)),
                      batch_key=(id(generator), generator.batch_key(plan)))
        with self._changed:
            self._scheduler.add(me)
        # 2. Wait until a run has rendered it; when the engine is idle, run the next batch ourselves.
        while True:
            with self._changed:
                while not me.done and self._running:
                    self._changed.wait()
                if me.done:
                    break
                batch = self._scheduler.next_batch(self.max_images, same=lambda w: w.batch_key,
                                                   size=lambda w: w.plan.num_images, fits=_fits,
                                                   resident=self._resident())
                self._running = True
            try:
                self._run(batch)
            finally:
                with self._changed:
                    self._running = False
                    for waiting in batch:
                        waiting.done = True
                    self._changed.notify_all()
        # 3. Its images, or how its run ended (a copy per job: each thread raises its own exception).
        if me.error is not None:
            raise _own_copy(me.error) from me.error
        assert me.images is not None
        return me.images

    def _resident(self) -> set[Hashable]:
        """Adapter keys whose LoRAs are all loaded in their pipeline already (a switch without a load)."""
        keys: set[Hashable] = set()
        for waiting in self._scheduler.waiting():
            cache = waiting.generator.adapters
            if cache is not None and all(cache.holds(spec.path) for spec in waiting.plan.loras):
                keys.add(waiting.adapters)
        return keys

    def _run(self, batch: list[_Waiting]) -> None:
        """One denoising run for ``batch``; each job's progress callback may stop only that job."""

        def progress(report: Progress) -> None:
            live = 0
            for waiting in batch:
                if waiting.stopped:
                    continue
                try:
                    waiting.progress(report)
                    live += 1
                except StopRequested as exc:
                    waiting.stopped, waiting.error = True, exc
            if not live:  # nobody wants these images any more: stop the run
                raise StopRequested("every job of this batch was stopped")

        self.runs += 1
        self.jobs += len(batch)
        metrics.GENERATION_BATCH.observe(len(batch))
        try:
            results = batch[0].generator.generate_batch([w.plan for w in batch], progress)
        except StopRequested as exc:
            for waiting in batch:
                waiting.error = waiting.error or exc
            return
        except LoramillError as exc:
            if len(batch) == 1:
                batch[0].error = exc
                return
            # One job's LoRA or prompt may be what failed: each job again alone, so it fails alone.
            log.warning("a batch of %d failed (%s); running its jobs one by one", len(batch), exc.message)
            if isinstance(exc, OutOfMemory):
                # The device cannot hold this many images at once: smaller batches from now on.
                self.max_images = max(1, sum(w.plan.num_images for w in batch) // 2)
                log.warning("generation batches limited to %d image(s) after running out of memory",
                            self.max_images)
            for waiting in batch:
                if not waiting.stopped:
                    self._run([waiting])
            return
        except BaseException as exc:  # noqa: BLE001 - handed to every job of the batch, raised in its thread
            for waiting in batch:
                if not waiting.stopped:
                    waiting.error = exc
            return
        for waiting, images in zip(batch, results, strict=True):
            if not waiting.stopped:
                waiting.images = images


def _fits(batch: list[_Waiting]) -> bool:
    # Their batch keys are equal already (``same``): only whether their LoRAs fit one run is left.
    return batch[0].generator.fit_together([w.plan for w in batch])


def _own_copy(exc: BaseException) -> BaseException:
    """A shallow copy of ``exc`` (its code, field, message), so threads never share one traceback."""
    try:
        return copy.copy(exc)
    except Exception:  # noqa: BLE001 - an exception that cannot be copied is raised as it is
        return exc
