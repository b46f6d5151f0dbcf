"""``loramill.logs``: transformers' and diffusers' own log lines come out as our JSON, without the set-up
importing them (diffusers pulls in torch, seconds before a worker's first job)."""

from __future__ import annotations

import json
import subprocess
import sys

# A fresh interpreter: in the test process the libraries are usually imported already.
SCRIPT = """
import sys
from loramill.logs import configure_logging
configure_logging("INFO", "json")
print("IMPORTED", sorted(m for m in ("torch", "diffusers", "transformers") if m in sys.modules), flush=True)
from diffusers.utils import logging as diffusers_logging
from transformers.utils import logging as transformers_logging
diffusers_logging.get_logger("diffusers.pipelines.test").warning("from diffusers")
transformers_logging.get_logger("transformers.test").warning("from transformers")
"""


def test_route_hf_library_logs_as_json_without_importing_them() -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300, check=True)
    assert "IMPORTED []" in done.stdout
    lines = [line for line in done.stderr.splitlines() if "from diffusers" in line or "from transformers" in line]
    assert len(lines) == 2, done.stderr  # once each: the libraries' own plain stderr handler wrote nothing
    records = [json.loads(line) for line in lines]
    assert {r["logger"] for r in records} == {"diffusers.pipelines.test", "transformers.test"}
    assert all(r["level"] == "warning" for r in records)
