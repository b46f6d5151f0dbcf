"""Aspect-ratio buckets, the way kohya sd-scripts makes them, and batches drawn from one bucket at a time.

A bucket is a (width, height) of about ``resolution²`` pixels with both sides multiples of ``step``.
A portrait photo goes to a tall bucket instead of losing its head and feet to a square centre crop.
Without upscaling (kohya's ``bucket_no_upscale``), an image smaller than the area gets its own bucket:
its size rounded down to ``step``, so nothing is ever enlarged.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Sequence
from typing import Protocol, TypeVar

Size = tuple[int, int]


def make_buckets(resolution: int, min_side: int, max_side: int, step: int) -> list[Size]:
    """kohya's ``make_bucket_resolutions``: every (w, h) with w·h <= resolution², sides in [min_side, max_side]."""
    max_area = resolution * resolution
    square = int(math.sqrt(max_area) // step * step)
    buckets = {(square, square)}
    width = min_side
    while width <= max_side:
        height = min(max_side, int((max_area // width) // step * step))
        if height >= min_side:
            buckets.add((width, height))
            buckets.add((height, width))
        width += step
    return sorted(buckets)


def choose_bucket(size: Size, *, resolution: int, min_side: int, max_side: int, step: int,
                  upscale: bool = False) -> Size:
    """The bucket for an image of ``size`` (kohya's ``select_bucket``; aspect clamped to what the sides allow)."""
    width, height = size
    # an aspect the bucket sides cannot express (a 10:1 panorama) is cropped to the widest they can
    aspect = min(max(width / height, min_side / max_side), max_side / min_side)
    if upscale:
        buckets = make_buckets(resolution, min_side, max_side, step)
        return min(buckets, key=lambda b: (abs(b[0] / b[1] - aspect), -b[0] * b[1]))
    max_area = resolution * resolution
    if width * height > max_area:
        # shrink to the area keeping the aspect, then round whichever side keeps the aspect best
        resized_w = math.sqrt(max_area * aspect)
        resized_h = max_area / resized_w
        w_round = _round_to(resized_w, step)
        h_in_w = _round_to(w_round / aspect, step)
        h_round = _round_to(resized_h, step)
        w_in_h = _round_to(h_round * aspect, step)
        if h_in_w and abs(w_round / h_in_w - aspect) < abs(w_in_h / max(h_round, 1) - aspect):
            resized = (w_round, int(w_round / aspect + 0.5))
        else:
            resized = (int(h_round * aspect + 0.5), h_round)
    else:
        cropped_w = min(width, int(height * aspect + 0.5))
        resized = (cropped_w, min(height, int(cropped_w / aspect + 0.5)))
    bucket = (resized[0] - resized[0] % step, resized[1] - resized[1] % step)
    # never wider than max_side, never below one step, never larger than the image itself
    return (max(step, min(bucket[0], max_side, width - width % step or step)),
            max(step, min(bucket[1], max_side, height - height % step or step)))


def _round_to(value: float, step: int) -> int:
    rounded = int(value + 0.5)
    return rounded - rounded % step


class _Sized(Protocol):
    size: Size | None


T = TypeVar("T", bound=_Sized)


def bucket_batches(items: Sequence[T], batch_size: int, *, seed: int = 0,
                   default_size: Size | None = None) -> list[list[T]]:
    """Shuffled batches in which every item shares one size: a batch never mixes buckets.

    Items with ``size`` None count as ``default_size``. The last batch of a bucket may be smaller.
    Deterministic for a seed, so a resumed run sees the same order.
    """
    rng = random.Random(seed)
    by_bucket: dict[Size | None, list[T]] = defaultdict(list)
    for item in items:
        by_bucket[item.size or default_size].append(item)
    batches: list[list[T]] = []
    for key in sorted(by_bucket, key=lambda k: (k is None, k or (0, 0))):
        members = list(by_bucket[key])
        rng.shuffle(members)
        batches.extend(members[i:i + batch_size] for i in range(0, len(members), batch_size))
    rng.shuffle(batches)
    return batches
