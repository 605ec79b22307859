"""HTTP to public addresses only: URLs are refused up front when they name a private address, and every
connection (names included) is checked where it is made."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator

import httpx
import pytest

from shared.net.public_http import TooLarge, UnsafeURL, capped_bytes, check_url, is_public, public_client


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("2606:4700:4700::1111", True),
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),  # cloud metadata
        ("100.64.0.1", False),  # carrier-grade NAT
        ("0.0.0.0", False),
        ("::1", False),
        ("fe80::1%eth0", False),
        ("fd00::1", False),
        ("::ffff:127.0.0.1", False),  # IPv4-mapped loopback
        ("224.0.0.1", False),
    ],
)
def test_which_addresses_are_public(address, public):
    assert is_public(address) is public


@pytest.mark.parametrize(
    ("url", "private"),
    [
        ("ftp://example.com/x", False),
        ("file:///etc/passwd", False),
        ("http://", False),
        ("not a url", False),
        ("http://user:pw@example.com/", False),
        ("http://127.0.0.1:8080/hook", True),
        ("http://[::1]/hook", True),
        ("http://169.254.169.254/latest/meta-data", True),
        ("http://localhost/hook", True),
        ("http://api.localhost/hook", True),
    ],
)
def test_unsafe_urls_are_refused_naming_the_field(url, private):
    """A host refused for not being public names the setting that allows it; other refusals do not."""
    with pytest.raises(UnsafeURL) as err:
        check_url(url, "webhook")
    assert err.value.details["field"] == "webhook" and err.value.status_code == 422
    assert ("LORABAKE_ALLOW_PRIVATE_URLS" in err.value.message) is private
    assert err.value.details.get("setting") == ("LORABAKE_ALLOW_PRIVATE_URLS" if private else None)


def test_public_urls_pass_and_private_ones_pass_when_allowed():
    assert (
        check_url("https://hooks.example.com/lorabake?x=1", "webhook")
        == "https://hooks.example.com/lorabake?x=1"
    )
    assert check_url("http://127.0.0.1:9/x", "webhook", allow_private=True) == "http://127.0.0.1:9/x"


class Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        body = b"x" * 5000
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def local_server() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


def test_connections_to_a_name_that_resolves_to_this_machine_are_refused(local_server):
    with public_client() as client, pytest.raises(httpx.ConnectError, match="not a public address"):
        client.get(f"http://localhost:{local_server}/")  # the name passes no up-front check here
    with public_client() as client, pytest.raises(httpx.ConnectError, match="not a public address"):
        client.get(f"http://127.0.0.1:{local_server}/")


def test_allowed_private_targets_are_called_and_bodies_are_capped(local_server):
    with public_client(allow_private=True) as client:
        assert client.get(f"http://localhost:{local_server}/").status_code == 200
        with client.stream("GET", f"http://127.0.0.1:{local_server}/") as response:
            assert sum(len(c) for c in capped_bytes(response, 5000)) == 5000
        with client.stream("GET", f"http://127.0.0.1:{local_server}/") as response, pytest.raises(TooLarge):
            list(capped_bytes(response, 4999))


def test_a_dataset_url_whose_name_resolves_to_this_machine_names_the_setting(
    local_server, tmp_path, monkeypatch
):
    """Refused where the connection is made (the name passes check_url); the 422 still says how to allow
    it."""
    import socket

    from shared.datasets.remote import FetchLimits, fetch_zip

    real = socket.getaddrinfo

    def resolve(host: str, *args: object, **kwargs: object) -> list:
        return real("127.0.0.1" if host == "data.example.com" else host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    limits = FetchLimits(max_bytes=10_000, timeout_seconds=5, max_seconds=5)
    with pytest.raises(UnsafeURL) as err:
        fetch_zip(f"http://data.example.com:{local_server}/set.zip", tmp_path, limits)
    assert err.value.details == {"field": "dataset_url", "setting": "LORABAKE_ALLOW_PRIVATE_URLS"}
    assert "LORABAKE_ALLOW_PRIVATE_URLS" in err.value.message
