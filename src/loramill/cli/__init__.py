"""The ``loramill`` command. Each sub-command lives in its own module with a ``register(subparsers)``.

Sub-command modules are imported lazily by name so ``loramill --help`` stays fast and a missing
optional dependency of one command never breaks the others.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from loramill import __version__
from loramill.errors import LoramillError

# command name -> module under loramill.cli that registers it
COMMANDS: dict[str, str] = {
    "models": "models",
    "train": "train",
    "plan": "plan",
    "generate": "generate",
    "dataset": "dataset",
    "worker": "worker",
    "serve": "serve",
    "keys": "keys",
    "bot": "bot",
    "evaluate": "evaluate",
}


DESCRIPTION = ("Train LoRA adapters for Stable Diffusion 1.5, SDXL and FLUX.1 from a few images, and generate\n"
               "images with them: from the command line, or as a service (HTTP API, web page, Telegram bot,\n"
               "queue workers).")
EPILOG = """examples:
  loramill models tiny sd15 tiny-sd15                  a tiny random model to try things with
  loramill train --model tiny-sd15 --images photos/ --trigger sks --out sks.safetensors
  loramill generate --model tiny-sd15 --prompt "a portrait of sks" --lora sks.safetensors:0.9
  loramill serve                                       API, web page and a worker on http://127.0.0.1:8080

`loramill COMMAND --help` describes each command; docs/configuration.md lists every setting."""


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loramill", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"loramill {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in COMMANDS.items():
        if only is not None and name != only:
            sub.add_parser(name, help=f"see `loramill {name} --help`")
            continue
        try:
            mod = importlib.import_module(f"loramill.cli.{module}")
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("loramill.cli."):
                continue  # command not built yet
            raise
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    first = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(only=first if first in COMMANDS else None)
    args = parser.parse_args(argv)
    args.argv = argv  # a command may re-run itself as several processes (train --processes)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except LoramillError as exc:
        print(f"error [{exc.code}]: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
