"""``loramill serve`` with the engine's generation replaced by an instant function — for the overhead benchmark only.

Everything else is what users run: the API, the broker, the worker's claim / store / upload / publish /
ack, the job store's status machine. Only ``Generator.generate`` (the denoising) and the base model
load are stubbed, so what is left to time is the orchestration.

    python -m bench.orchestration_server serve --port PORT --workers N --broker sql|kafka|rabbitmq
"""

from __future__ import annotations

import sys
from typing import Any


class InstantGenerator:
    """Stands in for ``loramill.engine.generation.generate.Generator``: grey images, at once. It plans
    and batches like the real one (the worker's ``GenerationBatcher`` calls ``plan``, ``batch_key``,
    ``can_batch`` and ``generate_batch``); only the denoising is gone."""

    family_name = "sd15"
    adapters = None
    model = "instant"

    def plan(self, request: Any) -> Any:
        from loramill.engine.generation.generate import Generator

        return Generator.plan(self, request)  # type: ignore[arg-type]

    def batch_key(self, plan: Any) -> Any:
        return plan.batch_key

    def can_batch(self, plans: list[Any]) -> bool:
        return len({p.batch_key for p in plans}) == 1

    def fit_together(self, plans: list[Any]) -> bool:
        return True

    def generate_batch(self, plans: list[Any], progress: Any = None) -> list[list[Any]]:
        from PIL import Image

        from loramill.engine.generation.generate import GeneratedImage

        return [[GeneratedImage(Image.new("RGB", (p.width, p.height), (128, 128, 128)), p.seed + i, "instant")
                 for i in range(p.num_images)] for p in plans]

    def generate(self, request: Any, progress: Any = None) -> list[Any]:
        return self.generate_batch([self.plan(request)], progress)[0]


def main() -> int:
    from loramill.cli import main as cli_main
    from loramill.jobs.handlers import models

    instant = InstantGenerator()
    models.ResidentModels.generator = lambda self, model: instant  # type: ignore[assignment,method-assign]
    return cli_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
