"""kohya sd-scripts ``dataset.toml``: writing one for a prepared dataset, and reading one from any tool.

Only keys sd-scripts documents (docs/config_README-en.md) are written: its schema rejects unknown
keys ("extra keys not allowed"), so loramill's own details go to manifest.json instead. ``image_dir``
is written absolute because sd-scripts resolves a relative one against its working directory; when
reading, a relative one is taken relative to the toml, and an absolute one that no longer exists
falls back to the same name beside the toml (a dataset folder that was moved or downloaded).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import tomli_w

from loramill.errors import InvalidInput

if TYPE_CHECKING:
    from loramill.engine.dataset.config import DatasetConfig

KOHYA_DEFAULT_CAPTION_EXTENSION = ".caption"  # sd-scripts' default when a toml names none
DATASET_KEYS = ("resolution", "batch_size", "enable_bucket", "min_bucket_reso", "max_bucket_reso",
                "bucket_reso_steps", "bucket_no_upscale")


def dataset_toml(config: DatasetConfig, image_dir: Path, caption_extension: str = ".txt") -> dict[str, Any]:
    """The dataset.toml of a prepared dataset as a dict (pure; ``write_dataset_toml`` saves it)."""
    subset: dict[str, Any] = {
        "image_dir": str(image_dir.resolve()),
        "caption_extension": caption_extension,
        "class_tokens": " ".join(t for t in (config.trigger_word, config.class_word) if t),
        "num_repeats": config.num_repeats,
        "keep_tokens": 1,  # the trigger word leads every caption; keep it first if captions get shuffled
    }
    if config.augment is not None and config.augment.enabled and config.augment.flip:
        subset["flip_aug"] = True
    dataset: dict[str, Any] = {
        "resolution": config.resolution,
        "batch_size": config.batch_size,
        "enable_bucket": config.bucket,
    }
    if config.bucket:
        min_side, max_side = config.bucket_sides()
        dataset.update(min_bucket_reso=min_side, max_bucket_reso=max_side,
                       bucket_reso_steps=config.bucket_step, bucket_no_upscale=not config.upscale)
    dataset["subsets"] = [subset]
    return {"general": {"caption_extension": caption_extension, "shuffle_caption": False},
            "datasets": [dataset]}


def write_dataset_toml(path: Path, config: DatasetConfig, image_dir: Path) -> None:
    """Write ``dataset.toml`` for sd-scripts' ``--dataset_config`` and for ``loramill train``."""
    path.write_text(tomli_w.dumps(dataset_toml(config, image_dir)), encoding="utf-8")


@dataclass
class KohyaSubset:
    """One ``[[datasets.subsets]]`` with the settings of its ``[[datasets]]`` and ``[general]`` merged in."""

    image_dir: Path
    caption_extension: str
    class_tokens: str | None
    num_repeats: int
    resolution: tuple[int, int] | None
    batch_size: int
    enable_bucket: bool
    min_bucket_reso: int
    max_bucket_reso: int
    bucket_reso_steps: int
    bucket_no_upscale: bool
    flip_aug: bool
    is_reg: bool


def read_dataset_toml(path: Path) -> list[KohyaSubset]:
    """Every subset in a kohya dataset.toml; settings cascade general -> dataset -> subset as in sd-scripts."""
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise InvalidInput(f"{path} is not a readable TOML file ({exc})", code="invalid_dataset",
                           field="dataset") from None
    general = document.get("general", {})
    datasets = document.get("datasets", [])
    if not isinstance(datasets, list) or not datasets:
        raise InvalidInput(f"{path} has no [[datasets]] table; a kohya dataset.toml needs at least one "
                           "[[datasets]] with a [[datasets.subsets]] giving image_dir", code="invalid_dataset",
                           field="dataset")
    subsets = []
    for d_index, dataset in enumerate(datasets):
        for s_index, subset in enumerate(dataset.get("subsets", [])):
            merged = {**general, **{k: v for k, v in dataset.items() if k != "subsets"}, **subset}
            where = f"{path} datasets[{d_index}].subsets[{s_index}]"
            if "metadata_file" in merged:
                raise InvalidInput(f"{where} uses metadata_file (a fine-tuning dataset); loramill reads DreamBooth-"
                                   "style subsets: image_dir with caption files", code="invalid_dataset",
                                   field="dataset")
            if "image_dir" not in merged:
                raise InvalidInput(f"{where} has no image_dir; add image_dir = 'folder/with/images'",
                                   code="invalid_dataset", field="dataset")
            subsets.append(KohyaSubset(
                image_dir=_resolve_image_dir(path, str(merged["image_dir"])),
                caption_extension=str(merged.get("caption_extension", KOHYA_DEFAULT_CAPTION_EXTENSION)),
                class_tokens=merged.get("class_tokens"),
                num_repeats=int(merged.get("num_repeats", 1)),
                resolution=_resolution(merged.get("resolution"), where),
                batch_size=int(merged.get("batch_size", 1)),
                enable_bucket=bool(merged.get("enable_bucket", False)),
                min_bucket_reso=int(merged.get("min_bucket_reso", 256)),
                max_bucket_reso=int(merged.get("max_bucket_reso", 1024)),
                bucket_reso_steps=int(merged.get("bucket_reso_steps", 64)),
                bucket_no_upscale=bool(merged.get("bucket_no_upscale", False)),
                flip_aug=bool(merged.get("flip_aug", False)),
                is_reg=bool(merged.get("is_reg", False)),
            ))
    return subsets


def _resolve_image_dir(toml_path: Path, image_dir: str) -> Path:
    candidate = Path(image_dir).expanduser()
    if candidate.is_absolute():
        if candidate.is_dir():
            return candidate
        beside = toml_path.parent / candidate.name
        return beside if beside.is_dir() else candidate
    beside = toml_path.parent / candidate
    if beside.is_dir():
        return beside
    return candidate if candidate.is_dir() else beside


def _resolution(value: Any, where: str) -> tuple[int, int] | None:
    if value is None:
        return None
    if isinstance(value, int):
        return value, value
    if isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return value[0], value[1]
    raise InvalidInput(f"{where} resolution = {value!r}; use a number like 512 or [width, height]",
                       code="invalid_dataset", field="dataset")
