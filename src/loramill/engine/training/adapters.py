"""Attaching trainable LoRA layers to a pipeline's models with peft, reading them out, and removing them.

Removal matters: the worker keeps one base pipeline resident across jobs, so after a run every model
must be exactly the base model again — no wrapper layers, no stale peft config.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

ADAPTER = "loramill_train"


def add_lora(model: torch.nn.Module, rank: int, alpha: float, target_modules: list[str]) -> list[torch.nn.Parameter]:
    """Inject a fresh LoRA into ``model`` and return its trainable parameters (only those)."""
    from peft import LoraConfig, inject_adapter_in_model

    # peft annotates lora_alpha as int but uses it as a float scale (alpha / r); kohya alphas may be fractional.
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=target_modules,  # type: ignore[arg-type]
                        init_lora_weights="gaussian", lora_dropout=0.0)
    inject_adapter_in_model(config, model, adapter_name=ADAPTER)
    params = [p for n, p in model.named_parameters() if "lora_" in n]
    if not params:
        from loramill.errors import InvalidInput

        raise InvalidInput(f"target_modules: {','.join(target_modules)} matched no layer of the model; "
                           "use module names such as to_q,to_k,to_v,to_out.0", code="invalid_option",
                           field="target_modules")
    for p in params:
        p.requires_grad_(True)
        p.data = p.data.float()  # LoRA weights train in fp32 even on a half-precision base
    return params


def lora_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The LoRA weights of ``model`` keyed by module path (``….to_q.lora_A.weight``), adapter name removed."""
    from peft.utils import get_peft_model_state_dict

    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(model, adapter_name=ADAPTER).items()}


def load_lora_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Put saved LoRA weights back into ``model``'s injected adapter (for resume)."""
    from peft.utils import set_peft_model_state_dict

    result = set_peft_model_state_dict(model, state, adapter_name=ADAPTER)
    missing = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k]
    if missing:
        from loramill.errors import InvalidInput

        raise InvalidInput(f"checkpoint weights do not fit the model ({len(missing)} unknown keys, e.g. {missing[0]})",
                           code="checkpoint_mismatch", field="resume")


def remove_lora(model: Any) -> None:
    """Restore ``model`` to its base layers, dropping every injected adapter."""
    from diffusers.utils import recurse_remove_peft_layers

    recurse_remove_peft_layers(model)
    for attr in ("peft_config", "_hf_peft_config_loaded"):
        if hasattr(model, attr):
            try:
                delattr(model, attr)
            except AttributeError:
                setattr(model, attr, None)
    model.requires_grad_(False)


TEACHER = "loramill_teacher"


def named_lora_params(model: torch.nn.Module, adapter: str = ADAPTER) -> dict[str, torch.nn.Parameter]:
    """``adapter``'s parameters by name (LoRA+ tells A from B by name; EMA keeps a shadow per name)."""
    return {n: p for n, p in model.named_parameters() if f".{adapter}." in n or n.endswith(f".{adapter}")}


def add_frozen_lora(model: torch.nn.Module, name: str, rank: int, alpha: float, target_modules: list[str],
                    state: dict[str, torch.Tensor]) -> None:
    """A second, frozen adapter ``name`` on the same layers holding ``state`` (the teacher: base + old LoRA).

    The trained adapter stays the active one; ``active_adapter`` switches to the teacher for its prediction.
    """
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils import set_peft_model_state_dict

    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=target_modules,  # type: ignore[arg-type]
                        init_lora_weights="gaussian", lora_dropout=0.0)
    with warnings.catch_warnings():
        # peft warns that a second adapter is being added: that is the point here.
        warnings.filterwarnings("ignore", message="Already found a `peft_config`")
        inject_adapter_in_model(config, model, adapter_name=name)
    set_peft_model_state_dict(model, state, adapter_name=name)
    for n, p in model.named_parameters():
        if f".{name}." in n:
            p.data = p.data.float()
            p.requires_grad_(False)
    _set_active(model, ADAPTER)


def _tuner_layers(model: torch.nn.Module) -> list[Any]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in model.modules() if isinstance(m, BaseTunerLayer)]


def _set_active(model: torch.nn.Module, name: str | None) -> None:
    """Make ``name`` the only active adapter (``None``: none, the base model); trainability is kept as it was."""
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    for layer in _tuner_layers(model):
        if name is None:
            layer.enable_adapters(False)
        else:
            layer.enable_adapters(True)
            layer.set_adapter(name)
    # peft's set_adapter makes the active adapter trainable; only the optimizer's choice counts here.
    for n, p in model.named_parameters():
        p.requires_grad_(grads[n])


class active_adapter:
    """Within the block, ``models`` run with only ``name`` active (``None``: the bare base model)."""

    def __init__(self, models: list[torch.nn.Module], name: str | None) -> None:
        self.models, self.name = models, name

    def __enter__(self) -> None:
        for model in self.models:
            _set_active(model, self.name)

    def __exit__(self, *exc: object) -> None:
        for model in self.models:
            _set_active(model, ADAPTER)
