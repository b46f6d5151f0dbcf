"""``loramill --help`` speaks to users: what the tool does, its commands and examples, no developer notes."""

from __future__ import annotations

import subprocess
import sys


def test_help_describes_tool_and_commands_for_users() -> None:
    shown = subprocess.run([sys.executable, "-m", "loramill", "--help"], capture_output=True, text=True, timeout=60)

    assert shown.returncode == 0
    assert shown.stdout.splitlines()[2].startswith("Train LoRA adapters")
    assert "register(" not in shown.stdout and "lazily" not in shown.stdout
    for command in ("train", "generate", "serve", "worker", "bot", "keys"):
        assert f"\n    {command} " in shown.stdout
    assert "examples:" in shown.stdout
