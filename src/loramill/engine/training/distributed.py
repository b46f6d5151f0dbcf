"""One run across several processes (one per GPU, or CPU processes over gloo): data parallel, rank 0 writes.

Every process holds the same LoRA, optimizer and RNG state, and draws the same full batch of noise,
timesteps and captions; each predicts only its share of the batch, and the LoRA gradients are
averaged across processes before every optimizer step (one all-reduce of a few MB: the LoRA is all
that trains). So N processes with a global batch of B compute exactly what one process computes with
a batch of B, checkpoints are the same whatever the process count (a run resumes on any count), and
only rank 0 writes checkpoints, metrics, validation images and the LoRA, and reports progress.

The process group comes from accelerate (gloo on CPU, NCCL on CUDA) as torchrun, ``accelerate launch``
or ``loramill train --processes N`` start it.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass, field
from typing import Any

import torch

from loramill.errors import InvalidInput


@dataclass
class Ranks:
    """This process's place in the run: ``rank`` of ``world`` processes (one process: rank 0 of 1)."""

    rank: int = 0
    world: int = 1
    stop_signal: list[int] = field(default_factory=list)  # signals received (SIGTERM reaches every process)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def share(self, batch: int) -> slice:
        """This process's rows of a batch of ``batch`` (equal shares, checked when the run starts)."""
        size = batch // self.world
        return slice(self.rank * size, (self.rank + 1) * size)

    def average_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """Average the LoRA gradients over every process: one flat all-reduce per optimizer step."""
        if self.world == 1:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1).float() for g in grads])
        torch.distributed.all_reduce(flat)
        flat /= self.world
        offset = 0
        for p, g in zip(params, grads):
            p.grad = flat[offset:offset + g.numel()].view_as(g).to(g.dtype)
            offset += g.numel()

    def mean(self, value: float) -> float:
        if self.world == 1:
            return value
        tensor = torch.tensor([value], dtype=torch.float64)
        torch.distributed.all_reduce(tensor)
        return float(tensor.item()) / self.world

    def any(self, flag: bool) -> bool:
        """True on every process if it is true on any (a stop decided on one is a stop for all)."""
        if self.world == 1:
            return flag
        tensor = torch.tensor([1 if flag else 0], dtype=torch.int64)
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
        return bool(tensor.item())

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()


def current_ranks() -> Ranks:
    """This process's ranks: from the environment torchrun / accelerate set, else a single process."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Ranks()
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    ranks = Ranks(rank=state.process_index, world=state.num_processes)
    # torchrun forwards SIGTERM to every worker; each finishes its step, then all stop together.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: ranks.stop_signal.append(signum))
    return ranks


def check_shares(config: Any, ranks: Ranks) -> None:
    """Refuse, before any work, what several processes cannot run the same as one."""
    from loramill.engine.options import option_error

    if ranks.world == 1:
        return
    if config.batch_size % ranks.world:
        raise option_error("batch_size", f"{config.batch_size} does not split over {ranks.world} processes; use a "
                           f"multiple of {ranks.world} (it is the global batch: each process takes an equal share)")
    # These write files or evaluate outside the shared batch; across processes they are not implemented yet.
    # (Teacher preservation takes each process's share like the main loss; replay batches are drawn whole on
    # every process, so the averaged gradient is one process's.)
    for name, used in (("prior_weight", config.prior_weight), ("eval_every", config.eval_every)):
        if used:
            raise option_error(name, "is not supported with several training processes yet; train it on one "
                               "process (--processes 1)")


def take_share(share: slice, noised: Any, cond: dict[str, torch.Tensor], meta: list[Any],
               mask: torch.Tensor | None) -> tuple[Any, dict[str, torch.Tensor], list[Any], torch.Tensor | None]:
    """This process's rows of a batch's draw, conditioning, metadata and loss mask."""
    from loramill.engine.families.base import Noised

    mine = Noised(**{k: v[share] if isinstance(v, torch.Tensor) else v for k, v in vars(noised).items()})
    return mine, {k: v[share] for k, v in cond.items()}, meta[share], None if mask is None else mask[share]


def process_count(value: str | int) -> int:
    """``--processes`` / ``LORAMILL_TRAIN_PROCESSES``: a count, or ``auto`` (one per visible GPU, else 1)."""
    if value == "auto":
        return max(1, torch.cuda.device_count())
    try:
        count = int(value)
    except (TypeError, ValueError):
        count = 0
    if count < 1:
        raise InvalidInput(f"--processes: give a whole number ≥ 1 or auto, got {value!r}", code="invalid_option",
                           field="processes")
    return count
