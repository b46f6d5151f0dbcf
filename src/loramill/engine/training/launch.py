"""Starting a run as several processes on this machine, from the CLI or from a worker that keeps reporting.

torchrun (``torch.distributed.run --standalone``) starts the processes and forwards signals to them.
The CLI simply waits (``launch``). A worker (``train_in_processes``) also needs what a single-process
run gives it through callbacks: rank 0 writes its progress and checkpoints as JSON lines to a file
the parent follows and replays into the worker's callbacks; a cancel (the callback raising
``StopRequested``) becomes SIGTERM to every process, which stop together with a checkpoint.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loramill.engine.progress import Progress, ProgressCallback, StopRequested, no_progress
from loramill.errors import LoramillError

POLL_SECONDS = 0.2


def torchrun(processes: int, args: list[str]) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}", *args]


def launch(processes: int, argv: list[str]) -> int:
    """Run ``loramill <argv>`` as ``processes`` processes; signals to this process reach all of them."""
    child = subprocess.Popen(torchrun(processes, ["-m", "loramill", *argv]), env=_env())
    received: list[int] = []

    def forward(signum: int, frame: Any) -> None:
        received.append(signum)
        child.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        code = child.wait()
        # Stopped on request (the processes saved a checkpoint): the status a signalled program has.
        return 128 + received[0] if received else code
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def train_in_processes(config: Any, processes: int, *, progress: ProgressCallback = no_progress,
                       on_checkpoint: Callable[[Path], None] | None = None) -> Any:
    """``train(config)`` across ``processes`` processes, with progress and checkpoints reported here."""
    from loramill.engine.training.run import TrainResult

    # 1. The run's spec and the file rank 0 reports through.
    run_dir = config.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    spec, events = run_dir / "launch.json", run_dir / "launch-events.jsonl"
    spec.write_text(json.dumps(config.model_dump(mode="json")))
    events.write_text("")
    child = subprocess.Popen(torchrun(processes, ["-m", "loramill.engine.training.launch", str(spec), str(events)]),
                             env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True)

    # 2. Follow the events until the processes end; a stop from the callback goes to all of them.
    stop: BaseException | None = None
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    with events.open() as feed:
        while True:
            line = feed.readline()
            if not line:
                if child.poll() is not None:
                    break
                time.sleep(POLL_SECONDS)
                continue
            event = json.loads(line)
            if event["kind"] == "progress" and stop is None:
                try:
                    progress(Progress(event["stage"], event["step"], event["total"], event.get("info") or {}))
                except BaseException as exc:  # a cancel (StopRequested) or the caller's own failure
                    stop = exc
                    child.send_signal(signal.SIGTERM)  # torchrun passes it to every process
            elif event["kind"] == "checkpoint" and on_checkpoint is not None:
                on_checkpoint(Path(event["path"]))
            elif event["kind"] == "result":
                result = event
            elif event["kind"] == "error":
                error = event
    output = child.stdout.read() if child.stdout else ""
    child.wait()

    # 3. The outcome: the LoRA, the error rank 0 raised (same class and code), or the stop.
    if stop is not None:
        raise stop
    if error is not None:
        from loramill import errors

        raise getattr(errors, error["type"], LoramillError)(error["message"], code=error["code"],
                                                            field=error.get("field"))
    if result is None:
        raise RuntimeError(f"training processes exited with {child.returncode}:\n{output[-3000:]}")
    return TrainResult(lora_path=Path(result["lora_path"]), metrics=result["metrics"],
                       checkpoint_dir=Path(result["checkpoint_dir"]))


def _rank_main(spec: str, events: str) -> int:
    """One process of ``train_in_processes``: train, and on rank 0 write every report as a JSON line."""
    from loramill.engine.training.config import TrainConfig
    from loramill.engine.training.run import train

    config = TrainConfig(**json.loads(Path(spec).read_text()))
    main = os.environ.get("RANK", "0") == "0"
    feed = open(events, "a") if main else None  # noqa: SIM115 - held for the whole run

    def emit(**event: Any) -> None:
        if feed is not None:
            feed.write(json.dumps(event, default=str) + "\n")
            feed.flush()

    try:
        result = train(config, progress=lambda p: emit(kind="progress", stage=p.stage, step=p.step, total=p.total,
                                                       info=p.info),
                       on_checkpoint=lambda path: emit(kind="checkpoint", path=str(path)))
        emit(kind="result", lora_path=str(result.lora_path), metrics=result.metrics,
             checkpoint_dir=str(result.checkpoint_dir))
        return 0
    except StopRequested:
        return 143
    except LoramillError as exc:
        emit(kind="error", type=type(exc).__name__, code=exc.code, message=exc.message, field=exc.field)
        return 1


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}


if __name__ == "__main__":
    sys.exit(_rank_main(sys.argv[1], sys.argv[2]))
