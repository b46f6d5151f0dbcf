"""manifest.json: what a prepared dataset holds, where every image came from, and what was left out why."""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loramill import __version__
from loramill.errors import InvalidInput

if TYPE_CHECKING:
    from loramill.engine.dataset.config import DatasetConfig
    from loramill.engine.dataset.report import DatasetReport

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "loramill-dataset"
MANIFEST_VERSION = 1


def manifest_document(report: DatasetReport, config: DatasetConfig) -> dict[str, Any]:
    """The manifest as plain JSON data (pure; ``write_manifest`` saves it)."""
    return {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "loramill": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": config.to_dict(),
        "images": [_image_entry(asdict(kept)) for kept in report.kept],
        "rejected": [asdict(r) for r in report.rejected],
        "buckets": report.bucket_counts,
        "warnings": report.warnings,
        "identity": report.identity.to_dict() if report.identity is not None else None,
    }


def write_manifest(out_dir: Path, report: DatasetReport, config: DatasetConfig) -> Path:
    """Write ``out_dir/manifest.json`` and return its path."""
    path = out_dir / MANIFEST_NAME
    path.write_text(json.dumps(manifest_document(report, config), indent=2, ensure_ascii=False), encoding="utf-8")
    return path


def read_manifest(path: Path) -> dict[str, Any]:
    """A manifest written by ``write_manifest``; ``InvalidInput`` naming the file when it is not one."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"{path} is not a readable manifest.json ({exc})", code="invalid_dataset",
                           field="dataset") from None
    if not isinstance(document, dict) or document.get("format") != MANIFEST_FORMAT:
        raise InvalidInput(f"{path} is not a loramill dataset manifest (no \"format\": \"{MANIFEST_FORMAT}\")",
                           code="invalid_dataset", field="dataset")
    if int(document.get("version", 0)) > MANIFEST_VERSION:
        raise InvalidInput(f"{path} was written by a newer loramill (manifest version {document['version']}); "
                           "upgrade loramill to read it", code="invalid_dataset", field="dataset")
    return document


def _image_entry(entry: dict[str, Any]) -> dict[str, Any]:
    # tuples become lists in JSON anyway; spelling it out keeps the file's shape obvious
    for key in ("original_size", "final_size", "bucket", "crop"):
        if entry.get(key) is not None:
            entry[key] = list(entry[key])
    return entry
