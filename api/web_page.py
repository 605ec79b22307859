"""The web page at `/`: the files Vite builds from api/web/ into api/web/dist (scripts/build-web).

The page is static (index.html plus hashed assets) and talks only to the public API with the key the user
types, so serving it needs no key and no torch. Without a build, `/` answers a short page saying how to make
one, never a 500. None of these routes is in the OpenAPI document.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse, HTMLResponse, Response
from starlette.staticfiles import StaticFiles

DIST = Path(__file__).resolve().parent / "web" / "dist"

NOT_BUILT = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>lorabake</title></head>
<body style="font-family: system-ui, sans-serif; max-width: 40rem; margin: 3rem auto; line-height: 1.5">
<h1>lorabake</h1>
<p>The web page is not built. Build it with <code>scripts/build-web</code> (needs Node.js and npm;
<code>scripts/run</code> does it for you), then reload.</p>
<p>The API works without it: <a href="/docs">/docs</a>, <a href="/openapi.json">/openapi.json</a>.</p>
</body></html>
"""


def install_web_page(app: FastAPI, dist: Path = DIST) -> None:
    """GET / (index.html) and /assets/* (hashed, cached for good). Looked up per request, so a build made
    while the API runs is served at once."""

    @app.get("/", include_in_schema=False)
    async def web_page() -> Response:
        index = dist / "index.html"
        if not index.is_file():
            return HTMLResponse(NOT_BUILT, headers={"Cache-Control": "no-store"})
        # index.html names the hashed assets of its build: always revalidated, so a new build shows at once
        return FileResponse(index, media_type="text/html", headers={"Cache-Control": "no-cache"})

    app.mount("/assets", _ImmutableAssets(directory=dist / "assets", check_dir=False), name="web-assets")


class _ImmutableAssets(StaticFiles):
    """Vite names each asset after its content hash, so a name never changes content. A missing folder (no
    build yet) is a 404 per request rather than Starlette's RuntimeError (a 500)."""

    async def check_config(self) -> None:
        return None

    async def get_response(self, path: str, scope):  # noqa: ANN001, ANN201 (Starlette's signature)
        response = await super().get_response(path, scope)
        if response.status_code == 200:
            response.headers["Cache-Control"] = "public, max-age=31536000, immutable"
        return response
