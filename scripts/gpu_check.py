"""The prepared GPU check: real-size random-weight SD 1.5, SDXL and FLUX.1 training steps on one GPU, one table.

Per case: s/step (median of the measured steps), peak VRAM as torch allocates it, and the memory
plan's estimate of the same (engine/planning/memory.py, without the CUDA context). Cases cover
bf16 / fp16, 8-bit AdamW, a quantised base (int8, nf4) and gradient checkpointing; a case the plan
says will not fit this GPU is skipped with that reason. Under 8 minutes on an H100.

    scripts/gpu-check.sh             # on a machine with a CUDA GPU
    scripts/gpu-check.sh --dry-run   # anywhere: plans every case, checks every option, trains the
                                     # CPU-capable ones on a tiny model (part of make test)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STEPS, WARMUP = 8, 3
_PIPES: dict[str, Any] = {}


@dataclass
class Case:
    family: str
    resolution: int
    precision: str
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        extra = " ".join(f"{k}={v}" for k, v in self.options.items())
        return f"{self.family} {self.resolution}px {self.precision} {extra}".strip()


CASES = [
    Case("sd15", 512, "fp16"),
    Case("sd15", 512, "bf16"),
    Case("sd15", 512, "fp16", {"optimizer": "adamw8bit"}),
    Case("sd15", 512, "fp16", {"quantize_base": "int8"}),
    Case("sd15", 512, "fp16", {"gradient_checkpointing": True}),
    Case("sdxl", 1024, "bf16", {"gradient_checkpointing": True}),
    Case("sdxl", 1024, "bf16", {"gradient_checkpointing": True, "quantize_base": "nf4"}),
    Case("flux", 1024, "bf16", {"gradient_checkpointing": True, "quantize_base": "int8"}),
    Case("flux", 512, "bf16", {"gradient_checkpointing": True, "quantize_base": "nf4"}),
]


def plan_of(case: Case) -> Any:
    from loramill.engine.planning.memory import PlanOptions, plan_training

    keys = ("optimizer", "quantize_base", "gradient_checkpointing")
    return plan_training(PlanOptions(case.family, resolution=case.resolution, rank=16,
                                     mixed_precision=case.precision, **{k: case.options[k] for k in keys
                                                                        if k in case.options}))


def images(folder: Path, side: int) -> Path:
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(4):
        im = Image.new("RGB", (side, side), (40 * i, 120, 200 - 40 * i))
        ImageDraw.Draw(im).ellipse((side // 5, side // 8, side * 3 // 4, side * 3 // 4), fill=(240, 200, 150))
        im.save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text("a photo of sks")
    return folder


def config_of(case: Case, model: str, data: Path, out: Path, steps: int = STEPS) -> Any:
    from loramill.engine.training.config import TrainConfig

    return TrainConfig(model=model, family=case.family, images=str(data), trigger="sks", out=str(out),
                       resolution=case.resolution, rank=16, max_steps=steps, mixed_precision=case.precision,
                       prepare="never", **case.options)


def measure(case: Case, work: Path) -> dict[str, Any]:
    """Train ``case`` on the real-size random model for STEPS steps; s/step and peak allocated VRAM."""
    import torch

    from loramill.engine.models.realsize import build_real_size
    from loramill.engine.progress import Progress
    from loramill.engine.training.run import train

    dtype = torch.bfloat16 if case.precision == "bf16" else torch.float16
    key = (case.family, dtype)
    if _PIPES.get("key") != key:  # one resident pipeline at a time, reused by the cases that share it
        _PIPES.clear()
        _PIPES.update(key=key, pipe=build_real_size(case.family, dtype=dtype, device="cuda"))
    pipe = _PIPES["pipe"]
    ticks: list[float] = []

    def progress(p: Progress) -> None:
        if p.stage == "train":
            torch.cuda.synchronize()
            ticks.append(time.perf_counter())

    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    config = config_of(case, f"real-size-{case.family}", images(work / f"img{case.resolution}", case.resolution),
                       work / f"{case.family}.safetensors")
    train(config, pipe=pipe, progress=progress)
    peak = torch.cuda.max_memory_allocated()
    steps = [b - a for a, b in zip(ticks[WARMUP:], ticks[WARMUP + 1:])]
    return {"s_per_step": statistics.median(steps), "peak_gib": peak / 2**30}


def dry_run(case: Case, work: Path, tiny: dict[str, Path]) -> str:
    """Everything about ``case`` that needs no CUDA: its options validate, and CPU-capable ones train."""
    from loramill.engine.training.run import train
    from loramill.errors import UnsupportedHardware

    config_of(case, "check", work, work / "x.safetensors")  # the options themselves are valid
    cpu_case = Case(case.family, 64, "no", {k: v for k, v in case.options.items() if v not in ("adamw8bit",)})
    config = config_of(cpu_case, str(tiny[case.family]), images(work / "img64", 64),
                       work / f"dry-{abs(hash(case.name))}.safetensors", steps=2)
    try:
        train(config)
    except UnsupportedHardware as exc:
        assert "CUDA" in exc.message, exc.message  # a CUDA-only option refused with a clear error, before work
        return f"refused on CPU as expected: {exc.message.split(':')[0]}"
    return "tiny-model CPU run ok (precision, 8-bit AdamW need CUDA)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="check everything that does not need CUDA")
    parser.add_argument("--only", help="comma-separated families to run (default: all)")
    args = parser.parse_args(argv)

    import torch

    from loramill.engine.planning.memory import CONTEXT_BYTES, GIB

    if not args.dry_run and not torch.cuda.is_available():
        print("no CUDA GPU here: run with --dry-run, or on a GPU machine", file=sys.stderr)
        return 2
    cases = [c for c in CASES if not args.only or c.family in args.only.split(",")]
    total = torch.cuda.get_device_properties(0).total_memory if not args.dry_run else None
    device = torch.cuda.get_device_name(0) if not args.dry_run else "CPU (dry run)"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        tiny = {}
        if args.dry_run:
            from loramill.engine.models.realsize import build_real_size
            from loramill.engine.models.tiny import write_tiny_model

            tiny = {f: write_tiny_model(f, work / f"tiny-{f}") for f in {c.family for c in cases}}
            for family in tiny:  # the real-size pipelines assemble (on the meta device: no memory)
                build_real_size(family, dtype=torch.bfloat16, device="meta")
        tried_on_cpu: dict[str, str] = {}
        for case in cases:
            started = time.perf_counter()
            plan = plan_of(case)
            planned = (plan.peak - CONTEXT_BYTES) / GIB
            if args.dry_run:
                cpu_key = f"{case.family} {sorted(case.options.items())}"
                if cpu_key not in tried_on_cpu:
                    tried_on_cpu[cpu_key] = dry_run(case, work, tiny)
                rows.append((case.name, "-", "-", f"{planned:.1f}", tried_on_cpu[cpu_key]))
            elif total is not None and plan.peak > total:
                rows.append((case.name, "-", "-", f"{planned:.1f}", f"skipped: plan exceeds {total / GIB:.0f} GiB"))
            else:
                try:
                    got = measure(case, work)
                    rows.append((case.name, f"{got['s_per_step']:.3f}", f"{got['peak_gib']:.1f}", f"{planned:.1f}",
                                 f"measured/plan {got['peak_gib'] / planned:.2f}"))
                except Exception as exc:  # noqa: BLE001 - one failing case must not hide the others
                    rows.append((case.name, "-", "-", f"{planned:.1f}", f"FAILED: {type(exc).__name__}: "
                                 f"{str(exc)[:120]}"))
            print(f"  {case.name}: {time.perf_counter() - started:.0f}s", file=sys.stderr, flush=True)
    print(f"\nGPU check on {device}, torch {torch.__version__}, {STEPS} steps a case ({WARMUP} warm-up)\n")
    print("| case | s/step | peak VRAM GiB | plan GiB | note |")
    print("|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 0 if not any("FAILED" in r[4] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
