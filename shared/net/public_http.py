"""HTTP to the public internet only, for URLs a client gave us (webhook receivers, dataset URLs).

A URL naming a private, loopback, link-local, multicast or otherwise reserved address could make the
service call its own network (SSRF). The check sits in the connection itself: every connection (the first
and each redirect's) resolves the host once, refuses it if any address it resolves to is not public, and
connects to the address it checked, so a DNS answer that changes between check and connect (rebinding)
gains nothing. TLS still verifies the certificate against the host name. Proxies from the environment are
not used (a proxy would resolve the name itself). `allow_private` turns the address rule off, for tests and
for deployments whose receivers are on their own network.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable, Iterator

import httpcore
import httpx

from shared.errors import LorabakeError

# Not covered by ipaddress's is_private: shared address space (RFC 6598), used inside carriers and clouds.
_SHARED_SPACE = ipaddress.ip_network("100.64.0.0/10")


# The server setting that lets URLs name private hosts; a refusal names it, since that is the fix when the
# receiver is on the server's own network (a webhook receiver on this machine, a dataset on the LAN).
ALLOW_PRIVATE_SETTING = "LORABAKE_ALLOW_PRIVATE_URLS"


class UnsafeURL(LorabakeError):
    status_code = 422
    code = "unsafe_url"


def private_host_refused(field: str, what: str) -> UnsafeURL:
    """A 422 for a URL refused only because its host is not public: `what` says which, then the way out."""
    return UnsafeURL(
        f"{field} {what}; only public hosts are called unless the server sets {ALLOW_PRIVATE_SETTING}=1 "
        "(for receivers on its own network)",
        details={"field": field, "setting": ALLOW_PRIVATE_SETTING},
    )


class BlockedAddress(httpcore.ConnectError):
    """The host resolves to an address that is not public (raised while connecting; httpx's ConnectError)."""


def is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone id
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast and ip not in _SHARED_SPACE


def check_url(url: str, field: str, *, allow_private: bool = False) -> str:
    """`url` if it is an http(s) URL with a host (and, naming an IP address, a public one); else a 422
    naming `field`. Host names are checked when connecting (see module doc)."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        raise UnsafeURL(f"{field} is not a URL", details={"field": field}) from exc
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise UnsafeURL(f"{field} must be an http:// or https:// URL with a host", details={"field": field})
    if parsed.userinfo:
        raise UnsafeURL(f"{field} must not hold credentials (user:password@)", details={"field": field})
    if len(url) > 2000:
        raise UnsafeURL(f"{field} is longer than 2000 characters", details={"field": field})
    if not allow_private:
        try:
            literal = ipaddress.ip_address(parsed.host)
        except ValueError:
            literal = None
        if literal is not None and not is_public(str(literal)):
            raise private_host_refused(field, "names a private or reserved address")
        if parsed.host.lower() == "localhost" or parsed.host.lower().endswith(".localhost"):
            raise private_host_refused(field, "names this machine")
    return url


class PublicOnlyBackend(httpcore.NetworkBackend):
    """httpcore's own sync backend, connecting only to addresses that pass `is_public`."""

    def __init__(self, allow_private: bool = False) -> None:
        self.allow_private = allow_private
        self._inner = httpcore.SyncBackend()

    def _addresses(self, host: str, port: int) -> list[str]:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        if not addresses:
            raise httpcore.ConnectError(f"{host} resolves to no address")
        if not self.allow_private:
            blocked = [a for a in addresses if not is_public(a)]
            if blocked:  # all or nothing: a name with one private answer is not called at all
                raise BlockedAddress(
                    f"{host} resolves to {blocked[0]}, which is not a public address (the server calls it "
                    f"only with {ALLOW_PRIVATE_SETTING}=1)"
                )
        return addresses

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable | None = None,
    ) -> httpcore.NetworkStream:
        last: Exception | None = None
        for address in self._addresses(host, port):
            try:
                return self._inner.connect_tcp(address, port, timeout, local_address, socket_options)
            except httpcore.ConnectError as exc:
                last = exc
        assert last is not None
        raise last

    def connect_unix_socket(self, *args: object, **kwargs: object) -> httpcore.NetworkStream:
        raise BlockedAddress("unix sockets are never connected to")

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def public_client(
    *, allow_private: bool = False, timeout: httpx.Timeout | float = 10.0, follow_redirects: bool = False
) -> httpx.Client:
    """An httpx client whose every connection goes through PublicOnlyBackend (redirects included)."""
    transport = httpx.HTTPTransport(retries=0)
    # httpx's transport takes no network backend of its own; its pool is httpcore's, which does.
    transport._pool = httpcore.ConnectionPool(  # noqa: SLF001
        ssl_context=httpx.create_ssl_context(),
        max_connections=20,
        max_keepalive_connections=5,
        network_backend=PublicOnlyBackend(allow_private),
    )
    return httpx.Client(
        transport=transport,
        timeout=timeout,
        follow_redirects=follow_redirects,
        max_redirects=5,
        trust_env=False,
    )


class TooLarge(Exception):
    pass


def capped_bytes(response: httpx.Response, max_bytes: int) -> Iterator[bytes]:
    """The body of a streamed response, raising TooLarge past `max_bytes` (checked as it arrives, and
    at once when Content-Length says so)."""
    declared = response.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise TooLarge(f"{declared} bytes is more than {max_bytes}")
    seen = 0
    for chunk in response.iter_bytes():
        seen += len(chunk)
        if seen > max_bytes:
            raise TooLarge(f"more than {max_bytes} bytes")
        yield chunk
