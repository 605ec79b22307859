"""The web page's routes on the API (api/web_page.py), in-process: `/` needs no key, a missing build is a
short page (never a 500), and neither /docs, /openapi.json nor /v1 change."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.app import create_app
from api.web_page import DIST, install_web_page
from shared.settings import Settings


def app_for(tmp_path: Path) -> FastAPI:
    return create_app(Settings(data_dir=tmp_path / "data"))


def test_the_built_page_is_served_without_a_key(tmp_path: Path, web_build: Path) -> None:
    client = TestClient(app_for(tmp_path))
    page = client.get("/")
    assert page.status_code == 200, page.text
    assert page.headers["content-type"].startswith("text/html")
    assert page.headers["cache-control"] == "no-cache"
    assert '<div id="app">' in page.text
    assets = sorted((DIST / "assets").iterdir())
    assert assets, "the build has no assets"
    for asset in assets:
        assert f"/assets/{asset.name}" in page.text  # index.html names every asset of its build
        got = client.get(f"/assets/{asset.name}")
        assert got.status_code == 200 and got.content == asset.read_bytes()
        assert "immutable" in got.headers["cache-control"]
    missing = client.get("/assets/no-such-file.js")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    assert client.get("/assets/../../web_page.py").status_code == 404


def test_without_a_build_the_page_says_how_to_make_one(tmp_path: Path) -> None:
    app = FastAPI()
    install_web_page(app, dist=tmp_path / "no-dist")
    client = TestClient(app)
    page = client.get("/")
    assert page.status_code == 200 and "scripts/build-web" in page.text
    assert client.get("/assets/index.js").status_code == 404


def test_the_api_around_the_page_is_unchanged(tmp_path: Path, web_build: Path) -> None:
    client = TestClient(app_for(tmp_path))
    schema = client.get("/openapi.json").json()
    assert "/" not in schema["paths"] and not any(p.startswith("/assets") for p in schema["paths"])
    assert client.get("/docs").status_code == 200
    unauthorized = client.get("/v1/jobs")
    assert unauthorized.status_code == 401 and unauthorized.json()["error"]["code"] == "missing_api_key"
