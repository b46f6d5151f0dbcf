"""Turning the SRC arguments — folders, files, zips, storage keys, URLs — into candidate image files.

Nothing is decoded here and, except for archives that must be listed, nothing is downloaded: each
candidate carries a reader that runs later, under the progress bar, and may raise ``Rejected``. That
way the ``max_images`` cap is checked on the count before any real work.

A source is a storage key only when a ``fetch_key`` is given and the source is neither an existing
path nor a URL; without one, a missing path is an error naming it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from loramill.engine.dataset.archives import (
    CAPTION_EXTENSIONS,
    MAX_CAPTION_BYTES,
    SourceFile,
    is_skipped_name,
    read_archive,
)
from loramill.engine.dataset.fetch import UrlFetcher, is_url
from loramill.engine.dataset.report import Rejected, Rejection
from loramill.errors import InvalidInput, NotFound

if TYPE_CHECKING:
    from loramill.engine.dataset.config import DatasetConfig

FetchKey = Callable[[str], bytes]


@dataclass
class SourceSet:
    """Candidate files in the order given, the sources refused while listing, and open archives to close."""

    files: list[SourceFile] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    resources: ExitStack = field(default_factory=ExitStack)

    def close(self) -> None:
        self.resources.close()


def collect_sources(sources: list[str], config: DatasetConfig, *, fetcher: UrlFetcher,
                    fetch_key: FetchKey | None = None, exclude: Path | None = None) -> SourceSet:
    """Expand every source into candidates; raise ``InvalidInput`` for a source that names nothing.

    ``exclude`` is a folder never walked into (the output folder, when it sits inside a source folder).
    """
    found = SourceSet()
    skip = exclude.resolve() if exclude is not None else None
    for source in sources:
        if is_url(source):
            _add_url(found, source, config, fetcher)
        elif Path(source).is_dir():
            _add_folder(found, Path(source), config, skip)
        elif Path(source).is_file():
            _add_path(found, Path(source), str(source), config)
        elif fetch_key is not None:
            _add_key(found, source, config, fetch_key)
        else:
            found.close()
            raise InvalidInput(f"source {source!r} is not an existing file, folder, zip or http(s) URL; check the path",
                               code="source_not_found", field="sources")
    return found


def _add_folder(found: SourceSet, folder: Path, config: DatasetConfig, skip: Path | None) -> None:
    for root, dirs, files in os.walk(folder):  # does not follow directory links: no loops
        dirs[:] = sorted(d for d in dirs if not is_skipped_name(d) and (Path(root) / d).resolve() != skip)
        for name in sorted(files):
            if is_skipped_name(name) or name.lower().endswith(CAPTION_EXTENSIONS):
                continue
            path = Path(root) / name
            _add_path(found, path, str(path), config)


def _add_path(found: SourceSet, path: Path, label: str, config: DatasetConfig) -> None:
    if path.suffix.lower() == ".zip":
        _add_archive(found, label, path, config)
    else:
        found.files.append(SourceFile(label, read=lambda: _read_capped(path, config.max_file_bytes),
                                      caption=lambda: _sidecar_caption(path)))


def _add_url(found: SourceSet, url: str, config: DatasetConfig, fetcher: UrlFetcher) -> None:
    if url.split("?")[0].lower().endswith(".zip"):
        try:
            data = fetcher.get(url)
        except Rejected as exc:
            found.rejected.append(Rejection(url, exc.code, exc.message))
            return
        _add_archive(found, url, data, config)
    else:
        found.files.append(SourceFile(url, read=lambda: fetcher.get(url)))


def _add_key(found: SourceSet, key: str, config: DatasetConfig, fetch_key: FetchKey) -> None:
    if key.lower().endswith(".zip"):
        try:
            data = _fetch_key(fetch_key, key)
        except Rejected as exc:
            found.rejected.append(Rejection(key, exc.code, exc.message))
            return
        _add_archive(found, key, data, config)
        return

    def caption() -> str | None:
        for ext in CAPTION_EXTENSIONS:
            try:
                return _fetch_key(fetch_key, os.path.splitext(key)[0] + ext)[:MAX_CAPTION_BYTES].decode(
                    "utf-8", errors="replace")
            except Rejected:
                continue
        return None

    found.files.append(SourceFile(key, read=lambda: _fetch_key(fetch_key, key), caption=caption))


def _add_archive(found: SourceSet, label: str, source: Path | bytes, config: DatasetConfig) -> None:
    contents = read_archive(label, source, max_entries=config.zip_max_entries, max_bytes=config.zip_max_bytes,
                            max_file_bytes=config.max_file_bytes)
    if contents.archive is not None:
        found.resources.callback(contents.archive.close)
    found.files.extend(contents.files)
    found.rejected.extend(contents.rejected)


def _fetch_key(fetch_key: FetchKey, key: str) -> bytes:
    # a missing key is this file's problem; any other storage error (outage) stops the whole run
    try:
        return fetch_key(key)
    except (NotFound, FileNotFoundError, KeyError) as exc:
        raise Rejected("missing_key", f"storage key not found ({exc})") from None


def _read_capped(path: Path, cap: int) -> bytes:
    size = path.stat().st_size
    if size > cap:
        raise Rejected("too_large", f"{size:,} bytes, over the {cap:,}-byte cap (max_file_bytes)")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise Rejected("not_an_image", f"cannot read the file ({exc.strerror or exc})") from None


def _sidecar_caption(path: Path) -> str | None:
    """The caption beside an image (``a.jpg`` -> ``a.txt`` or ``a.caption``), kohya's convention."""
    for ext in CAPTION_EXTENSIONS:
        sidecar = path.with_suffix(ext)
        if sidecar.is_file() and sidecar.stat().st_size <= MAX_CAPTION_BYTES:
            return sidecar.read_text(encoding="utf-8", errors="replace")
    return None
