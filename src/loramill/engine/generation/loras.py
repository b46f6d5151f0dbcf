"""LoRAs on a resident pipeline: validated, cached and switched without growing memory.

Users of diffusers and peft report memory that grows as LoRAs are loaded and unloaded, and load and
``set_adapters`` times that grow with the number loaded (diffusers #8532, #9297, #11816; peft #1639). So: state dicts
are read once and kept in a bounded LRU in RAM; at most ``max_resident`` adapters live in the pipeline,
the least recently used is deleted when another is needed; each job activates only its own adapters.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from loramill.engine.generation.mixed import BASE
from loramill.engine.generation.request import LoraRef
from loramill.engine.lora.files import read_lora
from loramill.engine.lora.flux_blocks import from_sd_scripts_flux
from loramill.engine.lora.formats import layout_of
from loramill.errors import InvalidInput

log = logging.getLogger(__name__)

# Key prefixes of text-encoder LoRA weights in the layouts we read (kohya, diffusers, sd-scripts).
TEXT_ENCODER_PREFIXES = ("lora_te", "text_encoder", "te_", "te1", "te2")


class AdapterCache:
    """Bounded caches of LoRA state dicts (RAM) and of adapters resident in one pipeline."""

    def __init__(self, pipe: Any, family: str, *, max_resident: int = 4, max_in_memory: int = 32) -> None:
        self.pipe = pipe
        self.family = family
        self.max_resident = max_resident
        self.max_in_memory = max_in_memory
        self._states: OrderedDict[str, dict[str, torch.Tensor]] = OrderedDict()
        self._resident: OrderedDict[str, str] = OrderedDict()  # LoRA name → adapter (slot) in the pipeline
        self._layouts: dict[str, tuple[Any, ...] | None] = {}  # slot → layout of the LoRA it was loaded with
        self.hotswaps = 0
        self._slots = 0
        self.hits = 0
        self.misses = 0
        self._active: tuple[tuple[str, ...], tuple[float, ...]] | None = None  # what set_adapters last set
        self._denoiser_only: dict[str, bool] = {}  # LoRA name → touches no text encoder (from its header)

    def clear(self) -> None:
        """Take every adapter out of the pipeline (training needs the bare base model); the validated
        state dicts stay cached in RAM, so the next generation does not read the files again."""
        if self._resident or self.pipe.get_list_adapters():
            self.pipe.unload_lora_weights()
        self._resident.clear()
        self._layouts.clear()
        self._active = None

    def denoiser_only(self, path: Path) -> bool:
        """Whether ``path``'s LoRA changes only the denoiser, so it can share a batch with other LoRAs (each
        image's adapter is chosen per sample inside the denoiser; the prompts are encoded without LoRAs).
        Read from the file's header alone; a file that cannot be read says no (loading it reports why)."""
        name = adapter_name(path)
        known = self._denoiser_only.get(name)
        if known is None:
            from safetensors import safe_open

            try:
                with safe_open(str(path), framework="pt") as f:
                    keys = list(f.keys())
            except Exception:  # noqa: BLE001 - not a readable safetensors file: never batched with others
                return False
            known = not any(key.startswith(TEXT_ENCODER_PREFIXES) for key in keys)
            self._denoiser_only[name] = known
        return known

    def activate_mixed(self, loras: list[LoraRef | None]) -> list[str]:
        """Make every LoRA of a mixed batch resident and active with its weight; the adapter name per
        entry (``BASE`` for none), for ``mixed.per_image_loras``. Entries naming the same file must
        agree on its weight, and there may be at most ``max_resident`` distinct files."""
        weights = distinct_weights(spec for spec in loras if spec is not None)
        if weights is None:
            raise ValueError("activate_mixed: a LoRA is asked with two weights in one batch")
        if len(weights) > self.max_resident:
            raise ValueError(f"activate_mixed: {len(weights)} LoRAs in one batch, at most {self.max_resident}")
        # Least recently used first out: the ones made resident for this batch are the most recent.
        names = {path: self._ensure_resident(path) for path in weights}
        wanted = (tuple(names.values()), tuple(weights.values()))
        if wanted != self._active:
            if names:
                self.pipe.set_adapters(list(names.values()), adapter_weights=list(weights.values()))
                self.pipe.enable_lora()
            self._active = wanted
        return [names[spec.path] if spec is not None else BASE for spec in loras]

    def holds(self, path: Path) -> bool:
        """Whether ``path``'s LoRA is loaded in the pipeline (activating it costs no load)."""
        return adapter_name(path) in self._resident

    def activate(self, loras: list[LoraRef]) -> list[str]:
        """Make exactly ``loras`` active with their weights; returns the adapter names used."""
        names = []
        for spec in loras:
            name = self._ensure_resident(spec.path)
            names.append(name)
        # Jobs grouped by adapter (jobs/scheduling.py) ask for the same set many times in a row;
        # set_adapters walks every LoRA layer, so an unchanged set is not set again.
        wanted = (tuple(names), tuple(s.weight for s in loras))
        if wanted == self._active:
            return names
        if names:
            self.pipe.set_adapters(names, adapter_weights=[s.weight for s in loras])
            self.pipe.enable_lora()
        elif self._resident:
            self.pipe.disable_lora()
        self._active = wanted
        return names

    def _ensure_resident(self, path: Path) -> str:
        """The pipeline adapter holding ``path``'s LoRA, loading it (into the least recently used slot) if needed."""
        name = adapter_name(path)
        if name in self._resident:
            self._resident.move_to_end(name)
            self.hits += 1
            return self._resident[name]
        self.misses += 1
        self._active = None  # loading or deleting an adapter changes which ones are active
        state = self._state(path, name)
        if len(self._resident) >= self.max_resident:
            evicted, slot = self._resident.popitem(last=False)
            # Swapping the new weights into the evicted adapter's layers costs ~1/8 of deleting it and
            # injecting new ones (measured: 10 ms vs 93 ms on the tiny SD 1.5), and allocates nothing.
            if self._hotswap(slot, state):
                self._resident[name] = slot
                return slot
            self._delete(slot)
            while len(self._resident) >= self.max_resident:
                _, older = self._resident.popitem(last=False)
                self._delete(older)
        # A fresh adapter name: after hotswaps a LoRA's own name may already be another LoRA's slot.
        self._slots += 1
        slot = f"{name}_{self._slots}"
        try:
            # diffusers consumes the dict it is given, and with low_cpu_mem_usage the adapter's parameters
            # are the given tensors themselves; a later hotswap writes into them in place. Copies keep the
            # cached state dict whole.
            with _quiet_transformers():
                self.pipe.load_lora_weights({k: v.clone() for k, v in state.items()}, adapter_name=slot,
                                            low_cpu_mem_usage=True)
        except (ValueError, RuntimeError, KeyError, IndexError) as exc:
            raise InvalidInput(f"LoRA {path.name} does not fit this {self.family} model ({_short(exc)}); it was "
                               "probably trained for another architecture", code="lora_incompatible",
                               field="loras") from exc
        if not _attached(self.pipe, slot):
            self._drop_partial(slot)
            raise InvalidInput(f"LoRA {path.name} matched no layer of this {self.family} model; it belongs to "
                               "another architecture", code="lora_incompatible", field="loras")
        self._resident[name] = slot
        self._layouts[slot] = _layout(state)
        return slot

    def _hotswap(self, slot: str, state: dict[str, torch.Tensor]) -> bool:
        """Load ``state`` into the existing adapter ``slot`` in place; ``False`` when it cannot be.

        Only between LoRAs of the same layout — the same layers, ranks and alphas, denoiser only (diffusers
        cannot hotswap text-encoder LoRAs) — so the swapped adapter computes exactly what a fresh load would.
        """
        layout = _layout(state)
        if layout is None or self._layouts.get(slot) != layout:
            return False
        try:
            with _quiet_transformers():
                self.pipe.load_lora_weights(dict(state), adapter_name=slot, hotswap=True)
        except (ValueError, RuntimeError, KeyError, IndexError, TypeError) as exc:
            # The slot may be half-swapped: the caller deletes it and loads afresh.
            log.debug("hotswap into %s failed (%s); loading afresh", slot, _short(exc))
            return False
        self.hotswaps += 1
        return True

    def _state(self, path: Path, name: str) -> dict[str, torch.Tensor]:
        if name in self._states:
            self._states.move_to_end(name)
            return self._states[name]
        lora = read_lora(path)
        family = lora.family
        if family is not None and family != self.family:
            raise InvalidInput(f"LoRA {path.name} was trained for {family}; this model is {self.family}. "
                               f"Use a {family} base model or a LoRA trained for {self.family}",
                               code="lora_incompatible", field="loras")
        tensors = lora.tensors
        if layout_of(set(tensors)) == "sd-scripts":
            # diffusers' converter for BFL-named FLUX LoRAs assumes FLUX.1's widths; ours splits at any width.
            tensors = from_sd_scripts_flux(tensors)
        self._states[name] = tensors
        while len(self._states) > self.max_in_memory:
            self._states.popitem(last=False)
        return tensors

    def _delete(self, slot: str) -> None:
        self._layouts.pop(slot, None)
        self.pipe.delete_adapters(slot)

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


def distinct_weights(loras: Iterable[LoraRef]) -> dict[Path, float] | None:
    """Each file's weight, or ``None`` when one file is asked with two weights (one adapter has one scale)."""
    weights: dict[Path, float] = {}
    for spec in loras:
        if weights.setdefault(spec.path, spec.weight) != spec.weight:
            return None
    return weights


def adapter_name(path: Path) -> str:
    """A stable adapter name per file content location (peft names may not contain dots)."""
    stat = path.stat()
    digest = hashlib.sha1(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    return f"lora_{digest}"


def _layout(state: dict[str, torch.Tensor]) -> tuple[Any, ...] | None:
    """What must match for one LoRA to be swapped into another's layers: every key's shape and every alpha.

    ``None`` for LoRAs that touch a text encoder (diffusers hotswaps the denoiser only).
    """
    if any(key.startswith(TEXT_ENCODER_PREFIXES) for key in state):
        return None
    return tuple(sorted((key, tuple(value.shape), float(value) if key.endswith(".alpha") else None)
                        for key, value in state.items()))


def _attached(pipe: Any, name: str) -> bool:
    adapters = pipe.get_list_adapters()
    return any(name in names for names in adapters.values())


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]
