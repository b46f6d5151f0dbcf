"""A quantised frozen base (QLoRA): the denoiser's Linear weights stored in int8, fp8 or NF4, the LoRA in fp32.

The frozen base is most of a run's accelerator memory (FLUX's transformer is 23.8 GB in bf16), and it
never changes, so storing it in fewer bits costs only the rounding of its weights; the LoRA layers
that peft wraps around the quantised Linears train in full precision and are saved with the same keys
as on an unquantised base, so the exported file loads on the original model.

Backends, chosen by what runs where:
- ``int8``: torchao's int8 weight-only tensors (per-channel scales). Runs on CPU and CUDA; peft wraps
  them with its torchao LoRA layer.
- ``fp8``: torchao's float8 weight-only tensors (e4m3, per-channel). CUDA only (Ada/Hopper, compute 8.9+).
- ``nf4``: bitsandbytes' 4-bit NormalFloat Linears (the QLoRA paper's format). CUDA only.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch

from loramill.errors import DependencyMissing, UnsupportedHardware

# Bits per stored Linear weight, for the memory plan (scales and absmax add a little: see planning).
WEIGHT_BITS = {"int8": 8, "fp8": 8, "nf4": 4}


def check_quantize(mode: str, device: torch.device | None = None) -> None:
    """Fail before any work if ``mode`` needs hardware or a package this machine lacks."""
    if mode == "none":
        return
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if mode in ("fp8", "nf4") and device.type != "cuda":
        hint = "use --quantize-base int8 (runs on CPU) or none"
        raise UnsupportedHardware(f"--quantize-base {mode} needs a CUDA GPU ({_BACKEND[mode]}); this machine has "
                                  f"none: {hint}", field="quantize_base")
    if mode == "fp8" and torch.cuda.get_device_capability(device) < (8, 9):
        raise UnsupportedHardware("--quantize-base fp8 needs an Ada or Hopper GPU (compute capability 8.9+); "
                                  "use --quantize-base int8 or nf4 on this GPU", field="quantize_base")
    package = "bitsandbytes" if mode == "nf4" else "torchao"
    try:
        _import_quiet(package)
    except ImportError as exc:
        extra = "cuda" if mode == "nf4" else "quantize"
        raise DependencyMissing(f"--quantize-base {mode} needs {package}: pip install 'loramill[{extra}]'",
                                field="quantize_base") from exc


def quantize_linears(model: torch.nn.Module, mode: str, device: torch.device) -> int:
    """Quantise every ``nn.Linear`` of ``model`` in place and move it to ``device``; returns how many."""
    if mode == "none":
        model.to(device)
        return 0
    count = sum(1 for m in model.modules() if type(m) is torch.nn.Linear)
    # peft warns that its torchao LoRA layer cannot merge without the requantisation recipe; loramill never
    # merges into the quantised base (the LoRA is exported on its own), so the warning would only mislead.
    warnings.filterwarnings("ignore", message="TorchaoLoraLinear was instantiated", category=UserWarning)
    _QUANTIZERS[mode](model, device)
    return count


@contextlib.contextmanager
def quantized_denoiser(pipe: Any, attr: str, mode: str, device: torch.device, *, resident: bool) -> Iterator[Any]:
    """Run with ``pipe.<attr>`` quantised on ``device``; a resident pipeline gets its unquantised denoiser back.

    A resident pipeline (the worker keeps one for generation) must stay the exact base model, and
    rounding is not reversible: its denoiser is parked in host memory and a quantised copy trains in
    its place. A pipeline loaded for this run alone is quantised in place (no second copy).
    """
    original = getattr(pipe, attr)
    if mode == "none":
        yield original.to(device)
        return
    if resident:
        original.to("cpu")
        quantized = copy.deepcopy(original)
    else:
        quantized = original.to("cpu")
    quantize_linears(quantized, mode, device)
    setattr(pipe, attr, quantized)
    try:
        yield quantized
    finally:
        if resident:
            setattr(pipe, attr, original)
            del quantized
            original.to(device)
            if device.type == "cuda":
                torch.cuda.empty_cache()


def linear_weight_bytes(model: torch.nn.Module) -> int:
    """Bytes held by the Linear layers' weights, whatever their storage (for reports and tests)."""
    total = 0
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if weight is None or not isinstance(module, torch.nn.Linear):
            continue
        total += _tensor_bytes(weight)
    return total


def _tensor_bytes(tensor: torch.Tensor) -> int:
    # torchao's tensor subclasses hold their data in named inner tensors (qdata, scale, …).
    inner = getattr(tensor, "__tensor_flatten__", None)
    if inner is not None and type(tensor) is not torch.nn.Parameter and type(tensor) is not torch.Tensor:
        names, _ = inner()
        return sum(_tensor_bytes(getattr(tensor, n)) for n in names)
    data = tensor.data if isinstance(tensor, torch.nn.Parameter) else tensor
    if data is not tensor:
        return _tensor_bytes(data)
    quant_state = getattr(tensor, "quant_state", None)  # bitsandbytes Params4bit: packed bytes + absmax
    extra = quant_state.absmax.numel() * quant_state.absmax.element_size() if quant_state is not None else 0
    return tensor.numel() * tensor.element_size() + extra


class _FrozenQuantizedLinear(torch.autograd.Function):
    """``x @ W.T + b`` for a frozen quantised ``W`` that keeps nothing for backward but the module.

    Through torchao's own dispatch, autograd saved the *dequantised* weight of every Linear for the
    backward pass, so a training step held a full-precision copy of the whole frozen base at its peak
    (measured: 48 MB saved per 3 int8 2048² layers, as much as unquantised; at real size on CPU the int8
    run's peak RSS was 1.4 GiB *above* the unquantised one). The weight never trains, so backward needs
    only ``grad @ W``: dequantised again there, one layer at a time (what bitsandbytes' 4-bit matmul does).
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, module: torch.nn.Linear) -> torch.Tensor:
        ctx.module, ctx.dtype = module, x.dtype
        return torch.nn.functional.linear(x, module.weight.dequantize(), module.bias)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        weight = ctx.module.weight.dequantize().to(grad.dtype)
        return (grad @ weight).to(ctx.dtype), None


def _torchao(config_name: str) -> Callable[[torch.nn.Module, torch.device], None]:
    def quantize(model: torch.nn.Module, device: torch.device) -> None:
        quantization = _import_quiet("torchao.quantization")
        # Each Linear moves to the accelerator and is quantised there one at a time (``device=``), so the
        # accelerator never holds the full-precision model (FLUX's transformer is 23.8 GB in bf16: moved
        # whole first, it would not fit the 24 GB card int8 is for); only Linears are touched (convs, norms
        # stay) and follow with the rest.
        quantization.quantize_(model, getattr(quantization, config_name)(),
                               filter_fn=lambda m, _: type(m) is torch.nn.Linear, device=device)
        model.to(device)
        for module in model.modules():
            if type(module) is torch.nn.Linear:
                module.forward = _frozen_forward(module)  # type: ignore[method-assign,assignment]
    return quantize


def _frozen_forward(module: torch.nn.Linear) -> Callable[[torch.Tensor], torch.Tensor]:
    def forward(x: torch.Tensor) -> torch.Tensor:
        return _FrozenQuantizedLinear.apply(x, module)
    return forward


def _bnb_nf4(model: torch.nn.Module, device: torch.device) -> None:
    bnb = _import_quiet("bitsandbytes")
    for name, child in list(model.named_children()):
        if type(child) is torch.nn.Linear:
            layer = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                      compute_dtype=child.weight.dtype, quant_type="nf4")
            layer.weight = bnb.nn.Params4bit(child.weight.data.to("cpu"), requires_grad=False, quant_type="nf4")
            if child.bias is not None:
                layer.bias = torch.nn.Parameter(child.bias.data, requires_grad=False)
            setattr(model, name, layer.to(device))  # bitsandbytes packs the weight as it moves to the GPU
        else:
            _bnb_nf4(child, device)
    model.to(device)


_QUANTIZERS: dict[str, Callable[[torch.nn.Module, torch.device], None]] = {
    "int8": _torchao("Int8WeightOnlyConfig"), "fp8": _torchao("Float8WeightOnlyConfig"), "nf4": _bnb_nf4,
}
_BACKEND = {"int8": "torchao int8", "fp8": "torchao float8 kernels", "nf4": "bitsandbytes 4-bit kernels"}


def _import_quiet(name: str) -> Any:
    """Import a quantisation backend without its start-up noise (missing optional kernels, deprecations)."""
    import importlib

    level = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            return importlib.import_module(name)
    finally:
        logging.disable(level)
