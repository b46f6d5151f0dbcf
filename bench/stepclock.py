"""Run one training — the reference script or loramill's engine — with a clock on every optimizer step.

Both sides get the same instruments, installed the same way before any training code runs:
- a global optimizer step hook (``torch.optim.optimizer.register_optimizer_step_post_hook``) records
  when each step ends, so s/step is measured between steps, whatever each side does in between;
- the time spent in the VAE encoder and the text encoder is added up, so the share of a step they
  take is known (the reference runs them every step; loramill caches their outputs once);
- optionally (``--flops``) a FLOP counter reads the FLOPs between consecutive steps, and
  (``--profile``) the torch profiler records a few steady-state steps.

    python -m bench.stepclock OUT.json reference SCRIPT -- <script arguments>
    python -m bench.stepclock OUT.json loramill CONFIG.json [--flops] [--profile]
"""

from __future__ import annotations

import json
import runpy
import sys
import time
from pathlib import Path
from typing import Any

STARTED = time.perf_counter()


class Clock:
    def __init__(self) -> None:
        self.steps: list[float] = []
        self.encoder_seconds = {"vae": 0.0, "text": 0.0}
        self.encoder_marks: list[tuple[float, float]] = []  # (vae, text) totals at each step end
        self.flops: list[int] = []
        self.on_step: list[Any] = []

    def install(self) -> None:
        import torch
        from diffusers import AutoencoderKL
        from torch.optim.optimizer import register_optimizer_step_post_hook
        from transformers import CLIPTextModel

        def after_step(optimizer: Any, args: Any, kwargs: Any) -> None:
            self.steps.append(time.perf_counter())
            self.encoder_marks.append((self.encoder_seconds["vae"], self.encoder_seconds["text"]))
            for fn in self.on_step:
                fn()

        register_optimizer_step_post_hook(after_step)
        self._wrap(AutoencoderKL, "encode", "vae")
        self._wrap(CLIPTextModel, "forward", "text")
        assert torch

    def _wrap(self, cls: Any, method: str, bucket: str) -> None:
        original = getattr(cls, method)

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.encoder_seconds[bucket] += time.perf_counter() - started

        setattr(cls, method, timed)

    def report(self, first_step_started: float | None = None) -> dict[str, Any]:
        return {"started": STARTED, "steps": self.steps, "encoder_marks": self.encoder_marks, "flops": self.flops,
                "ended": time.perf_counter(), "first_step_started": first_step_started}


def run_reference(clock: Clock, script: str, args: list[str]) -> None:
    sys.argv = [script, *args]
    runpy.run_path(script, run_name="__main__")


def run_loramill(clock: Clock, config_path: str, flops: bool, profile: bool) -> dict[str, Any]:
    from contextlib import ExitStack

    from loramill.engine.training.config import TrainConfig
    from loramill.engine.training.run import train

    config = TrainConfig(**json.loads(Path(config_path).read_text()))
    extra: dict[str, Any] = {}
    with ExitStack() as stack:
        if flops:
            from torch.utils.flop_counter import FlopCounterMode

            counter = stack.enter_context(FlopCounterMode(display=False))
            clock.on_step.append(lambda: clock.flops.append(counter.get_total_flops()))
        if profile:
            import torch.profiler as tp

            prof = stack.enter_context(tp.profile(activities=[tp.ProfilerActivity.CPU],
                                                  schedule=tp.schedule(wait=3, warmup=2, active=10, repeat=1)))
            clock.on_step.append(prof.step)
        result = train(config)
    if profile:
        extra["profile"] = summarize_profile(prof)
    extra["metrics"] = result.metrics
    return extra


# Where a step's time goes, by operator family (self CPU time of the profiled steps).
CATEGORIES = (
    # A step's own span minus the operators inside it: Python, module calls, hooks, the data path.
    ("Python and framework time between operators", ("profilerstep",)),
    ("convolution", ("conv", "mkldnn_convolution")),
    ("matmul (linear, attention projections)", ("addmm", "mm", "bmm", "matmul", "linear", "baddbmm")),
    ("attention kernel", ("scaled_dot_product", "_efficient_attention", "_flash_attention", "softmax")),
    ("normalisation", ("group_norm", "layer_norm", "native_group_norm", "native_layer_norm")),
    ("optimizer (AdamW)", ("_foreach", "adam", "lerp", "addcdiv", "addcmul")),
    ("elementwise / activations", ("silu", "gelu", "mul", "add", "div", "sub", "copy_", "cat", "pow", "sqrt",
                                   "exp", "sigmoid", "neg", "clone", "fill_", "zero_", "mse", "sum", "mean")),
)


def summarize_profile(prof: Any) -> dict[str, Any]:
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events) or 1
    shares: dict[str, float] = {}
    top = []
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total):
        name = e.key.lower()
        category = next((c for c, needles in CATEGORIES if any(n in name for n in needles)), "other (dispatch, "
                        "autograd bookkeeping, views)")
        shares[category] = shares.get(category, 0.0) + e.self_cpu_time_total / total
        if len(top) < 12:
            top.append({"op": e.key, "share": round(e.self_cpu_time_total / total, 4), "calls": e.count})
    return {"by_category": {k: round(v, 4) for k, v in sorted(shares.items(), key=lambda kv: -kv[1])}, "top_ops": top}


def main(argv: list[str]) -> None:
    out, side = argv[0], argv[1]
    clock = Clock()
    clock.install()
    extra: dict[str, Any] = {}
    if side == "reference":
        script = argv[2]
        args = argv[argv.index("--") + 1:] if "--" in argv else []
        run_reference(clock, script, args)
    else:
        extra = run_loramill(clock, argv[2], "--flops" in argv, "--profile" in argv)
    Path(out).write_text(json.dumps({**clock.report(), **extra}))


if __name__ == "__main__":
    main(sys.argv[1:])
