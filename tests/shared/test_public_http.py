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
    "url",
    [
        "ftp://example.com/x",
        "file:///etc/passwd",
        "http://",
        "not a url",
        "http://user:pw@example.com/",
        "http://127.0.0.1:8080/hook",
        "http://[::1]/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://localhost/hook",
        "http://api.localhost/hook",
    ],
)
def test_unsafe_urls_are_refused_naming_the_field(url):
    with pytest.raises(UnsafeURL) as err:
        check_url(url, "webhook")
    assert err.value.details == {"field": "webhook"} and err.value.status_code == 422


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
