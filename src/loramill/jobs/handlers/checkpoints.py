"""Training checkpoints kept in storage (``checkpoints/{taskId}/step-NNNNNN/<file>``), not on a worker's disk.

A worker can die at any moment and the job's redelivery may land on another machine, so each new
checkpoint is copied to storage as soon as the engine writes it, and a training job starts by
fetching the newest one. ``checkpoint.json`` is uploaded last: its presence marks a complete
checkpoint, so a worker killed mid-upload leaves a folder that the next one ignores.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from loramill.adapters.storage.base import Storage
from loramill.domain.keys import checkpoints_prefix
from loramill.engine.training.checkpoint import INFO_FILE, STATE_FILE, WEIGHTS_FILE

log = logging.getLogger(__name__)
T = TypeVar("T")
Io = Callable[[str, Callable[[], T]], T]

FILES = (WEIGHTS_FILE, STATE_FILE, INFO_FILE)  # the marker last
_STEP = re.compile(r"^step-(\d{6,})$")


def stored_steps(storage: Storage, task_id: str, io: Io) -> list[int]:
    """Steps of the complete checkpoints stored for ``task_id``, oldest first."""
    keys = io("storage.list", lambda: storage.list(checkpoints_prefix(task_id)))
    files: dict[int, set[str]] = {}
    for key in keys:
        parts = key[len(checkpoints_prefix(task_id)):].split("/")
        match = _STEP.match(parts[0]) if len(parts) == 2 else None
        if match:
            files.setdefault(int(match.group(1)), set()).add(parts[1])
    return sorted(step for step, names in files.items() if set(FILES) <= names)


def upload_checkpoint(storage: Storage, task_id: str, folder: Path, io: Io, *, keep: int = 2) -> None:
    """Copy the checkpoint ``folder`` (``step-NNNNNN``) to storage and drop all but the newest ``keep``."""
    for name in FILES:
        key = f"{checkpoints_prefix(task_id)}{folder.name}/{name}"
        io("storage.put_file", lambda key=key, name=name: storage.put_file(key, folder / name))  # type: ignore[misc]
    log.info("checkpoint %s stored", folder.name, extra={"checkpoint": folder.name})
    steps = stored_steps(storage, task_id, io)
    for step in steps[:-keep]:
        delete_checkpoint(storage, task_id, step, io)


def download_latest(storage: Storage, task_id: str, root: Path, io: Io) -> int | None:
    """Fetch the newest complete stored checkpoint into ``root/step-NNNNNN``; its step, or ``None``."""
    steps = stored_steps(storage, task_id, io)
    if not steps:
        return None
    name = f"step-{steps[-1]:06d}"
    target = root / name
    target.mkdir(parents=True, exist_ok=True)
    for file in FILES:
        key = f"{checkpoints_prefix(task_id)}{name}/{file}"
        io("storage.get_file", lambda key=key, file=file: storage.get_file(key, target / file))  # type: ignore[misc]
    return steps[-1]


def delete_checkpoint(storage: Storage, task_id: str, step: int, io: Io) -> None:
    """Remove one stored checkpoint (marker first, so a half-deleted one is never taken as complete)."""
    for file in reversed(FILES):
        key = f"{checkpoints_prefix(task_id)}step-{step:06d}/{file}"
        io("storage.delete", lambda key=key: storage.delete(key))  # type: ignore[misc]


def delete_all(storage: Storage, task_id: str, io: Io) -> None:
    """Remove every stored checkpoint of a finished job."""
    for key in sorted(io("storage.list", lambda: storage.list(checkpoints_prefix(task_id))),
                      key=lambda k: not k.endswith(INFO_FILE)):
        io("storage.delete", lambda key=key: storage.delete(key))  # type: ignore[misc]
