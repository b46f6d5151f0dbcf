"""Messy uploads built from scikit-image's real photographs, and a local HTTP server to download from."""

from __future__ import annotations

import io
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image
from skimage import data

from loramill.engine.dataset.config import DatasetConfig


def photo(name: str) -> Image.Image:
    """A real photograph bundled with scikit-image: astronaut (a face), coffee, chelsea, rocket (no face)."""
    return Image.fromarray(getattr(data, name)()).convert("RGB")


def jpeg_bytes(image: Image.Image, quality: int = 90, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality, **kwargs)
    return buffer.getvalue()


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def png_bomb(side: int = 20000) -> bytes:
    """A real decompression bomb: a valid 1-bit PNG of side² pixels that is ~50 KB on disk."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    compressor = zlib.compressobj(9)
    row = b"\x00" * (1 + side // 8)
    idat = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def sideways_phone_photo() -> tuple[bytes, Image.Image]:
    """A JPEG stored rotated with EXIF orientation 6, as phones write it, and the upright picture it shows.

    The upright picture is a portrait with a pure red band along its top edge.
    """
    upright = photo("astronaut").crop((0, 0, 384, 512))
    upright.paste((255, 0, 0), (0, 0, 384, 40))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    stored = upright.rotate(90, expand=True)  # counter-clockwise: what the sensor wrote
    return jpeg_bytes(stored, exif=exif.tobytes()), upright


@pytest.fixture
def config() -> DatasetConfig:
    """A config for small test photos: 256 px training size, and two images are enough."""
    return DatasetConfig(trigger_word="ohwx", class_word="thing", resolution=256, min_side=128,
                         bucket_min_side=128, min_images=1)


@pytest.fixture
def messy_folder(tmp_path: Path) -> Path:
    """What people upload: good photos plus every kind of bad file, each named after what is wrong with it."""
    folder = tmp_path / "upload"
    folder.mkdir()
    (folder / "coffee.jpg").write_bytes(jpeg_bytes(photo("coffee")))
    (folder / "chelsea.png").write_bytes(png_bytes(photo("chelsea")))
    (folder / "rocket.jpg").write_bytes(jpeg_bytes(photo("rocket")))
    rocket = (folder / "rocket.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(rocket[: len(rocket) // 2])
    (folder / "bomb.png").write_bytes(png_bomb())
    Image.new("RGB", (10, 10), "red").save(folder / "ten_pixels.png")
    (folder / "text_named.jpg").write_text("this is a shopping list, not a photo\n")
    (folder / "exact_copy.jpg").write_bytes((folder / "coffee.jpg").read_bytes())
    small = photo("coffee").resize((450, 300), Image.Resampling.BILINEAR)
    (folder / "near_copy.jpg").write_bytes(jpeg_bytes(small, quality=60))
    return folder


@dataclass
class Served:
    """What the local server answers and what it saw."""

    port: int
    routes: dict[str, object] = field(default_factory=dict)
    user_agents: list[str] = field(default_factory=list)
    hits: dict[str, int] = field(default_factory=dict)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"


@pytest.fixture
def http_server() -> Iterator[Served]:
    """A real HTTP server on 127.0.0.1. Routes: path -> bytes | ("status", code, headers) | callable(handler)."""
    served = Served(port=0)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            path = self.path.split("?")[0]
            served.user_agents.append(self.headers.get("User-Agent", ""))
            served.hits[path] = served.hits.get(path, 0) + 1
            route = served.routes.get(path)
            if route is None:
                self.send_error(404)
            elif isinstance(route, bytes):
                self.send_response(200)
                self.send_header("Content-Length", str(len(route)))
                self.end_headers()
                self.wfile.write(route)
            elif callable(route):
                route(self)
            else:
                _, code, headers = route  # type: ignore[misc]
                self.send_response(code)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    served.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield served
    server.shutdown()
    server.server_close()


def slow_route(seconds: float):  # type: ignore[no-untyped-def]
    """A handler that stalls before answering (a hung server)."""
    def handle(handler: BaseHTTPRequestHandler) -> None:
        time.sleep(seconds)
        try:
            handler.send_response(200)
            handler.end_headers()
        except OSError:
            pass

    return handle


def endless_route(handler: BaseHTTPRequestHandler) -> None:
    """A body with no Content-Length that never ends (until the client hangs up)."""
    handler.send_response(200)
    handler.end_headers()
    try:
        while True:
            handler.wfile.write(b"\0" * 65536)
    except OSError:
        pass
