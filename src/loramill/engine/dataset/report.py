"""What a dataset preparation kept, rejected and warned about, and the one-screen summary of it.

Rejection reason codes are short stable strings: the CLI prints them, the worker puts them in failed
events and users grep for them, so a code is never renamed once shipped.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from loramill.engine.dataset.identity import IdentitySpread
    from loramill.engine.dataset.items import DatasetItem

# code -> what it means for the user (the summary prints the code; the message says the specifics)
REASONS: dict[str, str] = {
    "not_an_image": "not a decodable image (or a format loramill does not read)",
    "truncated": "the image data stops early (an interrupted upload or copy)",
    "corrupt": "the image data is damaged and cannot be decoded",
    "too_many_pixels": "more pixels than --max-pixels (a decompression bomb or a huge scan)",
    "too_small": "shorter side below --min-side",
    "too_large": "file or download larger than the byte cap",
    "duplicate": "byte-identical to an image already kept",
    "near_duplicate": "visually the same as an image already kept (perceptual hash)",
    "no_face": "face mode found no face",
    "other_person": "face mode: the face is not the person most of the photos show",
    "download_failed": "the URL could not be downloaded",
    "blocked_address": "the URL points at a loopback, private, link-local or metadata address",
    "unsafe_path": "an archive entry with an absolute or '..' path, or a link",
    "zip_bomb": "an archive over the entry-count or uncompressed-size cap",
    "bad_archive": "a .zip that cannot be read",
    "nested_archive": "an archive inside an archive (not opened, on purpose)",
    "missing_key": "a storage key that does not exist",
}


class Rejected(Exception):
    """Raised by a per-file check: this file is left out for ``code`` and the rest go on."""

    def __init__(self, code: str, message: str) -> None:
        if code not in REASONS:
            raise ValueError(f"unknown rejection code {code!r}; add it to REASONS")
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class Rejection:
    """One file left out: where it came from, the stable reason code and a human message."""

    source: str
    reason: str
    message: str

    def line(self) -> str:
        return f"{self.source}: {self.reason} — {self.message}"


@dataclass
class KeptImage:
    """One image written to the dataset and everything the manifest records about it."""

    file: str  # path relative to the dataset folder, e.g. images/0001_me.png
    source: str
    sha256: str  # of the source bytes
    phash: str  # 16 hex digits
    original_size: tuple[int, int]  # upright (after EXIF orientation), (width, height)
    final_size: tuple[int, int]
    bucket: tuple[int, int] | None
    caption: str
    caption_source: str  # "file" (a .txt beside the image) or the captioner's name
    crop: tuple[int, int, int, int] | None = None  # (left, top, right, bottom) in the upright original
    exif_rotated: bool = False
    warnings: list[str] = field(default_factory=list)


@dataclass
class DatasetReport:
    """The outcome of ``prepare_dataset``: kept images, rejections, bucket counts and warnings."""

    out_dir: Path
    kept: list[KeptImage] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    identity: IdentitySpread | None = None  # face mode with loramill[faces]: who the photos show

    @property
    def bucket_counts(self) -> dict[str, int]:
        """``{"512x768": 3, ...}``; images framed without buckets count under their final size."""
        counts = Counter(_size_key(k.bucket or k.final_size) for k in self.kept)
        return dict(sorted(counts.items()))

    def items(self) -> list[DatasetItem]:
        """The kept images as training items (the same list ``load_dataset(out_dir)`` returns)."""
        from loramill.engine.dataset.items import DatasetItem

        return [DatasetItem(self.out_dir / k.file, k.caption, k.bucket) for k in self.kept]

    @property
    def rejected_by_reason(self) -> dict[str, int]:
        return dict(Counter(r.reason for r in self.rejected).most_common())

    def summary(self) -> str:
        """A short text for people: kept, rejected by reason, buckets, warnings."""
        lines = [f"kept {len(self.kept)} image(s) in {self.out_dir}"]
        if self.rejected:
            by_reason = ", ".join(f"{code} {n}" for code, n in self.rejected_by_reason.items())
            lines.append(f"rejected {len(self.rejected)}: {by_reason}")
            lines.extend(f"  {r.line()}" for r in self.rejected[:20])
            if len(self.rejected) > 20:
                lines.append(f"  … and {len(self.rejected) - 20} more (see manifest.json)")
        else:
            lines.append("rejected 0")
        buckets = ", ".join(f"{key} ×{n}" for key, n in self.bucket_counts.items())
        lines.append(f"buckets: {buckets or 'none'}")
        if self.identity is not None:
            lines.append(self.identity.line())
        warnings = self.warnings + [f"{k.source}: {w}" for k in self.kept for w in k.warnings]
        if warnings:
            lines.append(f"warnings ({len(warnings)}):")
            lines.extend(f"  {w}" for w in warnings[:20])
            if len(warnings) > 20:
                lines.append(f"  … and {len(warnings) - 20} more (see manifest.json)")
        return "\n".join(lines)


def _size_key(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


def rejection_list(rejected: list[Rejection], limit: int = 50) -> str:
    """The rejected files as lines for an error message, capped so a 10,000-file failure stays readable."""
    lines = [f"  {r.line()}" for r in rejected[:limit]]
    if len(rejected) > limit:
        lines.append(f"  … and {len(rejected) - limit} more")
    return "\n".join(lines)
