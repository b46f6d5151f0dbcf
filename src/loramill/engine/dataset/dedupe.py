"""Exact and near-duplicate detection: SHA-256 of the bytes, and 64-bit dHash + pHash of the pixels.

A near duplicate (the same photo resized, recompressed or re-saved) counts twice in every epoch and
pulls the LoRA towards that one picture. Two hashes must both agree before an image is called a near
duplicate: pHash alone confuses different objects on the same plain background, dHash alone is
fooled by recompression less often but by brightness changes more.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from PIL import Image


def dhash(image: Image.Image) -> int:
    """Difference hash (Krawetz): is each pixel of a 9×8 greyscale thumbnail brighter than its right neighbour."""
    small = np.asarray(image.convert("L").resize((9, 8), Image.Resampling.LANCZOS), dtype=np.int16)
    return _bits_to_int(small[:, 1:] > small[:, :-1])


def phash(image: Image.Image) -> int:
    """Perceptual hash (Zauner 2010): signs of the 8×8 lowest DCT frequencies of a 32×32 thumbnail vs their median."""
    small = np.asarray(image.convert("L").resize((32, 32), Image.Resampling.LANCZOS), dtype=np.float64)
    basis = _dct_matrix(32)
    coefficients = (basis @ small @ basis.T)[:8, :8]
    # the DC term is the mean brightness: it carries no structure and would skew the median
    median = np.median(coefficients.flatten()[1:])
    return _bits_to_int(coefficients > median)


def hamming(a: int, b: int) -> int:
    """Number of differing bits."""
    return (a ^ b).bit_count()


@dataclass
class DuplicateIndex:
    """The images kept so far; answers "is this one already in?" by bytes and by looks."""

    max_distance: int = 6
    _by_sha: dict[str, str] = field(default_factory=dict)
    _names: list[str] = field(default_factory=list)
    _phashes: list[int] = field(default_factory=list)
    _dhashes: list[int] = field(default_factory=list)

    def exact(self, sha256: str) -> str | None:
        """The source already kept with these exact bytes, if any."""
        return self._by_sha.get(sha256)

    def near(self, p: int, d: int) -> tuple[str, int] | None:
        """The closest kept image within ``max_distance`` on both hashes, with its pHash distance."""
        if self.max_distance <= 0 or not self._names:
            return None
        pd = _distances(np.array(self._phashes, dtype=np.uint64), p)
        dd = _distances(np.array(self._dhashes, dtype=np.uint64), d)
        close = np.flatnonzero((pd <= self.max_distance) & (dd <= self.max_distance * 2))
        if close.size == 0:
            return None
        best = int(close[np.argmin(pd[close])])
        return self._names[best], int(pd[best])

    def add(self, name: str, sha256: str, p: int, d: int) -> None:
        self._by_sha.setdefault(sha256, name)
        self._names.append(name)
        self._phashes.append(p)
        self._dhashes.append(d)


def _distances(hashes: np.ndarray, value: int) -> np.ndarray:
    # vectorised popcount so 10,000 kept images still compare in microseconds
    xor = hashes ^ np.uint64(value)
    as_bytes = xor.view(np.uint8).reshape(-1, 8)
    return np.unpackbits(as_bytes, axis=1).sum(axis=1)


def _bits_to_int(bits: np.ndarray) -> int:
    value = 0
    for bit in bits.flatten():
        value = (value << 1) | int(bit)
    return value


@lru_cache(maxsize=4)
def _dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II basis: row k is cos(pi (2i + 1) k / 2n), scaled."""
    i = np.arange(n)
    k = i.reshape(-1, 1)
    basis = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    basis[0] /= np.sqrt(2.0)
    return basis
