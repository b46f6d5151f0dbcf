"""Run the benchmarks, print the table and merge the figures into bench/results.json.

    python -m bench.run [--only training,loras,orchestration,coldstart,quality,adherence,recipe,lora_quality,
                                realsize,generation,wuerstchen,fairness]
                        [--quick]
                        [--reference-script PATH --reference-python PATH]

``make bench`` calls this; see docs/performance.md for what each benchmark measures and why.
A benchmark that fails is reported as such in the table (with the error), and the others still run.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
import traceback

from bench.common import RESULTS, Result, machine, save_results, table

BENCHMARKS = ("training", "loras", "orchestration", "coldstart", "quality", "adherence", "recipe", "lora_quality",
              "realsize", "generation", "wuerstchen", "fairness")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="all", help="comma-separated: " + ", ".join(BENCHMARKS))
    parser.add_argument("--quick", action="store_true", help="smaller runs, to check the benchmarks work")
    parser.add_argument("--reference-script", help="diffusers' examples/dreambooth/train_dreambooth_lora.py")
    parser.add_argument("--reference-python", help="the python of the reference environment (bench/.venv-ref)")
    args = parser.parse_args(argv)
    chosen = BENCHMARKS if args.only in ("", "all") else tuple(n.strip() for n in args.only.split(","))
    unknown = [n for n in chosen if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")

    meta = machine()
    meta["load_average_at_start"] = os.getloadavg()
    meta["omp_num_threads"] = os.environ.get("OMP_NUM_THREADS")
    meta["command"] = " ".join(["python -m bench.run", *(argv if argv is not None else sys.argv[1:])])
    if not args.reference_script:
        print("note: REFERENCE_SCRIPT not given — the training comparisons against diffusers' "
              "train_dreambooth_lora.py are skipped (make bench REFERENCE_SCRIPT=/path/to/train_dreambooth_lora.py)")
    results: list[Result] = []
    for name in chosen:
        started = time.perf_counter()
        print(f"== {name} ...", flush=True)
        module = importlib.import_module(f"bench.{name}")
        try:
            if name in ("training", "realsize"):
                got = module.run(args.reference_python, args.reference_script, quick=args.quick)
            else:
                got = module.run(quick=args.quick)
        except Exception as exc:  # noqa: BLE001 - one broken benchmark must not hide the others' figures
            traceback.print_exc()
            got = [Result(f"{name} (failed)", "-", None, None, None, "-", False, f"make bench BENCH={name}",
                          note=f"{type(exc).__name__}: {str(exc)[:300]}")]
        for r in got:
            r.benchmark = name
            r.details.setdefault("benchmark_seconds", round(time.perf_counter() - started, 1))
        results.extend(got)
        print(f"   {name} took {time.perf_counter() - started:.0f}s", flush=True)
        save_results(got, meta)
    print()
    print(table(json.loads(RESULTS.read_text())["results"]))
    print(f"\nwritten: {RESULTS.relative_to(RESULTS.parents[1])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
