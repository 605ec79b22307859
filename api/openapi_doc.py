"""The OpenAPI document, with what FastAPI cannot infer from our own auth dependency: the bearer scheme,
required by every operation that answers 401 (so generated SDKs set the header themselves)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

BEARER = {"type": "http", "scheme": "bearer", "description": "an API key (`lorabake create-key`, /v1/keys)"}


def install_security_scheme(app: FastAPI) -> None:
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        schema.setdefault("components", {}).setdefault("securitySchemes", {})["bearer"] = BEARER
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                if isinstance(operation, dict) and "401" in operation.get("responses", {}):
                    operation["security"] = [{"bearer": []}]
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
