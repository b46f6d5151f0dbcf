"""The layers import downwards only: domain ← engine ← adapters ← jobs ← gateway / cli.

Read from the source with ``ast`` (nothing is imported), so a forbidden import is caught even when it
sits inside a function or behind ``TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import loramill

PACKAGE = Path(loramill.__file__).parent
FORBIDDEN = {
    "domain": ("loramill.engine", "loramill.adapters", "loramill.jobs", "loramill.gateway", "loramill.cli",
               "loramill.config"),
    "engine": ("loramill.adapters", "loramill.jobs", "loramill.gateway", "loramill.cli", "loramill.config"),
    "adapters": ("loramill.jobs", "loramill.gateway", "loramill.cli"),
}


def imported_modules(path: Path, root: Path = PACKAGE.parent) -> set[str]:
    """Every absolute module name ``path`` (under ``root``) imports, relative imports resolved."""
    module = ".".join(path.relative_to(root).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            names.update(f"{base}.{alias.name}" for alias in node.names)
            names.add(base)
    return names


def test_imported_modules_sees_relative_and_local_imports(tmp_path: Path) -> None:
    path = tmp_path / "loramill" / "adapters" / "store" / "x.py"
    path.parent.mkdir(parents=True)
    path.write_text("from ...jobs import worker\nfrom . import models\n"
                    "def f():\n    import loramill.gateway.serve\n")

    assert {"loramill.jobs.worker", "loramill.adapters.store.models",
            "loramill.gateway.serve"} <= imported_modules(path, tmp_path)


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_imports_nothing_above_it(layer: str) -> None:
    offenders = sorted(
        f"{path.relative_to(PACKAGE.parent)} imports {name}"
        for path in (PACKAGE / layer).rglob("*.py")
        for name in imported_modules(path)
        if any(name == above or name.startswith(above + ".") for above in FORBIDDEN[layer]))

    assert offenders == []


def test_job_contracts_and_api_load_without_torch() -> None:
    # A gateway only checks jobs: the option spec's choice tables must not pull in torch (a second of start-up).
    import subprocess
    import sys

    code = ("import sys, loramill.jobs.contracts, loramill.gateway.api.main; "
            "print(sorted(m for m in ('torch', 'diffusers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"
