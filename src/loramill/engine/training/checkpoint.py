"""Resumable training state: LoRA weights, optimizer, schedule, step and every RNG that draws.

A resumed run must end with the same LoRA as an uninterrupted one: users of other trainers report runs
resuming at the wrong step or drifting (sd-scripts #954, ai-toolkit #329). So a checkpoint holds the step
counter, the optimizer and scheduler states, the noise generator's state and the global torch RNG;
batch order is recomputed from (seed, epoch). Writes are atomic: a new checkpoint is written to a
temporary folder and renamed into place, so a full disk leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors import SafetensorError

from loramill.errors import InvalidInput, LoramillError

if TYPE_CHECKING:
    # The worker imports this module for the file names alone; importing torch here would add a
    # second or more to its start-up before the model load (which imports torch anyway) could begin.
    import torch

STATE_FILE = "state.pt"
WEIGHTS_FILE = "lora.safetensors"
INFO_FILE = "checkpoint.json"


@dataclass
class TrainingState:
    step: int
    weights: dict[str, torch.Tensor]  # "<component>.<peft key>" -> tensor
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    generator: torch.Tensor
    torch_rng: torch.Tensor
    losses: list[float]
    elapsed: float
    fingerprint: str


def save_checkpoint(root: Path, state: TrainingState, keep: int) -> Path:
    """Write ``root/step-NNNNNN`` atomically and keep only the newest ``keep`` checkpoints."""
    import torch
    from safetensors.torch import save_file

    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{state.step:06d}"
    tmp = root / f".step-{state.step:06d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        save_file({k: v.detach().cpu().contiguous() for k, v in state.weights.items()}, str(tmp / WEIGHTS_FILE))
        torch.save({"optimizer": state.optimizer, "scheduler": state.scheduler, "generator": state.generator,
                    "torch_rng": state.torch_rng, "losses": state.losses, "elapsed": state.elapsed},
                   tmp / STATE_FILE)
        (tmp / INFO_FILE).write_text(json.dumps({"step": state.step, "fingerprint": state.fingerprint}))
        for f in tmp.iterdir():
            with f.open("rb") as fh:
                os.fsync(fh.fileno())
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except (OSError, RuntimeError, SafetensorError) as exc:
        # A full disk surfaces as OSError, safetensors' own SafetensorError, or torch's RuntimeError
        # ("PytorchStreamWriter failed writing file"), depending on which file hit it.
        shutil.rmtree(tmp, ignore_errors=True)
        # No paths in the message: it reaches service clients, to whom the worker's disk means nothing
        # (the CLI prints the run folder already).
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise LoramillError(f"could not save the checkpoint of step {state.step}: {reason}. "
                            "The previous checkpoint is intact; free disk space and resume",
                            code="checkpoint_failed") from exc
    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first (half-written temporary folders are ignored)."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-") and (p / INFO_FILE).exists())


def resolve_checkpoint(resume: str, root: Path) -> Path | None:
    """``resume`` as a checkpoint folder; ``latest`` is the newest under ``root`` (``None`` if there is none)."""
    if resume == "latest":
        found = list_checkpoints(root)
        return found[-1] if found else None
    path = Path(resume)
    if path.is_dir() and (path / INFO_FILE).exists():
        return path
    found = list_checkpoints(path)
    if found:
        return found[-1]
    raise InvalidInput(f"resume: {resume} is not a checkpoint folder (expected {INFO_FILE} inside, or a folder "
                       "of step-NNNNNN checkpoints); use 'latest' to continue the last run",
                       code="invalid_checkpoint", field="resume")


def load_checkpoint(path: Path, fingerprint: str) -> TrainingState:
    """Read a checkpoint; refuse one made by a run with different settings (it would not resume exactly)."""
    import torch
    from safetensors.torch import load_file

    info = json.loads((path / INFO_FILE).read_text())
    if info.get("fingerprint") != fingerprint:
        raise InvalidInput(f"checkpoint {path} was written by a run with different settings (model, data, rank, "
                           "lr, batch or seed differ); resume with the same options or start afresh",
                           code="checkpoint_mismatch", field="resume")
    # weights_only: a checkpoint holds tensors and plain containers, never code.
    state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
    return TrainingState(step=int(info["step"]), weights=load_file(str(path / WEIGHTS_FILE)),
                         optimizer=state["optimizer"], scheduler=state["scheduler"], generator=state["generator"],
                         torch_rng=state["torch_rng"], losses=list(state["losses"]), elapsed=float(state["elapsed"]),
                         fingerprint=fingerprint)
