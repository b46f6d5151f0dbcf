"""Base models the worker keeps loaded between jobs, and how a job's ``baseModel`` names one.

Loading a base model takes seconds (tiny) to minutes (FLUX.1), so it stays resident: generation jobs
reuse the pipeline and its LoRA cache, training jobs pass it to the engine as ``pipe=`` (the engine
gives it back as the plain base model). Only ``max_resident`` models stay loaded; the least recently
used one is dropped when another is needed, because a GPU holds one or two at most.

A worker starts loading its default model in a background thread as it starts (``preload_default``),
so the seconds of importing torch and diffusers and loading the weights pass while it opens the job
store and connects to the broker. Loads happen one at a time under a lock: a job that asks for a model
being loaded waits for that load instead of starting a second one.

A job may only name a model configured in ``LORAMILL_MODELS``: a path in a message would let any
client make the worker read any file.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from loramill import metrics
from loramill.errors import InvalidInput, LoramillError

if TYPE_CHECKING:
    from loramill.engine.generation.generate import Generator
    from loramill.engine.generation.serving import ServingSettings
    from loramill.jobs.settings import WorkerSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BaseModel:
    """A configured base model: the name jobs use and where it is on disk."""

    name: str
    path: str


def resolve_base_model(requested: str | None, settings: WorkerSettings) -> BaseModel:
    """The model a job's ``baseModel`` (or the default, ``LORAMILL_BASE_MODEL``) names.

    Raises ``InvalidInput`` (field ``baseModel``) listing the configured names when it names none of them.
    """
    models = settings.model_map
    name = requested or settings.base_model
    if name is None and len(models) == 1:
        name = next(iter(models))
    configured = ", ".join(sorted(models)) or "none (set LORAMILL_MODELS, e.g. sd15=/models/sd15)"
    if name is None:
        raise InvalidInput(f"baseModel: the job names no base model and LORAMILL_BASE_MODEL is not set; name one "
                           f"of: {configured}", code="unknown_base_model", field="baseModel")
    if name in models:
        return BaseModel(name, models[name])
    if requested is None and settings.base_model == name:
        # The operator's own default may be a path; a job's field never may.
        return BaseModel(name, name)
    raise InvalidInput(f"baseModel: {name!r} is not a model this worker has; use one of: {configured}",
                       code="unknown_base_model", field="baseModel")


class ResidentModels:
    """Loaded base models by path, least recently used dropped first."""

    def __init__(self, *, max_resident: int = 1, lora_cache_size: int = 4, serving: ServingSettings | None = None
                 ) -> None:
        self.max_resident = max_resident
        self.lora_cache_size = lora_cache_size
        self.serving = serving  # how each resident generator is prepared (precision, layout, compile)
        self._loaded: OrderedDict[str, Generator] = OrderedDict()
        # Held for a whole load: a second caller (the first job during the preload, or several
        # generation jobs handled side by side) waits and then finds the model resident.
        self._lock = threading.RLock()

    def generator(self, model: BaseModel) -> Generator:
        """The resident generator of ``model``, loading it (and dropping the oldest) if needed."""
        with self._lock:
            return self._generator(model)

    def is_loaded(self, model: BaseModel) -> bool:
        """Whether ``model`` is resident now (a load in progress does not count)."""
        return model.path in self._loaded

    def preload(self, model: BaseModel) -> threading.Thread:
        """Start loading ``model`` in a daemon thread and return it.

        A failure is logged, never raised: the first job that needs the model loads it again itself
        and fails with the error it always would (a model mounted late may even load by then).
        """

        def load() -> None:
            log.info("preloading base model %s", model.name, extra={"model": model.name})
            try:
                self.generator(model)
            except Exception as exc:  # noqa: BLE001 - the worker must go on taking jobs
                reason = exc.message if isinstance(exc, LoramillError) else f"{type(exc).__name__}: {exc}"
                log.warning("preloading base model %s failed (%s); the first job that needs it will try again",
                            model.name, reason, exc_info=not isinstance(exc, LoramillError),
                            extra={"model": model.name})

        thread = threading.Thread(target=load, name="preload-model", daemon=True)
        thread.start()
        return thread

    def _generator(self, model: BaseModel) -> Generator:
        if model.path in self._loaded:
            self._loaded.move_to_end(model.path)
            return self._loaded[model.path]
        while len(self._loaded) >= self.max_resident:
            path, _ = self._loaded.popitem(last=False)
            log.info("dropping resident model %s", path)
            gc.collect()
            _empty_cuda_cache()
        started = time.monotonic()
        with gc_paused():
            from loramill.engine.generation.generate import Generator

            generator = Generator(model.path, max_resident_loras=self.lora_cache_size, serving=self.serving)
        if generator.family_name is None:
            raise InvalidInput(f"baseModel: {model.name!r} is not an SD 1.5, SDXL, FLUX.1 or Würstchen model",
                               code="unsupported_model", field="baseModel")
        elapsed = time.monotonic() - started
        metrics.STAGE_SECONDS.labels(kind="any", stage="load_model").observe(elapsed)
        log.info("loaded base model %s (%s) in %.1fs", model.name, generator.family_name, elapsed)
        self._loaded[model.path] = generator
        return generator

    def drop_all(self) -> None:
        """Forget every loaded model (after an unexpected error a pipeline may be in any state)."""
        with self._lock:
            self._loaded.clear()
        gc.collect()
        _empty_cuda_cache()

    def pipeline_for_training(self, model: BaseModel) -> tuple[Any, str]:
        """The resident pipeline of ``model`` with no generation LoRAs attached, and its family name.

        Training injects its own adapter and, when done, strips every adapter layer from the models;
        generation LoRAs still loaded would be torn out under the generator's cache, so the cache
        unloads them first (keeping their state dicts in RAM).
        """
        generator = self.generator(model)
        family = generator.family_name or ""
        if not generator.trains_in_place:
            # Training gets its own full-precision load (freed when the job ends); the resident generator
            # stays as it is for the generation jobs around it.
            from loramill.engine.families import get_family

            log.info("resident %s runs in %s%s; training loads it again in fp32", model.name, generator.dtype,
                     " through OpenVINO" if generator.openvino else "")
            with gc_paused():
                return get_family(family).load_pipeline(model.path), family
        if generator.adapters is not None:
            generator.adapters.clear()
        return generator.pipe, family


def preload_default(models: ResidentModels, settings: WorkerSettings) -> threading.Thread | None:
    """Start loading the model a job naming none would get (``LORAMILL_BASE_MODEL``, or the only one in
    ``LORAMILL_MODELS``) unless ``LORAMILL_PRELOAD_MODEL`` is off; the loading thread, or ``None``."""
    if not settings.preload_model:
        return None
    try:
        model = resolve_base_model(None, settings)
    except InvalidInput:
        return None  # no default: every job names its model, and there is no telling which comes first
    return models.preload(model)


@contextmanager
def gc_paused() -> Iterator[None]:
    """The cyclic garbage collector off while a model loads (and its libraries are imported).

    That creates hundreds of thousands of long-lived objects, and every full collection meanwhile
    rescanned all of them: 0.4–1.3 s of a 5 s cold start on the tiny model. Reference counting still
    frees whatever is not in a cycle; the collector resumes when the last load in progress ends.
    """
    with _GcPause.lock:
        if _GcPause.loads == 0:
            _GcPause.resume = gc.isenabled()
            gc.disable()
        _GcPause.loads += 1
    try:
        yield
    finally:
        with _GcPause.lock:
            _GcPause.loads -= 1
            if _GcPause.loads == 0 and _GcPause.resume:
                gc.enable()


class _GcPause:
    """Loads in progress in this process (``loramill serve`` runs several workers, each with its own
    models), and whether the collector was on before the first of them began."""

    lock = threading.Lock()
    loads = 0
    resume = False


def _empty_cuda_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
