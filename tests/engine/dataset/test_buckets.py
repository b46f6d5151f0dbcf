"""Aspect buckets: portrait, landscape and square go to different buckets, never upscaled."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from loramill.engine.dataset.buckets import bucket_batches, choose_bucket, make_buckets
from loramill.engine.dataset.config import DatasetConfig
from loramill.engine.dataset.prepare import prepare_dataset

from .conftest import photo

SETTINGS = {"resolution": 512, "min_side": 256, "max_side": 1024, "step": 64}


def test_make_buckets_like_kohya() -> None:
    buckets = make_buckets(512, 256, 1024, 64)
    assert (512, 512) in buckets and (384, 640) in buckets and (640, 384) in buckets and (256, 1024) in buckets
    assert all(w * h <= 512 * 512 and w % 64 == 0 and h % 64 == 0 for w, h in buckets)


def test_prepare_puts_portrait_landscape_square_in_different_buckets(tmp_path: Path, config: DatasetConfig) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    base = photo("astronaut")
    base.resize((600, 900)).save(folder / "portrait.png")
    photo("coffee").resize((900, 600)).save(folder / "landscape.png")
    photo("rocket").resize((700, 700)).save(folder / "square.png")
    photo("chelsea").resize((300, 200)).save(folder / "small_landscape.png")
    report = prepare_dataset([str(folder)], tmp_path / "out",
                             replace(config, resolution=512, bucket=True, bucket_min_side=128,
                                     bucket_max_side=1024, min_side=128))
    buckets = {Path(k.source).stem: k.bucket for k in report.kept}
    assert buckets["portrait"][0] < buckets["portrait"][1]  # type: ignore[index]
    assert buckets["landscape"][0] > buckets["landscape"][1]  # type: ignore[index]
    assert buckets["square"] == (512, 512)
    assert buckets["small_landscape"] == (256, 192)  # its own size rounded down: no upscaling
    assert len(set(buckets.values())) == 4
    for kept in report.kept:
        assert kept.final_size == kept.bucket
        assert kept.final_size[0] <= kept.original_size[0] and kept.final_size[1] <= kept.original_size[1]
        assert Image.open(tmp_path / "out" / kept.file).size == kept.bucket
    assert len(report.bucket_counts) == 4


@settings(max_examples=300, deadline=None)
@given(st.integers(64, 6000), st.integers(64, 6000))
def test_choose_bucket_never_upscales_and_respects_step(width: int, height: int) -> None:
    bucket = choose_bucket((width, height), **SETTINGS)
    assert bucket[0] % 64 == 0 and bucket[1] % 64 == 0
    assert bucket[0] <= max(64, width) and bucket[1] <= max(64, height)
    assert bucket[0] * bucket[1] <= 512 * 512
    assert bucket[0] <= 1024 and bucket[1] <= 1024


@settings(max_examples=200, deadline=None)
@given(st.integers(256, 6000), st.integers(256, 6000))
def test_choose_bucket_keeps_orientation(width: int, height: int) -> None:
    # below 3:2 a small image may round to a square: 256×312 has no 64-step bucket but 256×256
    bucket = choose_bucket((width, height), **SETTINGS)
    if width >= height * 1.5:
        assert bucket[0] > bucket[1]
    if height >= width * 1.5:
        assert bucket[1] > bucket[0]
    if width == height:
        assert bucket[0] == bucket[1]


def test_choose_bucket_with_upscale_uses_predefined_buckets() -> None:
    assert choose_bucket((300, 200), **SETTINGS, upscale=True) in make_buckets(512, 256, 1024, 64)


@dataclass
class Item:
    name: str
    size: tuple[int, int] | None


def test_bucket_batches_never_mix_buckets() -> None:
    items = [Item(f"p{i}", (384, 640)) for i in range(5)] + [Item(f"l{i}", (640, 384)) for i in range(3)]
    items += [Item("default", None)]
    batches = bucket_batches(items, 2, seed=1, default_size=(512, 512))
    assert all(len({item.size for item in batch}) == 1 for batch in batches)
    assert sorted(item.name for batch in batches for item in batch) == sorted(item.name for item in items)
    assert batches == bucket_batches(items, 2, seed=1, default_size=(512, 512))  # same seed, same order
