"""Safe HTTP(S) downloads of user-given URLs: timeouts, retries with backoff, a byte cap, no private targets.

A URL from a user must not make the worker read its cloud metadata service or an internal admin page
(SSRF). The guard lives where the socket is opened: every host — the first one and every redirect
target — is resolved here, *every* resolved address is checked, and the connection goes to an address
that was checked, so DNS rebinding between check and connect has nothing to exploit. Proxy variables
are ignored on purpose: a proxy would connect on our behalf to addresses we never saw.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpcore
import httpx

from loramill import __version__
from loramill.engine.dataset.report import Rejected

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[str]]
AddressPolicy = Callable[[str, IPAddress], bool]

USER_AGENT = f"loramill/{__version__} (dataset preparation)"
# some image hosts (wikis, CDNs) answer 403 to anything that does not look like a browser
BROWSER_USER_AGENT = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
                      "Chrome/126.0 Safari/537.36")
_REDIRECTS = {301, 302, 303, 307, 308}
_METADATA = {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254"),
             ipaddress.ip_address("100.100.100.200")}


def system_resolver(host: str, port: int) -> list[str]:
    """All addresses ``host`` resolves to (IPv4 and IPv6), in the resolver's order."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def is_public_address(ip: IPAddress) -> bool:
    """False for loopback, private, link-local, shared, reserved, multicast and cloud metadata addresses.

    IPv6 forms that embed an IPv4 address (mapped, 6to4, Teredo) are judged by the embedded address.
    """
    ip = _embedded(ip)
    if ip in _METADATA:
        return False
    return ip.is_global and not ip.is_multicast and not ip.is_reserved


def _embedded(ip: IPAddress) -> IPAddress:
    """The IPv4 address inside an IPv4-mapped, 6to4 or Teredo IPv6 address; else ``ip`` itself."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is not None:
            return embedded
    return ip


@dataclass
class FetchOptions:
    """How URLs are downloaded. ``resolver`` and ``is_allowed`` are injectable for tests and special networks."""

    timeout: float = 30.0  # per connect / read; the whole body must also arrive within 4× this
    max_bytes: int = 50 * 2**20
    retries: int = 3
    backoff: float = 1.0  # seconds before the first retry, doubled each time
    allow_private: bool = False
    max_redirects: int = 5
    resolver: Resolver = system_resolver
    is_allowed: AddressPolicy | None = None  # None: public addresses only, or anything with allow_private
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False)

    def allowed(self, host: str, ip: IPAddress) -> bool:
        if self.is_allowed is not None:
            return self.is_allowed(host, ip)
        if _embedded(ip) in _METADATA:
            return False  # no local setup needs the cloud metadata service for images: never, even when private is ok
        return self.allow_private or is_public_address(ip)


class _Blocked(Exception):
    """A host resolved to an address the policy refuses."""


class _Retryable(Exception):
    """A failure the same request may not repeat: timeout, connection reset, HTTP 429 or 5xx."""


class _GuardedBackend(httpcore.SyncBackend):
    """httpcore's socket backend, except that it resolves and checks the host itself."""

    def __init__(self, options: FetchOptions) -> None:
        self.options = options

    def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                    local_address: str | None = None, socket_options: Any = None) -> httpcore.NetworkStream:
        try:
            addresses = [ipaddress.ip_address(a.split("%")[0]) for a in self.options.resolver(host, port)]
        except (OSError, ValueError) as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        if not addresses:
            raise httpcore.ConnectError(f"{host} resolves to no address")
        refused = [ip for ip in addresses if not self.options.allowed(host, ip)]
        if refused:
            listed = ", ".join(str(ip) for ip in refused)
            where = f"{host} is" if host.strip("[]") == listed else f"{host} resolves to {listed},"
            if any(_embedded(ip) in _METADATA for ip in refused):
                raise _Blocked(f"{where} a cloud metadata address; always refused")
            raise _Blocked(f"{where} a loopback, private, link-local or reserved address; refused "
                           "(allow_private_urls / --allow-private-urls is for local use only)")
        last: Exception | None = None
        for ip in addresses:  # connect to the checked address itself, never re-resolve the name
            try:
                return super().connect_tcp(str(ip), port, timeout, local_address, socket_options)
            except httpcore.ConnectError as exc:
                last = exc
        assert last is not None
        raise last


class UrlFetcher:
    """Downloads URLs into memory under ``FetchOptions``; one connection pool for a whole dataset run."""

    def __init__(self, options: FetchOptions | None = None) -> None:
        self.options = options or FetchOptions()
        self._pool = httpcore.ConnectionPool(ssl_context=httpx.create_ssl_context(),
                                             network_backend=_GuardedBackend(self.options), max_connections=4)

    def __enter__(self) -> UrlFetcher:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._pool.close()

    def get(self, url: str) -> bytes:
        """The body of ``url``; raises ``Rejected`` (download_failed, blocked_address, too_large)."""
        attempt = 0
        while True:
            try:
                return self._get_once(url)
            except _Retryable as exc:
                if attempt >= self.options.retries:
                    raise Rejected("download_failed", f"{exc} (gave up after {attempt + 1} attempt(s))") from None
                self.options.sleep(self.options.backoff * 2**attempt)
                attempt += 1
            except _Blocked as exc:
                raise Rejected("blocked_address", str(exc)) from None

    def _get_once(self, url: str) -> bytes:
        current = httpx.URL(url)
        user_agent, hops = USER_AGENT, 0
        while True:
            if current.scheme not in ("http", "https") or not current.host:
                raise Rejected("download_failed", f"{current} is not an http(s) URL")
            status, location, body = self._request(current, user_agent)
            if status in _REDIRECTS and location:
                hops += 1
                if hops > self.options.max_redirects:
                    raise Rejected("download_failed", f"more than {self.options.max_redirects} redirects")
                current = current.join(location)  # the next hop goes through the same address check
                continue
            if status == 403 and user_agent == USER_AGENT:
                user_agent = BROWSER_USER_AGENT
                continue
            if status == 429 or status >= 500:
                raise _Retryable(f"HTTP {status} from {current.host}")
            if status >= 400:
                raise Rejected("download_failed", f"HTTP {status} from {current.host}")
            assert body is not None
            return body

    def _request(self, url: httpx.URL, user_agent: str) -> tuple[int, str | None, bytes | None]:
        t = self.options.timeout
        deadline = time.monotonic() + 4 * t
        headers = [(b"User-Agent", user_agent.encode()), (b"Accept", b"image/*,application/zip,*/*;q=0.5")]
        try:
            with self._pool.stream("GET", str(url), headers=headers,
                                   extensions={"timeout": {"connect": t, "read": t, "write": t, "pool": t}}) as resp:
                if resp.status in _REDIRECTS:
                    return resp.status, _header(resp.headers, b"location"), None
                if resp.status >= 400:
                    return resp.status, None, None
                declared = _header(resp.headers, b"content-length")
                if declared and declared.isdigit() and int(declared) > self.options.max_bytes:
                    raise Rejected("too_large", f"{url.host} announces {int(declared):,} bytes, over the "
                                   f"{self.options.max_bytes:,}-byte cap (url_max_bytes)")
                chunks, size = [], 0
                for chunk in resp.iter_stream():
                    size += len(chunk)
                    if size > self.options.max_bytes:
                        raise Rejected("too_large", f"body from {url.host} exceeds the "
                                       f"{self.options.max_bytes:,}-byte cap (url_max_bytes)")
                    if time.monotonic() > deadline:
                        raise _Retryable(f"{url.host} sent the body too slowly (over {4 * t:g} s)")
                    chunks.append(chunk)
                return resp.status, None, b"".join(chunks)
        except httpcore.TimeoutException as exc:
            raise _Retryable(f"timed out after {t:g} s talking to {url.host} ({type(exc).__name__})") from None
        except (httpcore.NetworkError, httpcore.ProtocolError, httpcore.ConnectError) as exc:
            raise _Retryable(f"connection to {url.host} failed: {exc or type(exc).__name__}") from None
        except httpcore.UnsupportedProtocol as exc:
            raise Rejected("download_failed", f"{url}: {exc}") from None


def fetch_url(url: str, options: FetchOptions | None = None) -> bytes:
    """Download one URL under ``options`` (a one-off ``UrlFetcher``)."""
    with UrlFetcher(options) as fetcher:
        return fetcher.get(url)


def is_url(source: str) -> bool:
    return source.lower().startswith(("http://", "https://"))


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> str | None:
    for key, value in headers:
        if key.lower() == name:
            return value.decode("latin-1").strip()
    return None
