"""OpenVINO for the UNet of a resident SD 1.5 generator on CPU: the measured winner of the compiled graphs.

At real size one SD 1.5 UNet call with guidance took 4.66 s through OpenVINO in bf16, against 6.02 s for
eager torch in bf16 and 9.50 s for ``torch.compile`` in fp32 (docs/performance.md, section 7). The converted
graph holds the UNet's weights, so it serves generations *without* LoRAs and without DeepCache (both need
the torch modules); the generator refuses those with a clear error while OpenVINO is on. The UNet is
converted once, on its first call, with dynamic batch and size, and runs at the generator's precision;
then the torch UNet's weights are released (3.4 GB in fp32 at real size), since the graph holds its own.
"""

from __future__ import annotations

from typing import Any

import torch

from loramill.errors import DependencyMissing, InvalidInput

FAMILIES = ("sd15",)  # SDXL's UNet takes extra conditioning inputs the converted graph does not have yet


class _Positional(torch.nn.Module):
    """The UNet with positional inputs and a plain tensor out: what OpenVINO's PyTorch frontend traces."""

    def __init__(self, unet: torch.nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        # The class's own forward: the instance's is this module's stand-in.
        return type(self.unet).forward(self.unet, sample, timestep, text, return_dict=False)[0]


class OpenVinoUNet:
    """Stands in for ``unet.forward``: converts the UNet on the first call, then runs the compiled graph."""

    def __init__(self, unet: torch.nn.Module, dtype: torch.dtype) -> None:
        try:
            import openvino
        except ImportError as exc:
            raise DependencyMissing("OpenVINO serving needs openvino: pip install 'loramill[openvino]'",
                                    field="openvino") from exc
        self.openvino = openvino
        self.unet = unet
        # Set explicitly: on CPUs with bf16 OpenVINO would otherwise run an f32 model in bf16 on its own.
        self.hint = "bf16" if dtype == torch.bfloat16 else "f32"
        self.compiled: Any = None

    def __call__(self, sample: torch.Tensor, timestep: Any, encoder_hidden_states: torch.Tensor, *args: Any,
                 return_dict: bool = True, **kwargs: Any) -> Any:
        if args or any(value is not None for value in kwargs.values()):
            raise InvalidInput("openvino: this UNet call needs inputs the converted graph does not take "
                               f"({', '.join(k for k, v in kwargs.items() if v is not None) or 'extra'}); "
                               "turn OpenVINO off for it", field="openvino")
        steps = torch.as_tensor(timestep, dtype=torch.float32).reshape(-1).expand(sample.shape[0])
        inputs = [sample.float(), steps.contiguous(), encoder_hidden_states.float()]
        if self.compiled is None:
            with torch.no_grad():
                model = self.openvino.convert_model(_Positional(self.unet.float()).eval(),
                                                    example_input=tuple(inputs))
            self.compiled = self.openvino.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": self.hint})
            del model
            release_weights(self.unet)
        out = torch.from_numpy(self.compiled([t.numpy() for t in inputs])[0]).to(sample.dtype)
        if not return_dict:
            return (out,)
        from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

        return UNet2DConditionOutput(sample=out)


def release_weights(module: torch.nn.Module) -> None:
    """Empty every parameter and buffer of ``module`` in place. The module stays, so the pipeline can still
    read its config, dtype and device; nothing may run it afterwards (the generator refuses LoRAs and
    DeepCache while OpenVINO is on, and trains on its own load of the model)."""
    for tensor in (*module.parameters(), *module.buffers()):
        tensor.data = torch.empty(0, dtype=tensor.dtype, device=tensor.device)


def use_openvino(pipe: Any, family: str | None, dtype: torch.dtype) -> None:
    """Route ``pipe``'s UNet through OpenVINO (``family`` must be one it serves); the rest stays torch."""
    if family not in FAMILIES or getattr(pipe, "unet", None) is None:
        raise InvalidInput(f"openvino: serves SD 1.5 models; this one is {family or 'not a known family'}: turn "
                           "LORAMILL_GENERATION_OPENVINO off for it", field="openvino")
    pipe.unet.forward = OpenVinoUNet(pipe.unet, dtype)
