"""Cold start: from starting the process to the first image, on the tiny SD 1.5 model.

1. Baseline: the few lines people write with diffusers' defaults — import, ``from_pretrained``,
   generate, save a PNG — as a program.
2. loramill: ``loramill worker`` with one generation job already queued (sql broker, local storage),
   until its ``completed`` event: imports, store, broker, model load, generation, upload, event.
Each side runs ``REPEATS`` times, alternating; the median counts. The worker's own stage timings
and the moments it was ready to take jobs and had the model loaded (from its JSON log, seconds
after the process started) show where its time goes.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.common import REPO, Result, speedup, tiny_model, workdir
from bench.training import _env

REPEATS, STEPS, SIDE = 3, 8, 64
PROMPT = "a photo of sks dog"

BASELINE = """
import sys, torch
from diffusers import StableDiffusionPipeline
pipe = StableDiffusionPipeline.from_pretrained(sys.argv[1])
image = pipe({prompt!r}, num_inference_steps={steps}, height={side}, width={side},
             generator=torch.Generator().manual_seed(0)).images[0]
image.save(sys.argv[2])
print("IMAGE", flush=True)
"""


def baseline_once(python: str, model: Path, work: Path) -> float:
    code = BASELINE.format(prompt=PROMPT, steps=STEPS, side=SIDE)
    started = time.perf_counter()
    proc = subprocess.Popen([python, "-c", code, str(model), str(work / "baseline.png")], cwd=REPO, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("IMAGE"):
            elapsed = time.perf_counter() - started
            proc.wait()
            return elapsed
    raise RuntimeError(f"baseline exited {proc.wait()} without an image")


# Log lines whose time (seconds after the process started) the details report.
MARKS = {"worker started": "ready_for_jobs", "loaded base model": "model_loaded"}


def worker_once(python: str, model: Path, work: Path) -> tuple[float, dict[str, float]]:
    from loramill.adapters.broker.sql import SqlBroker

    home = work / "worker"
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    db = f"sqlite:///{home / 'loramill.db'}"
    # Polling for the event backs off to 0.2 s by default: measurement lag the baseline (a line on a
    # pipe) does not have. 20 ms at most keeps it small without taking a core from the worker.
    client = SqlBroker(db, poll_max=0.02)
    task = str(uuid.uuid4())
    client.publish_job(json.dumps({"taskId": task, "userId": "bench", "prompt": PROMPT, "width": SIDE,
                                   "height": SIDE, "steps": STEPS, "seed": 0}).encode(), task_id=task)
    env = {**_env(), "LORAMILL_HOME": str(home), "LORAMILL_BROKER": "sql", "LORAMILL_STORAGE": "local",
           "LORAMILL_STORAGE_ROOT": str(home / "storage"), "LORAMILL_DATABASE_URL": db,
           "LORAMILL_MODELS": f"sd15={model}", "LORAMILL_BASE_MODEL": "sd15", "LORAMILL_RECEIVE_TIMEOUT": "0.2",
           "LORAMILL_WORKER_HTTP_PORT": "0"}
    log_path = home / "worker.log"
    started, wall_started = time.perf_counter(), time.time()
    with log_path.open("w") as log:
        proc = subprocess.Popen([python, "-m", "loramill", "worker", "--max-jobs", "1"], cwd=REPO, env=env,
                                stdout=log, stderr=subprocess.STDOUT)
    elapsed = None
    try:
        deadline = started + 300
        while elapsed is None and time.perf_counter() < deadline:
            for body in client.consume_events(0.5):
                event = json.loads(body)
                if event.get("taskId") == task and event.get("status") in ("completed", "failed"):
                    if event["status"] != "completed":
                        raise RuntimeError(f"cold-start job failed: {event}")
                    elapsed = time.perf_counter() - started
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=30)
        client.close()
    if elapsed is None:
        raise RuntimeError(f"no completed event; see {log_path}")
    stages: dict[str, float] = {}
    for raw in log_path.read_text().splitlines():
        try:
            line = json.loads(raw)
        except ValueError:
            continue
        if "stage" in line and "seconds" in line:
            stages[line["stage"]] = stages.get(line["stage"], 0.0) + float(line["seconds"])
        for text, mark in MARKS.items():
            if str(line.get("message", "")).startswith(text) and f"{mark}_at_s" not in stages:
                logged = datetime.fromisoformat(str(line["time"]).replace("Z", "+00:00")).timestamp()
                stages[f"{mark}_at_s"] = round(logged - wall_started, 3)
    return elapsed, stages


def run(quick: bool = False) -> list[Result]:
    python = sys.executable
    model = tiny_model()
    work = workdir("coldstart")
    base, ours, stages = [], [], []
    for _ in range(1 if quick else REPEATS):
        base.append(baseline_once(python, model, work))
        seconds, staged = worker_once(python, model, work)
        ours.append(seconds)
        stages.append(staged)
    b, o = statistics.median(base), statistics.median(ours)
    details: dict[str, Any] = {"baseline_s": base, "loramill_s": ours, "worker_stages_s": stages[-1],
                               "steps": STEPS, "side": SIDE}
    ratio = speedup(b, o)
    return [Result("cold start: process start to first image", "s", b, o, ratio, "report (no target)", None,
                   "make bench BENCH=coldstart", details,
                   note="loramill's side is the whole worker path (store, queue, upload, event), the baseline only "
                        "loads and generates")]
