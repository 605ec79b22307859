"""The web page's tests: its build (scripts/build-web, which scripts/test runs first, is a no-op when it is
up to date) and Debian's chromium, driven by Playwright with `executable_path` (Playwright's own browser
download is never used). Missing tools fail the tests, never skip them."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def web_build() -> Path:
    if shutil.which("npm") is None:
        pytest.fail("npm is not on PATH: the web page (api/web) needs Node.js >= 20.19", pytrace=False)
    done = subprocess.run(
        [str(ROOT / "scripts" / "build-web")], capture_output=True, text=True, timeout=600, cwd=ROOT
    )
    if done.returncode != 0:
        pytest.fail(f"scripts/build-web failed:\n{done.stdout}{done.stderr}", pytrace=False)
    dist = ROOT / "api" / "web" / "dist"
    assert (dist / "index.html").is_file()
    return dist


@pytest.fixture(scope="session")
def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("no chromium: `apt-get install -y chromium` (.ci/run does it)", pytrace=False)
    return path
