"""Zip sources: images and captions come out; path tricks, bombs and polyglots do not get anywhere."""

from __future__ import annotations

import io
import stat
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest

from loramill.engine.dataset.archives import unsafe_member_name
from loramill.engine.dataset.config import DatasetConfig
from loramill.engine.dataset.prepare import prepare_dataset
from loramill.errors import InvalidInput

from .conftest import Served, jpeg_bytes, photo, png_bytes


def make_zip(path: Path, entries: dict[str, bytes], *, symlinks: dict[str, str] | None = None) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, body in entries.items():
            archive.writestr(zipfile.ZipInfo(name), body, compress_type=zipfile.ZIP_DEFLATED)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, target)
    return path


def by_reason(report) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {r.source.split("!", 1)[-1]: r.reason for r in report.rejected}


def test_prepare_zip_keeps_images_and_their_captions(tmp_path: Path, config: DatasetConfig) -> None:
    upload = make_zip(tmp_path / "upload.zip", {
        "holiday/coffee.jpg": jpeg_bytes(photo("coffee")), "holiday/coffee.txt": b"espresso cup",
        "holiday/rocket.jpg": jpeg_bytes(photo("rocket")), "__MACOSX/holiday/._coffee.jpg": b"junk",
        ".DS_Store": b"junk"})
    report = prepare_dataset([str(upload)], tmp_path / "out", config)
    assert [k.source for k in report.kept] == [f"{upload}!holiday/coffee.jpg", f"{upload}!holiday/rocket.jpg"]
    assert report.kept[0].caption == "ohwx, espresso cup"
    assert report.rejected == []


def test_prepare_zip_refuses_path_traversal_and_links_without_extracting(tmp_path: Path,
                                                                        config: DatasetConfig) -> None:
    good = jpeg_bytes(photo("coffee"))
    upload = make_zip(tmp_path / "evil.zip", {
        "ok.jpg": good, "../../escaped.jpg": jpeg_bytes(photo("rocket")), "/etc/cron.d/evil.jpg": b"x",
        "C:\\Windows\\evil.jpg": b"x", "a/../../up.jpg": b"x"}, symlinks={"link.jpg": "/etc/passwd"})
    report = prepare_dataset([str(upload)], tmp_path / "work" / "out", config)
    assert [k.source for k in report.kept] == [f"{upload}!ok.jpg"]
    assert by_reason(report) == {"../../escaped.jpg": "unsafe_path", "/etc/cron.d/evil.jpg": "unsafe_path",
                                 "C:\\Windows\\evil.jpg": "unsafe_path", "a/../../up.jpg": "unsafe_path",
                                 "link.jpg": "unsafe_path"}
    written = {p.name for p in tmp_path.rglob("*")}
    assert not written & {"escaped.jpg", "evil.jpg", "up.jpg", "link.jpg"}


@pytest.mark.parametrize("name, unsafe", [
    ("photos/a.jpg", False), ("a..b.jpg", False), ("../a.jpg", True), ("/a.jpg", True), ("\\a.jpg", True),
    ("d:/a.jpg", True), ("x/..\\..\\a.jpg", True), ("a\x00.jpg", True),
])
def test_unsafe_member_name_table(name: str, unsafe: bool) -> None:
    assert (unsafe_member_name(name) is not None) is unsafe


def test_prepare_zip_bomb_by_entry_count_is_refused(tmp_path: Path, config: DatasetConfig) -> None:
    upload = make_zip(tmp_path / "many.zip", {f"{i}.jpg": b"x" for i in range(60)})
    (tmp_path / "coffee.jpg").write_bytes(jpeg_bytes(photo("coffee")))
    report = prepare_dataset([str(upload), str(tmp_path / "coffee.jpg")], tmp_path / "out",
                             replace(config, zip_max_entries=50))
    assert [(r.source, r.reason) for r in report.rejected] == [(str(upload), "zip_bomb")]
    assert "60 entries" in report.rejected[0].message and len(report.kept) == 1


def test_prepare_zip_bomb_by_uncompressed_size_is_refused(tmp_path: Path, config: DatasetConfig) -> None:
    upload = make_zip(tmp_path / "bomb.zip", {"zeros.jpg": b"\0" * 30_000_000})
    assert upload.stat().st_size < 100_000  # 30 MB of zeros deflate to a few dozen KB
    with pytest.raises(InvalidInput) as caught:
        prepare_dataset([str(upload)], tmp_path / "out", replace(config, zip_max_bytes=10_000_000))
    assert caught.value.code == "too_few_images" and f"{upload}: zip_bomb" in caught.value.message


def test_prepare_nested_zip_is_not_opened(tmp_path: Path, config: DatasetConfig) -> None:
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as archive:
        archive.writestr("deep.jpg", jpeg_bytes(photo("rocket")))
    upload = make_zip(tmp_path / "outer.zip", {"inner.zip": inner.getvalue(), "coffee.jpg": jpeg_bytes(photo("coffee"))})
    report = prepare_dataset([str(upload)], tmp_path / "out", config)
    assert by_reason(report) == {"inner.zip": "nested_archive"} and len(report.kept) == 1


def test_prepare_image_zip_polyglot_is_an_image_and_loses_its_payload(tmp_path: Path, config: DatasetConfig) -> None:
    payload = io.BytesIO()
    with zipfile.ZipFile(payload, "w") as archive:
        archive.writestr("../../owned.txt", "gotcha")
    polyglot = tmp_path / "innocent.png"
    polyglot.write_bytes(png_bytes(photo("coffee")) + payload.getvalue())
    assert zipfile.is_zipfile(polyglot)  # really both
    report = prepare_dataset([str(polyglot)], tmp_path / "out", config)
    [kept] = report.kept
    written = (tmp_path / "out" / kept.file).read_bytes()
    assert b"PK\x03\x04" not in written and b"owned" not in written  # re-encoded: the zip is gone
    assert not any(p.name == "owned.txt" for p in tmp_path.rglob("*"))


def test_prepare_zip_from_url(http_server: Served, tmp_path: Path, config: DatasetConfig) -> None:
    archive = make_zip(tmp_path / "set.zip", {"a.jpg": jpeg_bytes(photo("coffee")),
                                              "b.png": png_bytes(photo("chelsea"))})
    http_server.routes["/set.zip"] = archive.read_bytes()
    report = prepare_dataset([http_server.url("/set.zip")], tmp_path / "out",
                             replace(config, allow_private_urls=True, url_timeout=2))
    assert len(report.kept) == 2 and report.kept[0].source.endswith("set.zip!a.jpg")
