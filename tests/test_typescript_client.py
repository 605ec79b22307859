"""A TypeScript client generated from the app's own OpenAPI document type-checks clients/typescript/example.ts
(submit, watch, download: docs/typescript.md), so a schema change that would break TypeScript clients fails
here.

The npm packages are pinned in clients/typescript/package-lock.json and installed by scripts/bootstrap-node,
which scripts/test runs: this test never touches the network, and when they are missing it fails, never
skips (a skipped check in CI is a check that silently stopped running).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from api.app import create_app
from shared.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
CLIENT = ROOT / "clients" / "typescript"
BIN = CLIENT / "node_modules" / ".bin"
STAMP = CLIENT / "node_modules" / ".lorabake-installed"  # written by scripts/bootstrap-node
GENERATED = CLIENT / "generated" / "schema.ts"  # git-ignored: always made afresh from the schema
TIMEOUT_SECONDS = 120  # each tool; both take a few seconds on a 2-core CI machine


def _require_installed() -> None:
    if shutil.which("node") is None:
        pytest.fail("node is not on PATH: the TypeScript client check needs Node.js >= 20", pytrace=False)
    if not (BIN / "openapi-typescript").exists() or not (BIN / "tsc").exists():
        pytest.fail(
            f"{BIN} lacks openapi-typescript and tsc: run scripts/bootstrap-node (scripts/test runs it)",
            pytrace=False,
        )
    lock = hashlib.sha256((CLIENT / "package-lock.json").read_bytes()).hexdigest()
    if not STAMP.exists() or STAMP.read_text().strip() != lock:
        pytest.fail(
            "clients/typescript/node_modules was not installed from the current package-lock.json: "
            "run scripts/bootstrap-node (scripts/test runs it)",
            pytrace=False,
        )


def _run(step: str, *args: str | Path) -> None:
    done = subprocess.run(
        [str(a) for a in args], cwd=CLIENT, capture_output=True, text=True, timeout=TIMEOUT_SECONDS
    )
    if done.returncode != 0:
        pytest.fail(f"{step} failed (exit {done.returncode}):\n{done.stdout}{done.stderr}", pytrace=False)


def test_the_generated_client_type_checks_the_example(tmp_path: Path) -> None:
    _require_installed()
    # the document the API serves at /openapi.json, built the way `lorabake api` builds it, without a server
    schema = tmp_path / "openapi.json"
    schema.write_text(json.dumps(create_app(Settings(data_dir=tmp_path / "data")).openapi()))

    GENERATED.unlink(missing_ok=True)  # never type-check against the output of an earlier run
    GENERATED.parent.mkdir(exist_ok=True)
    _run("openapi-typescript", BIN / "openapi-typescript", schema, "--output", GENERATED)
    _run("tsc --noEmit (clients/typescript/example.ts against the generated client)", BIN / "tsc", "--noEmit")
