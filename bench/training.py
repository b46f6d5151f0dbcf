"""Training against diffusers' reference recipe (``train_dreambooth_lora.py`` run as a program per job).

1. Per step: the same model, images, rank, batch and seed through both; s/step between optimizer
   steps, the VAE's and text encoder's share of the reference's step, loramill's FLOP/s against this
   machine's matmul peak, and a profile of where loramill's step goes.
2. Back to back: five 40-step jobs through ``loramill worker`` (base model resident, latents cached)
   against the reference script run five times.

Both sides run in the reference environment (``bench/.venv-ref``: torch 2.14.1 + torchvision 0.29.1,
which the script imports), each in its own process started the same way.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from bench.common import PROMPT, REPO, Result, mean, speedup, tiny_model, training_images, workdir

WARMUP_STEPS = 5  # first steps pay one-off allocation and lazy init: not a step's cost
RANK, BATCH, SEED, LR = 4, 1, 0, 1e-4


def reference_args(model: Path, images: Path, out: Path, resolution: int, steps: int) -> list[str]:
    """The reference script's command line for the same job loramill runs (what we had to pass, and why)."""
    return [
        "--pretrained_model_name_or_path", str(model), "--instance_data_dir", str(images),
        "--instance_prompt", PROMPT, "--resolution", str(resolution), "--train_batch_size", str(BATCH),
        "--max_train_steps", str(steps), "--rank", str(RANK), "--learning_rate", str(LR), "--seed", str(SEED),
        "--output_dir", str(out),
        # No checkpoint inside the measured steps (its default is every 500), constant LR from step 0.
        "--checkpointing_steps", "1000000", "--lr_scheduler", "constant", "--lr_warmup_steps", "0",
    ]


def loramill_config(model: Path, images: Path, out: Path, resolution: int, steps: int) -> dict[str, Any]:
    return dict(model=str(model), images=str(images), trigger="sks", out=str(out / "lora.safetensors"),
                resolution=resolution, rank=RANK, batch_size=BATCH, seed=SEED, lr=LR, max_steps=steps,
                prepare="never", lr_scheduler="constant")


def clock_run(python: str, out: Path, side: str, *args: str) -> tuple[dict[str, Any], float]:
    """One side under the step clock; its report and the process's wall time."""
    started = time.perf_counter()
    log = out.with_suffix(".log")
    with log.open("w") as f:
        done = subprocess.run([python, "-m", "bench.stepclock", str(out), side, *args], cwd=REPO, stdout=f,
                              stderr=subprocess.STDOUT, env=_env())
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{side} run failed (exit {done.returncode}); see {log}:\n"
                           + "\n".join(log.read_text().splitlines()[-15:]))
    return json.loads(out.read_text()), wall


def seconds_per_step(report: dict[str, Any]) -> float:
    steps = report["steps"][WARMUP_STEPS:]
    return (steps[-1] - steps[0]) / (len(steps) - 1)


def encoder_share(report: dict[str, Any]) -> float:
    """Share of the measured steps spent in the VAE encoder and the text encoder."""
    steps, marks = report["steps"][WARMUP_STEPS:], report["encoder_marks"][WARMUP_STEPS:]
    spent = (marks[-1][0] - marks[0][0]) + (marks[-1][1] - marks[0][1])
    return spent / (steps[-1] - steps[0])


def per_step(python: str, script: str, size: str, resolution: int, steps: int) -> dict[str, Any]:
    """s/step of both sides on one configuration, alternating sides twice and keeping each side's best."""
    model = tiny_model(size)
    work = workdir(f"training/per-step-{size}-{resolution}")
    with_captions = training_images(4, 96, caption=PROMPT)
    plain = training_images(4, 96, caption=None)  # the script reads every file in its folder as an image
    ours_cfg = work / "loramill.json"
    ours_cfg.write_text(json.dumps(loramill_config(model, with_captions, work / "ours", resolution, steps)))
    ref, ours = [], []
    for attempt in range(2):
        report, _ = clock_run(python, work / f"reference-{attempt}.json", "reference", script, "--",
                              *reference_args(model, plain, work / f"ref-out-{attempt}", resolution, steps))
        ref.append(report)
        report, _ = clock_run(python, work / f"loramill-{attempt}.json", "loramill", str(ours_cfg))
        ours.append(report)
    ref_sps = min(seconds_per_step(r) for r in ref)
    our_sps = min(seconds_per_step(r) for r in ours)
    share = mean([encoder_share(r) for r in ref])
    return {"size": size, "resolution": resolution, "steps": steps, "reference_s_per_step": ref_sps,
            "loramill_s_per_step": our_sps, "ratio": speedup(ref_sps, our_sps),
            "reference_vae_text_share": round(share, 3),
            "loramill_vae_text_share": round(mean([encoder_share(r) for r in ours]), 4)}


def utilization(python: str, size: str, resolution: int, s_per_step: float) -> dict[str, Any]:
    """loramill's FLOP/s in a step against the measured matmul peak, and where the step's time goes."""
    model = tiny_model(size)
    work = workdir(f"training/mfu-{size}-{resolution}")
    cfg = work / "loramill.json"
    cfg.write_text(json.dumps(loramill_config(model, training_images(4, 96, caption=PROMPT), work / "ours",
                                              resolution, 20)))
    counted, _ = clock_run(python, work / "flops.json", "loramill", str(cfg), "--flops")
    flops = counted["flops"]
    per_step_flops = sorted(b - a for a, b in zip(flops[WARMUP_STEPS:], flops[WARMUP_STEPS + 1:]))
    step_flops = per_step_flops[len(per_step_flops) // 2]
    profiled, _ = clock_run(python, work / "profile.json", "loramill", str(cfg), "--profile")
    peak = float(subprocess.run([python, "-c", "from bench.common import matmul_peak_flops as p; print(p())"],
                                cwd=REPO, capture_output=True, text=True, check=True, env=_env()).stdout.split()[-1])
    achieved = step_flops / s_per_step
    return {"flops_per_step": step_flops, "achieved_flops": achieved, "matmul_peak_flops": peak,
            "mfu": round(achieved / peak, 4), "profile": profiled["profile"]}


def back_to_back(python: str, script: str, jobs: int = 5, steps: int = 40) -> dict[str, Any]:
    """``jobs`` trainings of ``steps`` steps: the reference script once per job vs one loramill worker."""
    model = tiny_model("default")
    work = workdir("training/back-to-back")
    plain = training_images(4, 96, caption=None)
    # 1. The reference: a program per job, as two of the source systems run it.
    ref_times = []
    for i in range(jobs):
        started = time.perf_counter()
        done = subprocess.run([python, script, *reference_args(model, plain, work / f"ref-{i}", 64, steps)],
                              cwd=REPO, capture_output=True, text=True, env=_env())
        if done.returncode != 0:
            raise RuntimeError(f"reference run failed:\n{done.stderr[-3000:]}")
        ref_times.append(time.perf_counter() - started)
    # 2. loramill: one worker process, from its start to the last job's completed event.
    ours = _worker_jobs(python, model, plain, work, jobs, steps)
    ref_total = sum(ref_times)
    return {"jobs": jobs, "steps": steps, "reference_total_s": ref_total, "reference_per_job_s": ref_times,
            "loramill_total_s": ours["total"], "loramill_job_done_at_s": ours["done_at"],
            "ratio": speedup(ref_total, ours["total"])}


def _worker_jobs(python: str, model: Path, images: Path, work: Path, jobs: int, steps: int) -> dict[str, Any]:
    import shutil

    from loramill.adapters.broker.sql import SqlBroker

    home = work / "worker"
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    user = "bench"
    keys = []
    for image in sorted(images.glob("*.png")):
        key = f"users/{user}/images/{image.name}"
        (home / "storage" / key).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(image, home / "storage" / key)
        keys.append(key)
    db = f"sqlite:///{home / 'loramill.db'}"
    client = SqlBroker(db)
    tasks = [str(uuid.uuid4()) for _ in range(jobs)]
    env = {**_env(), "LORAMILL_HOME": str(home), "LORAMILL_BROKER": "sql", "LORAMILL_STORAGE": "local",
           "LORAMILL_STORAGE_ROOT": str(home / "storage"), "LORAMILL_DATABASE_URL": db,
           "LORAMILL_MODELS": f"sd15={model}", "LORAMILL_BASE_MODEL": "sd15", "LORAMILL_RECEIVE_TIMEOUT": "0.2",
           "LORAMILL_WORKER_HTTP_PORT": "0"}
    for task in tasks:  # queued before the worker starts, as the reference's five jobs are known up front
        params = {"maxSteps": steps, "resolution": 64, "networkDim": RANK, "learningRate": LR, "seed": SEED,
                  "batchSize": BATCH, "triggerWord": "sks"}
        client.publish_job(json.dumps({"taskId": task, "userId": user, "images": keys,
                                       "configurationParams": params}).encode(), task_id=task)
    started = time.perf_counter()
    log = (work / "worker.log").open("w")
    proc = subprocess.Popen([python, "-m", "loramill", "worker", "--max-jobs", str(jobs)], cwd=REPO, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    done_at: dict[str, float] = {}
    try:
        deadline = started + 600
        while len(done_at) < jobs and time.perf_counter() < deadline:
            for body in client.consume_events(1.0):
                event = json.loads(body)
                if event.get("status") in ("completed", "failed"):
                    if event["status"] == "failed":
                        raise RuntimeError(f"worker job failed: {event}")
                    done_at[event["taskId"]] = time.perf_counter() - started
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=30)
        client.close()
    if len(done_at) < jobs:
        raise RuntimeError(f"only {len(done_at)} of {jobs} worker jobs completed; see {work / 'worker.log'}")
    return {"total": max(done_at.values()), "done_at": sorted(done_at.values())}


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LORAMILL_", "KAFKA_", "S3_"))}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    # No hub, no telemetry: everything is local (the tiny models are folders).
    env.update(HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1", TOKENIZERS_PARALLELISM="false")
    return env


def run(python: str | None, script: str | None, quick: bool = False) -> list[Result]:
    """The training benchmarks' results (none measured, with the reason, when no reference script was given)."""
    command = f"make bench REFERENCE_SCRIPT={script or '<path to train_dreambooth_lora.py>'}"
    if not script or not python:
        note = ("not run: no reference script was given (make bench REFERENCE_SCRIPT=/path/to/"
                "examples/dreambooth/train_dreambooth_lora.py)")
        return [Result(name, metric, None, None, None, target, None, command, note=note) for name, metric, target in (
            ("training per step, 64 px", "s/step", "≥ 1.0×"),
            ("training per step, larger", "s/step", "≥ 1.2×"),
            ("training back to back, 5×40 steps", "total s", "≥ 1.8×"))]
    steps = 20 if quick else 40
    results = []
    small = per_step(python, script, "default", 64, steps)
    results.append(Result("training per step, 64 px", "s/step", small["reference_s_per_step"],
                          small["loramill_s_per_step"], small["ratio"], "≥ 1.0×",
                          bool(small["ratio"] and small["ratio"] >= 1.0), command, small,
                          note=f"VAE + text encoder: {small['reference_vae_text_share']:.0%} of the reference's step"))
    large = per_step(python, script, "larger", 256, steps)
    large.update(utilization(python, "larger", 256, large["loramill_s_per_step"]))
    needs = large["reference_vae_text_share"] >= 0.15
    results.append(Result("training per step, larger", "s/step", large["reference_s_per_step"],
                          large["loramill_s_per_step"], large["ratio"], "≥ 1.2×",
                          bool(large["ratio"] and large["ratio"] >= (1.2 if needs else 1.0)), command, large,
                          note=f"VAE + text encoder: {large['reference_vae_text_share']:.0%} of the reference's "
                               f"step; MFU {large['mfu']:.1%} of the measured matmul peak"))
    b2b = back_to_back(python, script)
    results.append(Result("training back to back, 5×40 steps", "total s", b2b["reference_total_s"],
                          b2b["loramill_total_s"], b2b["ratio"], "≥ 1.8×", bool(b2b["ratio"] and b2b["ratio"] >= 1.8),
                          command, b2b))
    return results


if __name__ == "__main__":
    for r in run(sys.argv[1] if len(sys.argv) > 1 else None, sys.argv[2] if len(sys.argv) > 2 else None):
        print(r)
