"""``load_dataset``: what training reads — a prepared folder, a kohya dataset.toml, or a plain image folder."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from loramill.engine.dataset.augment import AugmentConfig
from loramill.engine.dataset.buckets import choose_bucket
from loramill.engine.dataset.captions import has_trigger
from loramill.engine.dataset.kohya import KohyaSubset, read_dataset_toml
from loramill.engine.dataset.manifest import MANIFEST_NAME, read_manifest
from loramill.errors import InvalidInput

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclass
class DatasetItem:
    """One training image: its file, its caption, and its (width, height) — None means the training resolution."""

    image_path: Path
    caption: str
    size: tuple[int, int] | None
    repeats: int = 1  # kohya's num_repeats: how often the image counts per epoch


def load_dataset(path: Path, *, trigger_word: str | None = None) -> list[DatasetItem]:
    """Training items from ``path``; captions get ``trigger_word`` prepended where they lack it.

    ``path`` may be a folder made by ``prepare_dataset`` (its manifest.json), a kohya dataset.toml from
    any tool (or a folder holding one), or a plain folder of images with optional .txt captions.
    """
    path = Path(path)
    if path.is_file() and path.suffix.lower() == ".toml":
        items = _from_kohya(path, trigger_word)
    elif path.is_file() and path.name == MANIFEST_NAME:
        items = _from_manifest(path)
    elif path.is_dir() and (path / MANIFEST_NAME).is_file():
        items = _from_manifest(path / MANIFEST_NAME)
    elif path.is_dir() and (path / "dataset.toml").is_file():
        items = _from_kohya(path / "dataset.toml", trigger_word)
    elif path.is_dir():
        items = _from_folder(path, caption_extension=".txt", fallback_caption=trigger_word or "")
    else:
        raise InvalidInput(f"dataset {str(path)!r} is not a folder or a dataset.toml; prepare one with "
                           "`loramill dataset prepare SRC --out DIR`", code="invalid_dataset", field="dataset")
    if not items:
        raise InvalidInput(f"dataset {str(path)!r} holds no images ({', '.join(IMAGE_EXTENSIONS)})",
                           code="invalid_dataset", field="dataset")
    if trigger_word:
        for item in items:
            if not has_trigger(item.caption, trigger_word):
                item.caption = f"{trigger_word}, {item.caption}" if item.caption else trigger_word
    return items


def dataset_augment(path: Path) -> AugmentConfig | None:
    """The augmentation a prepared dataset asks for (recorded in its manifest), or None."""
    manifest = Path(path) / MANIFEST_NAME if Path(path).is_dir() else Path(path)
    if manifest.name != MANIFEST_NAME or not manifest.is_file():
        return None
    augment = read_manifest(manifest).get("config", {}).get("augment")
    return AugmentConfig(**augment) if augment else None


def _from_manifest(manifest: Path) -> list[DatasetItem]:
    root = manifest.parent
    items = []
    for entry in read_manifest(manifest).get("images", []):
        image_path = root / entry["file"]
        # people fix captions by editing the .txt files; those edits win over the manifest's copy
        caption_file = image_path.with_suffix(".txt")
        caption = caption_file.read_text(encoding="utf-8").strip() if caption_file.is_file() else entry["caption"]
        bucket = entry.get("bucket")
        items.append(DatasetItem(image_path, caption, (int(bucket[0]), int(bucket[1])) if bucket else None))
    return items


def _from_kohya(toml_path: Path, trigger_word: str | None) -> list[DatasetItem]:
    items: list[DatasetItem] = []
    for subset in read_dataset_toml(toml_path):
        if subset.is_reg:
            log.warning("skipping regularisation subset %s (is_reg = true): loramill regularises against the "
                        "base model itself", subset.image_dir)
            continue
        if not subset.image_dir.is_dir():
            raise InvalidInput(f"{toml_path}: image_dir {str(subset.image_dir)!r} is not a folder; fix image_dir "
                               "(relative paths are taken from the toml's folder)", code="invalid_dataset",
                               field="dataset")
        fallback = subset.class_tokens or trigger_word
        for item in _from_folder(subset.image_dir, caption_extension=subset.caption_extension,
                                 fallback_caption=fallback, toml_path=toml_path):
            item.size = _kohya_size(item.image_path, subset)
            item.repeats = subset.num_repeats
            items.append(item)
    return items


def _from_folder(folder: Path, *, caption_extension: str, fallback_caption: str | None,
                 toml_path: Path | None = None) -> list[DatasetItem]:
    items = []
    for image_path in sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()):
        caption_file = image_path.with_suffix(caption_extension)
        if caption_file.is_file():
            caption = caption_file.read_text(encoding="utf-8", errors="replace").strip()
        elif fallback_caption is not None:
            caption = fallback_caption
        else:
            raise InvalidInput(f"{toml_path}: {image_path.name} has no {caption_extension} caption and the subset has "
                               "no class_tokens; add one of them", code="invalid_dataset", field="dataset")
        items.append(DatasetItem(image_path, " ".join(caption.split()), None))
    return items


def _kohya_size(image_path: Path, subset: KohyaSubset) -> tuple[int, int] | None:
    if not subset.enable_bucket:
        return subset.resolution
    resolution = subset.resolution or (512, 512)
    with Image.open(image_path) as image:  # header only: no pixels are decoded
        size = image.size
        if image.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # stored sideways; trained upright
            size = (size[1], size[0])
    return choose_bucket(size, resolution=round(math.sqrt(resolution[0] * resolution[1])),
                         min_side=subset.min_bucket_reso, max_side=subset.max_bucket_reso,
                         step=subset.bucket_reso_steps, upscale=not subset.bucket_no_upscale)
