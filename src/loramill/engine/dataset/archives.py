"""Reading images out of zip archives without trusting the archive.

Nothing is ever extracted to disk under an entry's name: entries are read into memory and the dataset
names its own files, so ``../`` or absolute entry names cannot write anywhere. They are still refused
and reported, because an archive carrying them is not an honest upload. Zip bombs are capped by entry
count and by uncompressed bytes — both as the archive declares them and as actually read.
"""

from __future__ import annotations

import io
import posixpath
import re
import stat
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from loramill.engine.dataset.report import Rejected, Rejection

CAPTION_EXTENSIONS = (".txt", ".caption")
MAX_CAPTION_BYTES = 64 * 1024


@dataclass
class SourceFile:
    """One candidate image: a name for reports, a reader that may raise ``Rejected``, and its caption if any."""

    name: str
    read: Callable[[], bytes]
    caption: Callable[[], str | None] = field(default=lambda: None)


@dataclass
class ArchiveContents:
    files: list[SourceFile] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    archive: zipfile.ZipFile | None = None  # kept open while files are read; the caller closes it


def unsafe_member_name(name: str) -> str | None:
    """Why an entry name could escape an extraction folder, or None when it is a plain relative path."""
    if "\x00" in name:
        return "has a NUL byte"
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return "is an absolute path"
    if any(part == ".." for part in re.split(r"[\\/]", name)):
        return "has a '..' segment"
    return None


def is_skipped_name(name: str) -> bool:
    """macOS and hidden metadata that travels inside archives and folders; never a user's image."""
    parts = [p for p in re.split(r"[\\/]", name) if p]
    return any(p.startswith(".") or p == "__MACOSX" or p == "Thumbs.db" for p in parts)


def read_archive(label: str, source: Path | bytes, *, max_entries: int, max_bytes: int,
                 max_file_bytes: int) -> ArchiveContents:
    """Candidate images (with their .txt captions) inside a zip, and every entry refused with why."""
    contents = ArchiveContents()
    try:
        archive = zipfile.ZipFile(io.BytesIO(source) if isinstance(source, bytes) else source)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        contents.rejected.append(Rejection(label, "bad_archive", f"not a readable zip ({exc})"))
        return contents
    infos = archive.infolist()
    declared = sum(info.file_size for info in infos)
    if len(infos) > max_entries or declared > max_bytes:
        archive.close()
        contents.rejected.append(Rejection(label, "zip_bomb", f"{len(infos):,} entries, {declared:,} bytes "
                                 f"uncompressed; the caps are {max_entries:,} entries (zip_max_entries) and "
                                 f"{max_bytes:,} bytes (zip_max_bytes)"))
        return contents
    contents.archive = archive
    budget = _Budget(max_bytes)
    captions: dict[str, zipfile.ZipInfo] = {}
    images: list[zipfile.ZipInfo] = []
    for info in infos:
        name = info.filename
        entry = f"{label}!{name}"
        why = unsafe_member_name(name)
        if why is None and stat.S_ISLNK(info.external_attr >> 16):
            why = "is a symbolic link"
        if why:
            contents.rejected.append(Rejection(entry, "unsafe_path", f"archive entry {why}; refused, not extracted"))
        elif info.is_dir() or is_skipped_name(name):
            continue
        elif info.flag_bits & 0x1:
            contents.rejected.append(Rejection(entry, "bad_archive", "the entry is encrypted"))
        elif name.lower().endswith(".zip"):
            contents.rejected.append(Rejection(entry, "nested_archive", "zip inside a zip; unpack it first"))
        elif name.lower().endswith(CAPTION_EXTENSIONS):
            captions.setdefault(posixpath.splitext(name)[0], info)
        else:
            images.append(info)
    for info in images:
        sidecar = captions.get(posixpath.splitext(info.filename)[0])
        contents.files.append(SourceFile(
            f"{label}!{info.filename}",
            read=_member_reader(archive, info, min(max_file_bytes, info.file_size), budget),
            caption=_caption_reader(archive, sidecar, budget)))
    return contents


class _Budget:
    """Uncompressed bytes actually read from one archive, against its cap."""

    def __init__(self, limit: int) -> None:
        self.limit, self.used = limit, 0

    def spend(self, n: int) -> None:
        self.used += n
        if self.used > self.limit:
            raise Rejected("zip_bomb", f"the archive inflates past {self.limit:,} bytes (zip_max_bytes)")


def _member_reader(archive: zipfile.ZipFile, info: zipfile.ZipInfo, cap: int, budget: _Budget) -> Callable[[], bytes]:
    def read() -> bytes:
        if info.file_size > cap:
            raise Rejected("too_large", f"{info.file_size:,} bytes uncompressed, over the {cap:,}-byte cap "
                           "(max_file_bytes)")
        chunks, size = [], 0
        try:
            with archive.open(info) as member:
                while chunk := member.read(1 << 16):
                    size += len(chunk)
                    budget.spend(len(chunk))
                    if size > cap:  # the declared size lied
                        raise Rejected("zip_bomb", f"the entry inflates past its declared {info.file_size:,} bytes")
                    chunks.append(chunk)
        except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, RuntimeError) as exc:
            raise Rejected("bad_archive", f"the entry cannot be read ({exc})") from None
        return b"".join(chunks)

    return read


def _caption_reader(archive: zipfile.ZipFile, info: zipfile.ZipInfo | None,
                    budget: _Budget) -> Callable[[], str | None]:
    def read() -> str | None:
        if info is None or info.file_size > MAX_CAPTION_BYTES:
            return None
        try:
            with archive.open(info) as member:
                data = member.read(MAX_CAPTION_BYTES + 1)[:MAX_CAPTION_BYTES]
        except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, RuntimeError):
            return None
        budget.spend(len(data))
        return data.decode("utf-8", errors="replace")

    return read
