"""Training at real size: the SD 1.5 architecture at full size (random weights), 512 px, a few steps a side.

1. loramill against diffusers' ``train_dreambooth_lora.py`` (both in bench/.venv-ref, each in its own
   process under the step clock): s/step between optimizer steps and each process's peak RSS.
2. loramill with the frozen UNet unquantised and int8 (--quantize-base int8), in loramill's own
   environment (torchao): s/step and peak RSS, side by side.
3. The memory plan of the same run beside the measured peaks (the plan is for an accelerator: the
   CPU process also holds the VAE and text encoder, Python and torch's own ~1 GB).

Real size means minutes per side on this machine: one process at a time, and each run is skipped,
with the reason recorded, when the machine has too little free memory for it. SDXL is planned, not
run: its fp32 training step needs more than this machine's 24 GiB (see the plan in the notes).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import PROMPT, REPO, WORK, Result, speedup, training_images, workdir
from bench.training import RANK, reference_args

STEPS, WARMUP = 8, 2  # the first steps pay allocation and lazy init; 5 measured intervals a side (12–20 s each here)
NEEDS_GIB = 14  # free memory a 512 px real-size SD 1.5 run may take here (measured peak ~9 GiB + margin)


def real_model() -> Path:
    from loramill.engine.models.realsize import write_real_size

    return write_real_size("sd15", WORK / "models" / "sd15-real")


def free_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 2**20
    return 0.0


def measured(python: str, out: Path, side: str, *args: str) -> dict[str, Any]:
    """One side under the step clock, with its peak RSS (the process's own, from wait4)."""
    if free_gib() < NEEDS_GIB:
        raise MemoryError(f"only {free_gib():.1f} GiB free, a real-size run needs ~{NEEDS_GIB} GiB: skipped")
    log = out.with_suffix(".log")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LORAMILL_")}
    env.update(PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""), HF_HUB_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false")
    with log.open("w") as f:
        proc = subprocess.Popen(["nice", "-n", "5", python, "-m", "bench.stepclock", str(out), side, *args],
                                cwd=REPO, stdout=f, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{side} run failed; see {log}:\n" + "\n".join(log.read_text().splitlines()[-15:]))
    report = json.loads(out.read_text())
    report["peak_rss_gib"] = round(usage.ru_maxrss / 2**20, 2)  # ru_maxrss is in KiB on Linux
    report["s_per_step"] = (report["steps"][-1] - report["steps"][WARMUP]) / (len(report["steps"]) - 1 - WARMUP)
    return report


def loramill_side(python: str, model: Path, images: Path, work: Path, name: str, **extra: Any) -> dict[str, Any]:
    cfg = work / f"{name}.json"
    cfg.write_text(json.dumps(dict(model=str(model), images=str(images), trigger="sks", resolution=512, rank=RANK,
                                   batch_size=1, seed=0, lr=1e-4, max_steps=STEPS, prepare="never",
                                   out=str(work / name / "lora.safetensors"), **extra)))
    return measured(python, work / f"{name}.result.json", "loramill", str(cfg))


def plan_gib(**options: Any) -> dict[str, float]:
    from loramill.engine.planning.memory import PlanOptions, gib, plan_training

    plan = plan_training(PlanOptions("sd15", resolution=512, rank=RANK, **options))
    return {"peak": gib(plan.peak), **{k: gib(v) for k, v in plan.phases.items()},
            "all components + step": gib(plan.phases["training step"] + plan.parts["vae"]
                                         + plan.parts["text encoders"])}


def versus_reference(python: str, script: str) -> Result:
    model, work = real_model(), workdir("realsize/reference")
    captioned, plain = training_images(4, 512, caption=PROMPT), training_images(4, 512, caption=None)
    ref = measured(python, work / "reference.json", "reference", script, "--",
                   *reference_args(model, plain, work / "ref-out", 512, STEPS))
    ours = loramill_side(python, model, captioned, work, "loramill")
    details = {"steps": STEPS, "warmup": WARMUP, "reference_s_per_step": ref["s_per_step"],
               "loramill_s_per_step": ours["s_per_step"], "reference_peak_rss_gib": ref["peak_rss_gib"],
               "loramill_peak_rss_gib": ours["peak_rss_gib"], "plan_gib": plan_gib()}
    ratio = speedup(ref["s_per_step"], ours["s_per_step"])
    return Result("real-size SD 1.5 per step, 512 px", "s/step", ref["s_per_step"], ours["s_per_step"], ratio,
                  "≥ 1.5×", bool(ratio and ratio >= 1.5), "make bench BENCH=realsize REFERENCE_SCRIPT=…", details,
                  note=f"peak RSS: reference {ref['peak_rss_gib']} GiB, loramill {ours['peak_rss_gib']} GiB")


def quantized_base() -> Result:
    model, work = real_model(), workdir("realsize/quantized")
    images = training_images(4, 512, caption=PROMPT)
    plain = loramill_side(sys.executable, model, images, work, "unquantized")
    int8 = loramill_side(sys.executable, model, images, work, "int8", quantize_base="int8")
    details = {"steps": STEPS, "unquantized_s_per_step": plain["s_per_step"], "int8_s_per_step": int8["s_per_step"],
               "unquantized_peak_rss_gib": plain["peak_rss_gib"], "int8_peak_rss_gib": int8["peak_rss_gib"],
               "plan_gib": {"none": plan_gib(), "int8": plan_gib(quantize_base="int8")}}
    memory_ratio = round(plain["peak_rss_gib"] / int8["peak_rss_gib"], 3)
    return Result("real-size SD 1.5, int8 base vs unquantised", "peak RSS GiB", plain["peak_rss_gib"],
                  int8["peak_rss_gib"], memory_ratio, "> 1× (smaller)", memory_ratio > 1,
                  "make bench BENCH=realsize", details,
                  note=f"s/step: unquantised {plain['s_per_step']:.1f}, int8 {int8['s_per_step']:.1f} (CPU int8 "
                       "dequantises per matmul); fidelity on the reference world: not measured here")


def run(python: str | None = None, script: str | None = None, quick: bool = False) -> list[Result]:
    """Real-size comparisons; each is skipped with its reason when it cannot run here."""
    results = []
    jobs = [("quantised base", quantized_base)]
    if python and script:
        jobs.insert(0, ("reference", lambda: versus_reference(python, script)))
    else:
        results.append(Result("real-size SD 1.5 per step, 512 px", "s/step", None, None, None, "≥ 1.5×", None,
                              "make bench BENCH=realsize REFERENCE_SCRIPT=…", note="not run: no reference script"))
    for name, job in jobs:
        started = time.perf_counter()
        try:
            results.append(job())
        except MemoryError as exc:
            results.append(Result(f"real-size SD 1.5 ({name})", "-", None, None, None, "-", None,
                                  "make bench BENCH=realsize", note=str(exc)))
        print(f"   realsize {name}: {time.perf_counter() - started:.0f}s", flush=True)
    from loramill.engine.planning.memory import PlanOptions, gib, plan_training

    sdxl = plan_training(PlanOptions("sdxl", resolution=1024, rank=RANK))
    results.append(Result("real-size SDXL, 1024 px", "-", None, None, None, "-", None, "loramill plan --family sdxl "
                          "--resolution 1024", note=f"not run: its fp32 step needs ~{gib(sdxl.peak):.0f} GiB by the "
                          "plan (CPU: more), this machine has 24 GiB shared"))
    return results
