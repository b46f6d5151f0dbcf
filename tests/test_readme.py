"""The README's service walkthrough runs as written: copied out of README.md and run by bash, with only the
port changed (8080 may be taken on a shared machine)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from PIL import Image

from tests.services.common import free_port

README = Path(__file__).resolve().parents[1] / "README.md"


def walkthrough() -> str:
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    [block] = [b for b in blocks if b.startswith("source .venv/bin/activate")]
    return block


def test_readme_service_walkthrough_runs_as_written(tmp_path: Path) -> None:
    (tmp_path / ".venv").symlink_to(Path(sys.prefix))  # what `make` leaves at the repository root
    script = "set -euo pipefail\n" + walkthrough().replace("8080", str(free_port()))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LORAMILL_", "KAFKA_", "S3_", "RABBITMQ_"))}

    done = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)

    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert '"status":"completed"' in done.stdout  # the training's event stream, followed to its end
    with Image.open(tmp_path / "portrait.png") as image:
        assert image.size == (64, 64)
    assert not list((tmp_path / ".loramill-walkthrough").glob("*.db-journal"))
