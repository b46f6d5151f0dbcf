"""LoRAs on a resident pipeline: validated, cached and switched without growing memory.

Users of diffusers and peft report memory that grows as LoRAs are loaded and unloaded, and load and
``set_adapters`` times that grow with the number loaded (SPEC.md section 5, item 7). So: state dicts
are read once and kept in a bounded LRU in RAM; at most ``max_resident`` adapters live in the pipeline,
the least recently used is deleted when another is needed; each job activates only its own adapters.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from loramill.engine.lora.files import read_lora
from loramill.errors import InvalidInput


@dataclass(frozen=True)
class LoraSpec:
    """A LoRA file and the weight to apply it with."""

    path: Path
    weight: float = 1.0


class AdapterCache:
    """Bounded caches of LoRA state dicts (RAM) and of adapters resident in one pipeline."""

    def __init__(self, pipe: Any, family: str, *, max_resident: int = 4, max_in_memory: int = 32) -> None:
        self.pipe = pipe
        self.family = family
        self.max_resident = max_resident
        self.max_in_memory = max_in_memory
        self._states: OrderedDict[str, dict[str, torch.Tensor]] = OrderedDict()
        self._resident: OrderedDict[str, None] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def activate(self, loras: list[LoraSpec]) -> list[str]:
        """Make exactly ``loras`` active with their weights; returns the adapter names used."""
        names = []
        for spec in loras:
            name = self._ensure_resident(spec.path)
            names.append(name)
        if names:
            self.pipe.set_adapters(names, adapter_weights=[s.weight for s in loras])
        elif self._resident:
            self.pipe.disable_lora()
        if names:
            self.pipe.enable_lora()
        return names

    def _ensure_resident(self, path: Path) -> str:
        name = adapter_name(path)
        if name in self._resident:
            self._resident.move_to_end(name)
            self.hits += 1
            return name
        self.misses += 1
        state = self._state(path, name)
        while len(self._resident) >= self.max_resident:
            evicted, _ = self._resident.popitem(last=False)
            self.pipe.delete_adapters(evicted)
        try:
            # diffusers consumes the dict it is given: pass a shallow copy so the cache stays whole.
            with _quiet_transformers():
                self.pipe.load_lora_weights(dict(state), adapter_name=name, low_cpu_mem_usage=True)
        except (ValueError, RuntimeError, KeyError, IndexError) as exc:
            raise InvalidInput(f"LoRA {path.name} does not fit this {self.family} model ({_short(exc)}); it was "
                               "probably trained for another architecture", code="lora_incompatible",
                               field="lora") from exc
        if not _attached(self.pipe, name):
            self._drop_partial(name)
            raise InvalidInput(f"LoRA {path.name} matched no layer of this {self.family} model; it belongs to "
                               "another architecture", code="lora_incompatible", field="lora")
        self._resident[name] = None
        return name

    def _state(self, path: Path, name: str) -> dict[str, torch.Tensor]:
        if name in self._states:
            self._states.move_to_end(name)
            return self._states[name]
        lora = read_lora(path)
        family = lora.family
        if family is not None and family != self.family:
            raise InvalidInput(f"LoRA {path.name} was trained for {family}; this model is {self.family}. "
                               f"Use a {family} base model or a LoRA trained for {self.family}",
                               code="lora_incompatible", field="lora")
        self._states[name] = lora.tensors
        while len(self._states) > self.max_in_memory:
            self._states.popitem(last=False)
        return lora.tensors

    def _drop_partial(self, name: str) -> None:
        try:
            self.pipe.delete_adapters(name)
        except (ValueError, KeyError):
            pass


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """transformers 5 prints a "MISSING" load report for text-encoder LoRA keys that did load (checked:
    the weights match the file); hide that misleading table during our loads only."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def adapter_name(path: Path) -> str:
    """A stable adapter name per file content location (peft names may not contain dots)."""
    stat = path.stat()
    digest = hashlib.sha1(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    return f"lora_{digest}"


def _attached(pipe: Any, name: str) -> bool:
    adapters = pipe.get_list_adapters()
    return any(name in names for names in adapters.values())


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]
