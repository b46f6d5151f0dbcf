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
    """Stands in for ``loramill.engine.generation.generate.Generator``: a grey image, at once."""

    family_name = "sd15"
    adapters = None

    def generate(self, request: Any, progress: Any = None) -> list[Any]:
        from PIL import Image

        from loramill.engine.generation.generate import GeneratedImage

        size = (request.width or 64, request.height or 64)
        return [GeneratedImage(Image.new("RGB", size, (128, 128, 128)), request.seed + i, "instant")
                for i in range(request.num_images)]


def main() -> int:
    from loramill.cli import main as cli_main
    from loramill.jobs.handlers import models

    instant = InstantGenerator()
    models.ResidentModels.generator = lambda self, model: instant  # type: ignore[assignment,method-assign]
    return cli_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
