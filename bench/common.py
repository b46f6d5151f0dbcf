"""What every benchmark shares: the work folder, tiny models and images, timing, and the result record.

Every figure is a ratio of two runs made side by side in one process tree on this machine: absolute
times on a shared 2-core machine drift from run to run, ratios much less.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
WORK = Path(os.environ.get("BENCH_WORK", REPO / "bench" / "work"))
RESULTS = REPO / "bench" / "results.json"
PROMPT = "a photo of sks dog"


@dataclass
class Result:
    """One benchmark's line in the table and its details in results.json."""

    name: str
    metric: str
    baseline: float | None
    loramill: float | None
    ratio: float | None  # > 1: loramill better, whichever way the metric goes
    target: str
    met: bool | None
    command: str
    details: dict[str, Any] = field(default_factory=dict)
    note: str = ""
    benchmark: str = ""  # the bench module that produced it (a re-run replaces all of that module's lines)


def speedup(baseline: float | None, ours: float | None) -> float | None:
    """baseline / ours for times (higher is better for loramill)."""
    if not baseline or not ours:
        return None
    return round(baseline / ours, 3)


def workdir(name: str) -> Path:
    path = WORK / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def tiny_model(size: str = "default", family: str = "sd15") -> Path:
    """The tiny model folder, written once per work folder (deterministic for its seed)."""
    from loramill.engine.models.tiny import write_tiny_model

    out = WORK / "models" / f"{family}-{size}"
    if not (out / "model_index.json").exists():
        if size == "default":
            write_tiny_model(family, out, seed=0)
        else:
            write_tiny_model(family, out, seed=0, size=size)
    return out


def training_images(count: int = 4, side: int = 96, caption: str | None = PROMPT) -> Path:
    """``count`` drawn images (and, when ``caption`` is given, a .txt caption beside each)."""
    from PIL import Image, ImageDraw

    out = WORK / "images" / f"{count}-{side}-{'cap' if caption else 'nocap'}"
    if out.exists() and len(list(out.glob("*.png"))) == count:
        return out
    out.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        im = Image.new("RGB", (side, side), (30 * i % 255, 120, (200 - 30 * i) % 255))
        d = ImageDraw.Draw(im)
        d.ellipse((side // 5 + 3 * i, side // 8, side * 3 // 4 + 3 * i, side * 3 // 4), fill=(240, 200, 150))
        d.ellipse((side // 3 + 3 * i, side // 3, side // 3 + 6 + 3 * i, side // 3 + 6), fill=(20, 20, 20))
        im.save(out / f"{i}.png")
        if caption:
            (out / f"{i}.txt").write_text(caption)
    return out


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    value = fn()
    return time.perf_counter() - started, value


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


def machine() -> dict[str, Any]:
    import torch

    return {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "python": sys.version.split()[0],
            "torch": torch.__version__, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine()}


def matmul_peak_flops(n: int = 1024, repeats: int = 10) -> float:
    """This machine's dense float32 matmul rate (FLOP/s): the best of ``repeats`` n×n products."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        torch.mm(a, b)
    best = min(timed(lambda: torch.mm(a, b))[0] for _ in range(repeats))
    return 2 * n ** 3 / best


def save_results(results: list[Result], meta: dict[str, Any]) -> None:
    """Merge ``results`` into bench/results.json (a partial run keeps the other benchmarks' last figures)."""
    existing: dict[str, Any] = {}
    if RESULTS.exists():
        try:
            existing = json.loads(RESULTS.read_text())
        except ValueError:
            existing = {}
    rerun = {r.benchmark for r in results}
    by_name = {r["name"]: r for r in existing.get("results", []) if r.get("benchmark") not in rerun}
    for r in results:
        by_name[r.name] = {**asdict(r), "date": meta["date"]}
    RESULTS.write_text(json.dumps({"machine": meta, "results": list(by_name.values())}, indent=2) + "\n")


def table(results: list[dict[str, Any]]) -> str:
    """The results as a fixed-width table."""
    rows = [("benchmark", "metric", "baseline", "loramill", "ratio", "target", "met")]
    for r in results:
        rows.append((r["name"], r["metric"], _fmt(r["baseline"]), _fmt(r["loramill"]),
                     _fmt(r["ratio"]) + ("×" if r["ratio"] is not None else ""), r["target"],
                     {True: "yes", False: "NO", None: "—"}[r["met"]]))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    if value is None:
        return "—"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 1:
        return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"
    return f"{value:.3g}"


def markdown_table(results: list[dict[str, Any]]) -> str:
    """The results as the Markdown table in docs/performance.md (``python -m bench.common``)."""
    lines = ["| benchmark | metric | baseline | loramill | ratio | target | met | date |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        ratio = _fmt(r["ratio"]) + "×" if r["ratio"] is not None else "—"
        met = {True: "yes", False: "**no**", None: "—"}[r["met"]]
        lines.append(f"| {r['name']} | {r['metric']} | {_fmt(r['baseline'])} | {_fmt(r['loramill'])} | {ratio} | "
                     f"{r['target']} | {met} | {r.get('date', '')} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown_table(json.loads(RESULTS.read_text())["results"]))
