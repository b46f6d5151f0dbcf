"""``prepare_dataset``: messy uploads in; a clean, documented training set out — or an error saying why not.

The flow reads top to bottom in numbered steps. Each file goes through the same short pipeline
(read, exact duplicate, decode, near duplicate, subject, frame, caption, save); a file that fails a
check is reported with its reason and the rest go on. The run fails only when fewer than
``min_images`` survive, and then its message lists every rejected file and why.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import uuid
from pathlib import Path

from PIL import Image

from loramill.engine.dataset.captions import LazyCaptioner, finish_caption
from loramill.engine.dataset.config import DatasetConfig
from loramill.engine.dataset.dedupe import DuplicateIndex, dhash, phash
from loramill.engine.dataset.fetch import FetchOptions, UrlFetcher
from loramill.engine.dataset.framing import frame_region
from loramill.engine.dataset.identity import reject_other_people
from loramill.engine.dataset.kohya import write_dataset_toml
from loramill.engine.dataset.manifest import MANIFEST_NAME, write_manifest
from loramill.engine.dataset.report import DatasetReport, KeptImage, Rejected, Rejection, rejection_list
from loramill.engine.dataset.sources import FetchKey, SourceFile, collect_sources
from loramill.engine.dataset.subjects import subject_regions
from loramill.engine.dataset.validate import decode_image
from loramill.engine.progress import Progress, ProgressCallback, no_progress
from loramill.errors import InvalidInput

IMAGES_DIR = "images"
TOML_NAME = "dataset.toml"
FEW_IMAGES = 5  # below this a LoRA mostly memorises; worth a warning, not a failure


def prepare_dataset(sources: list[str], out_dir: Path, config: DatasetConfig, *,
                    fetch_key: FetchKey | None = None, progress: ProgressCallback = no_progress) -> DatasetReport:
    """Turn ``sources`` (folders, files, zips, storage keys, URLs) into a dataset in ``out_dir``.

    Writes ``images/`` (pictures and .txt captions), ``dataset.toml`` (kohya sd-scripts) and
    ``manifest.json``. Storage keys are resolved with ``fetch_key`` (e.g. a storage adapter's
    ``get_bytes``). Reports per-file progress as ``Progress("dataset", n, total, {"file", "status"})``.
    Raises ``InvalidInput`` with code ``too_few_images`` listing every rejection when fewer than
    ``config.min_images`` source images are usable.
    """
    # 1. Check inputs
    out_dir = Path(out_dir)
    if not sources:
        raise InvalidInput("no sources given; pass folders, image files, zips, storage keys or http(s) URLs",
                           code="no_sources", field="sources")
    created = not out_dir.exists()
    _check_out_dir(out_dir)
    report = DatasetReport(out_dir)
    staging = out_dir / f".staging-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    published = False
    try:
        with UrlFetcher(fetch_options(config)) as fetcher:
            # 2. List candidates without decoding them, and refuse an oversized set before any work
            found = collect_sources(sources, config, fetcher=fetcher, fetch_key=fetch_key, exclude=out_dir)
            try:
                report.rejected.extend(found.rejected)
                if len(found.files) > config.max_images:
                    raise InvalidInput(f"the sources hold {len(found.files):,} files, more than max_images "
                                       f"{config.max_images:,}; choose the best {config.max_images:,} or raise "
                                       "--max-images", code="too_many_images", field="max_images")
                # 3. Each file: read, deduplicate, decode, pick the subject, frame, caption, save
                index = DuplicateIndex(config.near_duplicate_distance)
                with LazyCaptioner(config) as captioner:
                    for step, file in enumerate(found.files, start=1):
                        status = "kept"
                        try:
                            report.kept.extend(_prepare_one(file, len(report.kept), staging, config, index,
                                                            captioner))
                        except Rejected as exc:
                            report.rejected.append(Rejection(file.name, exc.code, exc.message))
                            status = exc.code
                        progress(Progress("dataset", step, len(found.files), {"file": file.name, "status": status}))
            finally:
                found.close()
        # 3b. Face mode: photos of anyone but the majority person are left out
        if config.subject == "face" and report.kept:
            reject_other_people(report, staging)
        # 4. Enough left? If not, say exactly what went wrong with each file
        usable = len({k.source for k in report.kept})
        if usable < config.min_images:
            detail = f"\nrejected:\n{rejection_list(report.rejected)}" if report.rejected else ""
            raise InvalidInput(f"only {usable} usable image(s), fewer than min_images {config.min_images} "
                               f"(--min-images); add images or fix the ones below{detail}",
                               code="too_few_images", field="images")
        if usable < FEW_IMAGES:
            report.warnings.append(f"only {usable} image(s): a LoRA learns a subject better from 10–30 varied ones")
        # 5. Publish: images with captions, dataset.toml, manifest.json
        _replace_images(staging, out_dir / IMAGES_DIR)
        write_dataset_toml(out_dir / TOML_NAME, config, out_dir / IMAGES_DIR)
        write_manifest(out_dir, report, config)
        published = True
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if created and not published and not any(out_dir.iterdir()):
            out_dir.rmdir()  # a failed run leaves no empty folder behind
    return report


def fetch_options(config: DatasetConfig) -> FetchOptions:
    """The URL download settings a dataset config implies."""
    return FetchOptions(timeout=config.url_timeout, max_bytes=config.url_max_bytes, retries=config.url_retries,
                        backoff=config.url_backoff, allow_private=config.allow_private_urls)


def _prepare_one(file: SourceFile, kept_so_far: int, staging: Path, config: DatasetConfig, index: DuplicateIndex,
                 captioner: LazyCaptioner) -> list[KeptImage]:
    """One source file -> one or more saved images (style crops), or ``Rejected``."""
    data = file.read()
    sha = hashlib.sha256(data).hexdigest()
    if (first := index.exact(sha)) is not None:
        raise Rejected("duplicate", f"the same bytes as {first}")
    decoded = decode_image(data, max_pixels=config.max_pixels, min_side=config.min_side,
                           background=config.background)
    del data
    p, d = phash(decoded.image), dhash(decoded.image)
    if (near := index.near(p, d)) is not None:
        raise Rejected("near_duplicate", f"looks the same as {near[0]} (perceptual hash {near[1]} bits apart of 64; "
                       f"near_duplicate_distance is {config.near_duplicate_distance})")
    regions = subject_regions(decoded, config)
    sidecar = (file.caption() or "").strip()
    stem = safe_stem(file.name)
    kept: list[KeptImage] = []
    for region in regions:
        framed = frame_region(region.image, config)
        name = f"{kept_so_far + len(kept) + 1:04d}_{stem}{region.suffix}.{config.image_format}"
        _save(framed.image, staging / name, config.image_format)
        caption = finish_caption(sidecar, config) if sidecar else captioner(framed.image)
        (staging / name).with_suffix(".txt").write_text(caption + "\n", encoding="utf-8")
        kept.append(KeptImage(
            file=f"{IMAGES_DIR}/{name}", source=file.name, sha256=sha, phash=f"{p:016x}",
            original_size=decoded.original_size, final_size=framed.image.size, bucket=framed.bucket,
            caption=caption, caption_source="file" if sidecar else config.captioner, crop=region.box,
            exif_rotated=decoded.exif_rotated, warnings=region.warnings + framed.warnings))
    index.add(file.name, sha, p, d)
    return kept


def safe_stem(name: str) -> str:
    """A short file-name-safe stem from a path, archive entry, key or URL: ``a/b/My Photo!.JPG`` -> ``My_Photo``."""
    last = re.split(r"(?<=\.zip)!|[\\/?#]", name.rstrip("/"), flags=re.IGNORECASE)
    tail = next((part for part in reversed(last) if part and "=" not in part), "") or "image"
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", tail.rsplit(".", 1)[0]).strip("_")[:40]
    return stem or "image"


def _save(image: Image.Image, path: Path, image_format: str) -> None:
    if image_format == "jpg":
        image.save(path, "JPEG", quality=95, subsampling=0)
    else:
        image.save(path, "PNG", compress_level=4)  # level 9 is 3× slower for 2 % less


def _check_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise InvalidInput(f"--out {out_dir} is a file; give a folder", code="invalid_output", field="out_dir")
    if out_dir.is_dir():
        visible = [p for p in out_dir.iterdir() if not p.name.startswith(".")]
        if visible and not (out_dir / MANIFEST_NAME).is_file():
            raise InvalidInput(f"--out {out_dir} is not empty and is not a loramill dataset; give an empty or new "
                               "folder (a previous dataset there would be replaced)", code="invalid_output",
                               field="out_dir")
    out_dir.mkdir(parents=True, exist_ok=True)


def _replace_images(staging: Path, images: Path) -> None:
    # only a folder that held a loramill dataset gets here (see _check_out_dir), so this removes our own files
    if images.exists():
        shutil.rmtree(images)
    staging.rename(images)
