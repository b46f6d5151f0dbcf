"""URL sources against a real local HTTP server: downloads, timeouts, caps, and refused addresses.

The server listens on 127.0.0.1, which the default policy refuses. So: the plain download tests use
``allow_private=True``; the refusal tests use the default policy; and the redirect tests inject a
policy that allows exactly one made-up host name (resolved to 127.0.0.1 by an injected resolver) and
nothing else — which shows that each redirect hop is checked on its own, with the default policy's
judgement of 127.0.0.1 and 169.254.169.254 covered by ``test_is_public_address_table``.
"""

from __future__ import annotations

import ipaddress
import time
from dataclasses import replace
from pathlib import Path

import pytest

from loramill.engine.dataset.config import DatasetConfig
from loramill.engine.dataset.fetch import FetchOptions, fetch_url, is_public_address, system_resolver
from loramill.engine.dataset.prepare import prepare_dataset
from loramill.engine.dataset.report import Rejected
from loramill.errors import InvalidInput

from .conftest import Served, endless_route, jpeg_bytes, photo, slow_route

FAST = {"timeout": 0.5, "retries": 0, "backoff": 0.0}
FAKE_HOST = "images.example-cdn.test"


def only_fake_host(host: str, _ip: object) -> bool:
    """Policy for redirect tests: the made-up public host is fine, every other host is not."""
    return host == FAKE_HOST


def fake_dns(host: str, port: int) -> list[str]:
    return ["127.0.0.1"] if host == FAKE_HOST else system_resolver(host, port)


def refusal(url: str, **options: object) -> Rejected:
    with pytest.raises(Rejected) as caught:
        fetch_url(url, FetchOptions(**{**FAST, **options}))  # type: ignore[arg-type]
    return caught.value


def test_fetch_url_downloads_image(http_server: Served) -> None:
    body = jpeg_bytes(photo("coffee"))
    http_server.routes["/coffee.jpg"] = body
    assert fetch_url(http_server.url("/coffee.jpg"), FetchOptions(allow_private=True, **FAST)) == body
    assert http_server.user_agents[0].startswith("loramill/")


def test_fetch_url_refuses_loopback_by_default(http_server: Served) -> None:
    http_server.routes["/coffee.jpg"] = b"secret"
    error = refusal(http_server.url("/coffee.jpg"))
    assert error.code == "blocked_address" and "127.0.0.1" in error.message
    assert http_server.hits == {}  # refused before connecting


def test_fetch_url_times_out_on_slow_server(http_server: Served) -> None:
    http_server.routes["/slow"] = slow_route(8.0)
    started = time.monotonic()
    error = refusal(http_server.url("/slow"), allow_private=True)
    assert error.code == "download_failed" and "timed out" in error.message
    # Functional, not a speed target: the client gave up long before the 8 s response would come.
    assert time.monotonic() - started < 6.0


def test_fetch_url_retries_with_backoff_then_gives_up(http_server: Served) -> None:
    http_server.routes["/down"] = ("status", 503, {})
    waits: list[float] = []
    error = refusal(http_server.url("/down"), allow_private=True, retries=2, backoff=0.25, sleep=waits.append)
    assert error.code == "download_failed" and "503" in error.message and "3 attempt" in error.message
    assert waits == [0.25, 0.5]
    assert http_server.hits["/down"] == 3


def test_fetch_url_refuses_oversized_body_by_content_length(http_server: Served) -> None:
    http_server.routes["/big"] = b"\0" * 200_000
    error = refusal(http_server.url("/big"), allow_private=True, max_bytes=100_000)
    assert error.code == "too_large" and "announces 200,000 bytes" in error.message


def test_fetch_url_refuses_endless_body_without_length(http_server: Served) -> None:
    http_server.routes["/endless"] = endless_route
    error = refusal(http_server.url("/endless"), allow_private=True, max_bytes=1_000_000)
    assert error.code == "too_large" and "exceeds" in error.message


def test_fetch_url_retries_403_with_browser_user_agent(http_server: Served) -> None:
    def picky(handler) -> None:  # type: ignore[no-untyped-def]
        if "Mozilla" in handler.headers.get("User-Agent", ""):
            handler.send_response(200)
            handler.send_header("Content-Length", "2")
            handler.end_headers()
            handler.wfile.write(b"ok")
        else:
            handler.send_error(403)

    http_server.routes["/wiki.png"] = picky
    assert fetch_url(http_server.url("/wiki.png"), FetchOptions(allow_private=True, **FAST)) == b"ok"


def test_fetch_url_follows_redirect_to_allowed_host(http_server: Served) -> None:
    http_server.routes["/a.jpg"] = b"image bytes"
    http_server.routes["/moved"] = ("status", 302, {"Location": "/a.jpg"})
    options = FetchOptions(resolver=fake_dns, is_allowed=only_fake_host, **FAST)
    # the made-up name is unknown to real DNS: success means we connected to the address we checked
    assert fetch_url(http_server.url("/moved", host=FAKE_HOST), options) == b"image bytes"


@pytest.mark.parametrize("target", ["http://127.0.0.1:{port}/a.jpg", "http://169.254.169.254/latest/meta-data/",
                                    "http://[::ffff:127.0.0.1]:{port}/a.jpg"])
def test_fetch_url_refuses_redirect_to_private_address(http_server: Served, target: str) -> None:
    http_server.routes["/a.jpg"] = b"internal"
    http_server.routes["/jump"] = ("status", 302, {"Location": target.format(port=http_server.port)})
    error = refusal(http_server.url("/jump", host=FAKE_HOST), resolver=fake_dns, is_allowed=only_fake_host)
    assert error.code == "blocked_address"
    assert "/a.jpg" not in http_server.hits  # the redirect target was never contacted


def test_fetch_url_refuses_metadata_address_even_when_private_allowed() -> None:
    error = refusal("http://169.254.169.254/latest/meta-data/", allow_private=True)
    assert error.code == "blocked_address"


def test_fetch_url_refuses_name_resolving_to_any_private_address() -> None:
    def rebinding_dns(host: str, port: int) -> list[str]:
        return ["93.184.216.34", "10.1.2.3"]  # one public, one private: the private one decides

    error = refusal("http://photos.example.com/a.jpg", resolver=rebinding_dns)
    assert error.code == "blocked_address" and "10.1.2.3" in error.message


@pytest.mark.parametrize("address, public", [
    ("8.8.8.8", True), ("2606:4700:4700::1111", True),
    ("127.0.0.1", False), ("10.0.0.1", False), ("172.16.5.4", False), ("192.168.1.1", False),
    ("169.254.169.254", False), ("100.100.100.200", False), ("100.64.0.1", False), ("0.0.0.0", False),
    ("::1", False), ("fe80::1", False), ("fd00:ec2::254", False), ("::ffff:10.0.0.1", False),
    ("2002:7f00:1::", False), ("224.0.0.1", False), ("255.255.255.255", False),
])
def test_is_public_address_table(address: str, public: bool) -> None:
    assert is_public_address(ipaddress.ip_address(address)) is public


def test_prepare_url_sources_download_and_refuse(http_server: Served, tmp_path: Path,
                                                 config: DatasetConfig) -> None:
    http_server.routes["/coffee.jpg"] = jpeg_bytes(photo("coffee"))
    http_server.routes["/slow.jpg"] = slow_route(3.0)
    urls = [http_server.url("/coffee.jpg"), http_server.url("/slow.jpg"), http_server.url("/missing.jpg")]
    fast = replace(config, url_timeout=0.5, url_retries=0)
    report = prepare_dataset(urls, tmp_path / "out", replace(fast, allow_private_urls=True))
    assert [k.source for k in report.kept] == [urls[0]]
    assert {r.source: r.reason for r in report.rejected} == {urls[1]: "download_failed", urls[2]: "download_failed"}
    with pytest.raises(InvalidInput) as caught:  # the same URL without allow_private_urls
        prepare_dataset(urls[:1], tmp_path / "out2", replace(fast, min_images=1))
    assert caught.value.code == "too_few_images"
    assert f"{urls[0]}: blocked_address" in caught.value.message
