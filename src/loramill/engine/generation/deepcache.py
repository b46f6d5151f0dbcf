"""DeepCache (Ma et al., 2023): reuse a UNet's deep features across neighbouring denoising steps.

Adjacent steps change the high-level features of a UNet very little; what moves is the detail carried by
the shallowest skip connection. Every ``interval``-th step runs the whole UNet and records the outputs
of the deep blocks (every down block but the first, the mid block, every up block but the last); the
steps between run only the first down block and the last up block and replay the recorded outputs for
the rest. The deep blocks are most of the compute, so a step in between costs a fraction of a full one.

It needs no training and no extra weights, works with any LoRA already active (the deep blocks were
recorded with it), and ``interval=1`` is exactly the uncached UNet. FLUX's transformer has no such
skip structure and is not supported.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class _Replay:
    """Wraps one block: records its output on full steps, returns the recording on cached ones."""

    def __init__(self, block: Any, state: dict[str, Any]):
        self.block = block
        self.forward = block.forward  # the bound method the instance attribute shadows
        self.state = state
        self.output: Any = None
        self.calls = 0  # real forward calls, for tests and the benchmark

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.state["replay"] and self.output is not None:
            return self.output
        self.calls += 1
        self.output = self.forward(*args, **kwargs)
        return self.output


def cacheable_blocks(unet: Any) -> list[Any]:
    """The blocks whose outputs are replayed: all but the outermost down and up blocks, and the mid block."""
    blocks = list(unet.down_blocks)[1:] + list(unet.up_blocks)[:-1]
    if getattr(unet, "mid_block", None) is not None:
        blocks.append(unet.mid_block)
    return blocks


@contextmanager
def deep_cache(unet: Any, interval: int) -> Iterator[list[_Replay]]:
    """Within this block, ``unet`` runs fully every ``interval`` calls and replays its deep features between.

    Yields the block wrappers (their ``calls`` count the real forwards). The counter starts at the first
    call, so each generation should enter its own ``deep_cache``. ``interval`` 1 or less changes nothing.
    """
    if interval <= 1:
        yield []
        return
    if not hasattr(unet, "down_blocks") or not hasattr(unet, "up_blocks"):
        raise ValueError(f"DeepCache needs a UNet (down and up blocks); {type(unet).__name__} has none")
    state: dict[str, Any] = {"replay": False, "step": 0}
    wrappers = [_Replay(block, state) for block in cacheable_blocks(unet)]

    def count_step(module: Any, args: Any) -> None:
        state["replay"] = state["step"] % interval != 0
        state["step"] += 1

    hook = unet.register_forward_pre_hook(count_step)
    for wrapper in wrappers:
        wrapper.block.forward = wrapper
    try:
        yield wrappers
    finally:
        hook.remove()
        for wrapper in wrappers:
            del wrapper.block.forward  # back to the class's forward
            wrapper.output = None
