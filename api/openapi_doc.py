"""The OpenAPI document, with what FastAPI cannot infer: the bearer scheme of our own auth dependency,
required by every operation that answers 401 (so generated SDKs set the header themselves), and the schemas
of request bodies that routes read by hand (those taking multipart or JSON), which FastAPI never sees."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

BEARER = {"type": "http", "scheme": "bearer", "description": "an API key (`lorabake create-key`, /v1/keys)"}
SCHEMA_REF = "#/components/schemas/{model}"
_BODY_MODELS: dict[str, type[BaseModel]] = {}  # filled as the route modules are imported


def schema_ref(model: type[BaseModel]) -> dict[str, str]:
    """A `$ref` to `model` for a route's `openapi_extra`; the document then carries its schema (and those
    it refers to) among its components."""
    known = _BODY_MODELS.setdefault(model.__name__, model)
    if known is not model:
        raise ValueError(f"two request body models are named {model.__name__}")
    return {"$ref": SCHEMA_REF.format(model=model.__name__)}


def _add_body_models(schemas: dict[str, Any]) -> None:
    if not _BODY_MODELS:
        return
    _, top = models_json_schema([(m, "validation") for m in _BODY_MODELS.values()], ref_template=SCHEMA_REF)
    for name, definition in top.get("$defs", {}).items():
        # a model FastAPI documents too has the same schema; another one of that name would replace it
        if schemas.setdefault(name, definition) != definition:
            raise ValueError(f"two different schemas are named {name} in the OpenAPI document")


def install_security_scheme(app: FastAPI) -> None:
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        components = schema.setdefault("components", {})
        _add_body_models(components.setdefault("schemas", {}))
        components.setdefault("securitySchemes", {})["bearer"] = BEARER
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                if isinstance(operation, dict) and "401" in operation.get("responses", {}):
                    operation["security"] = [{"bearer": []}]
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
