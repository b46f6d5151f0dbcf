"""Activation memory of one training step, counted by running the real denoiser on the meta device.

A forward pass on meta tensors computes every shape and allocates nothing, and autograd's
saved-tensor hooks see exactly what the backward pass will keep: that count, not a rule of thumb,
is the activation memory. Two things are made to match the accelerator:
- attention is counted as the fused kernels run it (query, key, value, output and the log-sum-exp
  kept; never the tokens × tokens matrix that the meta device's reference attention would keep);
- with gradient checkpointing, each checkpointed block keeps only its input, and backward holds one
  block's recomputed activations at a time (the largest).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from loramill.engine.planning.architectures import Architecture

# The blocks diffusers wraps in torch.utils.checkpoint when gradient checkpointing is on.
CHECKPOINTED_BLOCKS = ("ResnetBlock2D", "Transformer2DModel", "FluxTransformerBlock", "FluxSingleTransformerBlock")


@dataclass(frozen=True)
class ActivationCount:
    """Bytes the backward pass needs, without and with gradient checkpointing."""

    saved: int  # everything kept for backward, no checkpointing
    checkpointed: int  # block inputs + what lives outside blocks + the largest block's recompute


class _FusedAttention(torch.autograd.Function):
    """Scaled dot-product attention saving what flash / memory-efficient kernels save."""

    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        out = torch.empty(*q.shape[:-1], v.shape[-1], dtype=q.dtype, device=q.device)
        lse = torch.empty(q.shape[:-1], dtype=torch.float32, device=q.device)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, ...]:  # never run: the plan has no backward
        q, k, v, _, _ = ctx.saved_tensors
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


@contextlib.contextmanager
def _fused_attention() -> Iterator[None]:
    original = torch.nn.functional.scaled_dot_product_attention

    def attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *args: Any,
                  **kwargs: Any) -> torch.Tensor:
        return _FusedAttention.apply(query, key, value)

    torch.nn.functional.scaled_dot_product_attention = attention
    try:
        yield
    finally:
        torch.nn.functional.scaled_dot_product_attention = original


def count_activations(denoiser: torch.nn.Module, arch: Architecture, family: str, resolution: int, batch: int,
                      dtype: torch.dtype) -> ActivationCount:
    """Count the saved-for-backward bytes of one step of ``denoiser`` (built on meta, LoRA attached)."""
    # 1. Weights are not activations: the frozen base and the LoRA are counted apart.
    weights = {p.untyped_storage()._cdata for p in denoiser.parameters()}
    seen: dict[int, int] = {}
    stack: list[dict[str, int]] = []
    blocks: list[dict[str, int]] = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        key = tensor.untyped_storage()._cdata
        if key not in weights and key not in seen:
            seen[key] = tensor.untyped_storage().nbytes()
            if stack:
                stack[-1]["saved"] += seen[key]
        return tensor

    # 2. Attribute what each checkpointable block saves, and the size of its input.
    def enter(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        inputs = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        stack.append({"saved": 0, "input": sum(t.numel() * t.element_size() for t in inputs)})

    def leave(module: torch.nn.Module, args: Any, kwargs: Any, output: Any) -> None:
        blocks.append(stack.pop())

    hooks = []
    for module in denoiser.modules():
        if type(module).__name__ in CHECKPOINTED_BLOCKS:
            hooks.append(module.register_forward_pre_hook(enter, with_kwargs=True))
            hooks.append(module.register_forward_hook(leave, with_kwargs=True))
    try:
        with _fused_attention(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.enable_grad():
            denoiser(**_inputs(arch, family, resolution, batch, dtype))
    finally:
        for hook in hooks:
            hook.remove()

    # 3. Checkpointing keeps each block's input instead of its insides, and recomputes one block at a time.
    saved = sum(seen.values())
    inside = sum(b["saved"] for b in blocks)
    checkpointed = saved - inside + sum(b["input"] for b in blocks) + max((b["saved"] for b in blocks), default=0)
    return ActivationCount(saved=saved, checkpointed=min(saved, checkpointed))


def _inputs(arch: Architecture, family: str, resolution: int, batch: int, dtype: torch.dtype) -> dict[str, Any]:
    """The denoiser's inputs for one training batch at ``resolution``, as meta tensors."""

    def empty(*shape: int) -> torch.Tensor:
        return torch.empty(*shape, device="meta", dtype=dtype)

    side = resolution // arch.vae_scale
    text_width = arch.denoiser[1].get("cross_attention_dim") or arch.denoiser[1]["joint_attention_dim"]
    text = empty(batch, arch.text_tokens, text_width)
    if family == "flux":
        tokens = (side // 2) ** 2  # 2×2 latent patches, packed into 64 channels
        return dict(hidden_states=empty(batch, tokens, arch.latent_channels * 4), encoder_hidden_states=text,
                    pooled_projections=empty(batch, 768), timestep=empty(batch), guidance=empty(batch),
                    img_ids=torch.empty(tokens, 3, device="meta"),
                    txt_ids=torch.empty(arch.text_tokens, 3, device="meta"), return_dict=False)
    inputs: dict[str, Any] = dict(sample=empty(batch, arch.latent_channels, side, side),
                                  timestep=torch.empty(batch, device="meta"), encoder_hidden_states=text,
                                  return_dict=False)
    if family == "sdxl":
        inputs["added_cond_kwargs"] = {"text_embeds": empty(batch, 1280), "time_ids": empty(batch, 6)}
    return inputs
