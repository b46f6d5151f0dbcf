"""``loramill evaluate``: how faithful a LoRA is to its references and how much of the base it keeps."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from loramill.errors import InvalidInput


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="score a LoRA: fidelity, preservation, loss", description=__doc__)
    p.add_argument("lora", type=Path, help="the LoRA (.safetensors, kohya or diffusers layout)")
    p.add_argument("--model", required=True, help="the base model it was trained on (diffusers folder or file)")
    p.add_argument("--family", choices=["sd15", "sdxl", "flux"], help="model family (default: detected)")
    p.add_argument("--references", required=True, type=Path,
                   help="the subject's images (the training set, or held-out photos), captions beside them")
    p.add_argument("--trigger", help="trigger word (default: the one recorded in the LoRA's metadata)")
    p.add_argument("--clip", help="a CLIP model folder (transformers CLIPModel) for the CLIP metrics")
    p.add_argument("--subject", choices=["face", "object", "style"],
                   help="face: also face identity fidelity (needs loramill[faces])")
    p.add_argument("--domain", choices=["shapes"], help="a domain with a scorer: the reference world's shapes")
    p.add_argument("--prompt", action="append", default=[], help="a trigger prompt (repeatable; default: the "
                   "references' captions)")
    p.add_argument("--preservation-prompt", action="append", default=[],
                   help="a prompt without the trigger (repeatable; default: a few general ones)")
    p.add_argument("--resolution", type=int, default=512, help="render side in pixels (default 512)")
    p.add_argument("--steps", type=int, default=20, help="sampler steps per render (default 20)")
    p.add_argument("--seeds", type=int, default=2, help="renders per prompt, seeds 0..N-1 (default 2)")
    p.add_argument("--json", type=Path, dest="json_out", help="also write the metrics to this file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from loramill.engine.evaluation.evaluate import Evaluator, config_from_references
    from loramill.engine.evaluation.sampling import RenderSettings
    from loramill.engine.families import detect_family, get_family
    from loramill.engine.lora.files import read_lora
    from loramill.engine.training.data import load_examples

    # 1. Check inputs: the LoRA file, the model's family, the references.
    lora = read_lora(args.lora)
    trigger = args.trigger or lora.metadata.get("loramill.trigger_word")
    if not trigger:
        raise InvalidInput(f"{args.lora} records no trigger word; pass --trigger", field="trigger")
    family_name = detect_family(args.model, args.family)
    if family_name is None:
        raise InvalidInput(f"--model {args.model}: not an SD 1.5, SDXL or FLUX.1 pipeline; pass --family",
                           field="model")
    if not 1 <= args.seeds <= 16 or not 1 <= args.steps <= 200:
        raise InvalidInput("--seeds must be 1-16 and --steps 1-200", field="seeds")
    family = get_family(family_name)
    references = load_examples(str(args.references), trigger=trigger, resolution=args.resolution,
                               multiple=family.RESOLUTION_MULTIPLE)
    # 2. Model and LoRA.
    pipe = family.load_pipeline(args.model)
    pipe.load_lora_weights({k: v.clone() for k, v in lora.tensors.items()})
    # 3. Measure and report.
    options: dict[str, Any] = dict(clip=args.clip, subject=args.subject, domain=args.domain,
                                   render=RenderSettings(steps=args.steps, side=args.resolution,
                                                         seeds=tuple(range(args.seeds))))
    if args.preservation_prompt:
        options["preservation_prompts"] = args.preservation_prompt
    config = config_from_references(references, **options)
    if args.prompt:
        config.prompts = args.prompt
    metrics = Evaluator(pipe, family, config).evaluate().metrics
    print(metrics_table(metrics))
    report = {"lora": str(args.lora), "model": args.model, "trigger": trigger, "metrics": metrics}
    print(json.dumps(report))
    if args.json_out:
        args.json_out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


def metrics_table(metrics: dict[str, float]) -> str:
    """The metrics as aligned rows: name, with the LoRA, the base model's value where there is one."""
    from loramill.engine.evaluation.selection import METRICS

    rows = [("metric", "lora", "base", "better")]
    for name, value in metrics.items():
        if name.endswith("_base"):
            continue
        base = metrics.get(f"{name}_base")
        better = "higher" if METRICS.get(name, (True, ""))[0] else "lower"
        rows.append((name, f"{value:.4f}", "" if base is None else f"{base:.4f}", better))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)
