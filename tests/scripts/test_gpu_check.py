"""scripts/gpu-check.sh --dry-run: every GPU-check case planned and its options checked, without CUDA."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_gpu_check_dry_run_plans_every_case_and_checks_its_options():
    done = subprocess.run(["bash", str(REPO / "scripts" / "gpu-check.sh"), "--dry-run"], capture_output=True,
                          text=True, timeout=900, env={**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ") and not line.startswith("| case")]
    assert len(rows) == 9, done.stdout
    for row in rows:
        case, _, _, plan, note = [cell.strip() for cell in row.strip("|").split("|")]
        assert float(plan) > 0.5, row
        assert note.startswith(("tiny-model CPU run ok", "refused on CPU as expected: --quantize-base nf4 needs a CUDA")), row
    assert any("flux 1024px bf16" in row and "quantize_base=int8" in row for row in rows)
