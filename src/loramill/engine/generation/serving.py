"""How a resident generator runs on its hardware: precision, memory layout, compiled graphs and samplers.

Each piece is a plain setting with a measured default (docs/performance.md, "CPU generation"):
``precision`` ``auto`` picks bf16 on CPUs with native bf16 instructions (AVX512-BF16 or AMX) and fp32
elsewhere; ``channels_last`` reorders conv weights for oneDNN; ``compile`` wraps the denoiser in
``torch.compile``; ``sampler`` swaps the pipeline's scheduler for a faster solver at fewer steps. The
functions here are pure decisions plus one ``apply`` that changes a loaded pipeline in place.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loramill.errors import InvalidInput

if TYPE_CHECKING:  # the request spec reads SAMPLERS; services that only check jobs do not load torch
    import torch

PRECISIONS = ("auto", "fp32", "bf16")
# name → (diffusers scheduler class, extra config): the solvers a request may ask for. "default" keeps the
# model's own scheduler. DPM-Solver++ (2M) and UniPC reach in ~20 steps what PNDM/DDIM need ~50 for;
# LCM and TCD are for few-step LoRAs (4–8 steps) and give noise without one.
SAMPLERS: dict[str, tuple[str, dict[str, Any]]] = {
    "default": ("", {}),
    "dpmpp": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "lcm": ("LCMScheduler", {}),
    "tcd": ("TCDScheduler", {}),
}
FEW_STEP_SAMPLERS = ("lcm", "tcd")
# What a resident generator may run when a request leaves the sampler to it ("model": the model's own).
# Euler is the default: on the reference world it keeps full adherence at 12–20 steps where DPM-Solver++ 2M
# and UniPC lose 30–90 points (a second-order multistep solver extrapolates a tiny model's uneven noise
# predictions; docs/performance.md), and it is ComfyUI's default for SD 1.5 too.
SERVING_SAMPLERS = ("euler", "model", "dpmpp", "unipc")
UNET_FAMILIES = ("sd15", "sdxl")  # samplers and DeepCache need a UNet and a DDPM-style noise schedule
_CPU_FLAGS = Path("/proc/cpuinfo")


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX-BF16); emulated bf16 is slower than fp32."""
    if cpuinfo is None:
        try:
            cpuinfo = _CPU_FLAGS.read_text()
        except OSError:
            return False
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[-1].split())
            break
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def resolve_precision(precision: str, device: torch.device, cpuinfo: str | None = None) -> torch.dtype:
    """The dtype a generator runs in: ``auto`` is fp32 on CPUs without native bf16, bf16 with it; CUDA keeps
    fp32 here (GPU users choose fp16/bf16 through the model's own dtype)."""
    import torch

    if precision not in PRECISIONS:
        raise InvalidInput(f"unknown precision {precision!r}; choose one of: {', '.join(PRECISIONS)}",
                           code="invalid_option", field="precision")
    if precision == "fp32":
        return torch.float32
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cpu" and cpu_has_native_bf16(cpuinfo):
        return torch.bfloat16
    return torch.float32


def make_sampler(pipe: Any, name: str) -> Any:
    """A new scheduler of kind ``name`` built from the pipeline's own scheduler config (its betas, offsets)."""
    if name not in SAMPLERS:
        raise InvalidInput(f"unknown sampler {name!r}; choose one of: {', '.join(SAMPLERS)}",
                           code="invalid_option", field="sampler")
    class_name, extra = SAMPLERS[name]
    if not class_name:
        return pipe.scheduler
    if "FlowMatch" in type(pipe.scheduler).__name__:
        raise InvalidInput(f"sampler {name!r} is for UNet (SD 1.5/SDXL) models; FLUX keeps its flow-matching "
                           "scheduler", code="invalid_option", field="sampler")
    import diffusers

    cls = getattr(diffusers, class_name)
    return cls.from_config(pipe.scheduler.config, **extra)


@dataclass(frozen=True)
class ServingSettings:
    """How a resident generator is prepared once, when it loads."""

    precision: str = "fp32"  # the library is exact by default; the worker's LORAMILL_GENERATION_PRECISION is auto
    channels_last: bool = False
    compile: bool = False
    sampler: str = "euler"  # UNet models: the solver a request's sampler "default" runs
    openvino: bool = False  # SD 1.5: the UNet through OpenVINO (no LoRAs, no DeepCache while on)

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise InvalidInput(f"unknown precision {self.precision!r}; choose one of: {', '.join(PRECISIONS)}",
                               code="invalid_option", field="precision")
        if self.sampler not in SERVING_SAMPLERS:
            raise InvalidInput(f"unknown serving sampler {self.sampler!r}; choose one of: "
                               f"{', '.join(SERVING_SAMPLERS)}", code="invalid_option", field="sampler")


def apply(pipe: Any, settings: ServingSettings, device: torch.device, family: str | None = None) -> torch.dtype:
    """Prepare a loaded pipeline in place as ``settings`` say; returns the dtype it now runs in."""
    import torch

    dtype = resolve_precision(settings.precision, device)
    if dtype != torch.float32:
        pipe.to(dtype=dtype)
    denoiser = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    scheduler = getattr(pipe, "scheduler", None)
    if (settings.sampler != "model" and getattr(pipe, "unet", None) is not None and scheduler is not None
            and "FlowMatch" not in type(scheduler).__name__):
        pipe.scheduler = make_sampler(pipe, settings.sampler)  # from the model's own noise schedule
    if settings.channels_last:
        for name in ("unet", "vae"):
            module = getattr(pipe, name, None)
            if module is not None:
                module.to(memory_format=torch.channels_last)
    if settings.openvino:
        from loramill.engine.generation.openvino import use_openvino

        use_openvino(pipe, family, dtype)
    elif settings.compile and denoiser is not None:
        # Compiled once per input shape; a new size or batch recompiles (guarded by dynamo's cache).
        denoiser.forward = torch.compile(denoiser.forward, dynamic=False)
    return dtype
