"""The OpenAPI document is good enough to generate clients from (issue 8): every operation in it (all of /v1/,
/healthz, /readyz, and the embedded mode's upload target) keeps these rules, one test each, and a failing
test lists every operation that breaks its rule, as `METHOD /path (operationId): what is wrong`.

1. operationId: chosen, not FastAPI's default `{function}{path}_{method}` (`create_job_v1_jobs_post`),
   which becomes a generated client's method name and changes whenever a path or a function is renamed;
   snake_case (`create_job`, `list_jobs`, `stream_job_events`); unique across the document.
2. summary: FastAPI always writes one, from the function's name when none is given ("Create Job"): that
   default restates the operationId and tells a client's doc comment nothing. So an operation needs a
   summary that is not that default, or a description (the handler's docstring or `description=`), or
   both; whitespace alone counts as neither.
3. error responses: an operation that needs an API key (it depends on api.deps.current_identity) documents
   401 (no key, or an unknown one) and 503 (the key is looked up in the database, which can be down), and
   403 too when it needs a scope or an admin key (api.deps.owner_with, admin_identity); an operation that
   takes input (a parameter or a body) documents 422. Every documented 4xx and 5xx response has the JSON
   body ErrorResponse, which is what every error leaves the API as (api/errors.py), so clients type their
   errors once (NOT_ERROR_BODIES names the exception: /readyz's 503 is its readiness report).
4. success responses: none documents an empty schema (`{}`), which generated clients type as `unknown` and
   parse as JSON: a file says its media type with `{"type": "string", "format": "binary"}`, an event
   stream says `text/event-stream`, JSON says its model.
5. every `$ref` names a schema the document has (routes that read their body themselves add theirs).

And what clients need of particular operations: the uploads that take multipart or JSON document both,
the JSON one as a model (POST /v1/jobs' `config` is TrainingConfig); a job's `status` and `kind`, the
`status` filters and webhook event types are enums of exactly the values the server uses.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.utils import generate_unique_id
from starlette.routing import BaseRoute

from api.app import create_app
from api.deps import admin_identity, current_identity
from shared.config.spec import TrainingConfig
from shared.db.models import JobKind, JobStatus
from shared.settings import Settings
from shared.webhooks.events import EVENT_TYPES

SNAKE_CASE = re.compile(r"[a-z][a-z0-9]*(?:_[a-z0-9]+)*")
ERROR_SCHEMA = {"$ref": "#/components/schemas/ErrorResponse"}
# error statuses whose body is deliberately not ErrorResponse: not ready answers with the readiness report
NOT_ERROR_BODIES = {("get", "/readyz", "503")}


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    spec: dict[str, Any]  # the operation object of the document
    route: APIRoute  # the route it was made from

    def __str__(self) -> str:
        return f"{self.method.upper()} {self.path} ({self.spec.get('operationId')})"

    def dependencies(self) -> list[Callable[..., Any]]:
        """Every dependency the route runs, nested ones included."""
        calls, pending = [], list(self.route.dependant.dependencies)
        while pending:
            dep = pending.pop()
            calls.append(dep.call)
            pending.extend(dep.dependencies)
        return calls

    def needs_key(self) -> bool:
        return current_identity in self.dependencies()

    def needs_scope(self) -> bool:
        return any(getattr(c, "scope", None) or c is admin_identity for c in self.dependencies())

    def takes_input(self) -> bool:
        return bool(self.spec.get("parameters")) or "requestBody" in self.spec

    def responses(self) -> dict[str, dict[str, Any]]:
        return self.spec.get("responses", {})


def _api_routes(routes: Sequence[BaseRoute]) -> Iterator[APIRoute]:
    """The app's APIRoutes; FastAPI >= 0.165 keeps an included router's routes in its `original_router`."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from _api_routes(inner.routes)
        elif isinstance(route, APIRoute):
            yield route


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> FastAPI:
    return create_app(Settings(data_dir=Path(tmp_path_factory.mktemp("data"))))


@pytest.fixture(scope="module")
def document(app: FastAPI) -> dict[str, Any]:
    """The document the API serves at /openapi.json, built the way `lorabake api` builds it."""
    return app.openapi()


@pytest.fixture(scope="module")
def operations(app: FastAPI, document: dict[str, Any]) -> list[Operation]:
    paths = document["paths"]
    found = [
        Operation(method.lower(), route.path_format, paths[route.path_format][method.lower()], route)
        for route in _api_routes(app.routes)
        if route.include_in_schema
        for method in sorted(route.methods)
    ]
    documented = {(m, p) for p, item in paths.items() for m in item}
    assert documented == {(op.method, op.path) for op in found}, "operations that no route made, or lost"
    for path in ("/healthz", "/readyz", "/v1/jobs", "/v1/jobs/{job_id}/events", "/v1/models"):
        assert path in paths, f"{path} is not in the document"
    return found


def _report(rule: str, failures: list[str]) -> None:
    if failures:
        pytest.fail(f"{len(failures)} break the rule {rule!r}:\n" + "\n".join(failures), pytrace=False)


def test_every_operation_has_a_chosen_unique_snake_case_operation_id(operations: list[Operation]) -> None:
    counts = Counter(op.spec.get("operationId") for op in operations)
    failures = []
    for op in operations:
        op_id = op.spec.get("operationId")
        if not op_id:
            failures.append(f"{op}: no operationId")
            continue
        if op_id == generate_unique_id(op.route):
            failures.append(f"{op}: FastAPI's default operationId (give the route operation_id=)")
        elif not SNAKE_CASE.fullmatch(op_id):
            failures.append(f"{op}: operationId is not snake_case")
        if counts[op_id] > 1:
            failures.append(f"{op}: operationId used by {counts[op_id]} operations")
    _report("operationId: chosen, snake_case, unique", failures)


def test_every_operation_has_a_written_summary_or_a_description(operations: list[Operation]) -> None:
    failures = []
    for op in operations:
        summary = (op.spec.get("summary") or "").strip()
        default = op.route.name.replace("_", " ").title()  # what FastAPI writes when no summary is given
        written = bool(summary) and summary != default
        if not written and not (op.spec.get("description") or "").strip():
            failures.append(f"{op}: only FastAPI's default summary {summary!r}, no description")
    _report("a summary other than FastAPI's default, or a description", failures)


def test_every_operation_documents_its_errors_as_error_responses(operations: list[Operation]) -> None:
    failures = []
    for op in operations:
        documented = set(op.responses())
        required = set()
        if op.needs_key():
            required |= {"401", "503"}
        if op.needs_scope():
            required.add("403")
        if op.takes_input():
            required.add("422")
        if missing := sorted(required - documented):
            failures.append(f"{op}: does not document {', '.join(missing)}")
        for status, response in sorted(op.responses().items()):
            if status[0] in "45" and (op.method, op.path, status) not in NOT_ERROR_BODIES:
                schema = response.get("content", {}).get("application/json", {}).get("schema")
                if schema != ERROR_SCHEMA:
                    failures.append(f"{op}: {status}'s body is {schema}, not ErrorResponse")
    _report("401/503 with a key, 403 with a scope, 422 with input; errors are ErrorResponse", failures)


def test_every_success_response_says_what_it_returns(operations: list[Operation]) -> None:
    failures = []
    for op in operations:
        for status, response in sorted(op.responses().items()):
            if status.startswith("2"):
                for media_type, content in response.get("content", {}).items():
                    if not content.get("schema"):
                        failures.append(f"{op}: {status} {media_type} has an empty schema")
    _report("no success response with an empty schema", failures)


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield node["$ref"]
        for value in node.values():
            yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def test_every_ref_names_a_schema_of_the_document(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    prefix = "#/components/schemas/"
    broken = sorted(
        {r for r in _refs(document) if not r.startswith(prefix) or r[len(prefix) :] not in schemas}
    )
    _report("every $ref resolves", broken)


def _schema(document: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """`node` with its $ref followed, and a nullable `anyOf [X, null]` read as X."""
    if "$ref" in node:
        return _schema(document, document["components"]["schemas"][node["$ref"].rsplit("/", 1)[1]])
    others = [n for n in node.get("anyOf", []) if n.get("type") != "null"]
    return _schema(document, others[0]) if len(others) == 1 else node


def _body(document: dict[str, Any], path: str) -> dict[str, dict[str, Any]]:
    """The request body's schema of each media type of POST `path`, $refs followed."""
    content = document["paths"][path]["post"]["requestBody"]["content"]
    return {media: _schema(document, c["schema"]) for media, c in content.items()}


@pytest.mark.parametrize(
    ("path", "fields", "required", "model_field", "model"),
    [
        (
            "/v1/jobs",
            {"dataset_id", "upload_id", "dataset_url", "config", "webhook", "webhook_events", "queue"},
            ["config"],
            "config",
            "TrainingConfig",
        ),
        ("/v1/datasets", {"upload_id", "dataset_url", "options"}, [], "options", "DatasetOptions"),
    ],
)
def test_uploads_document_their_multipart_and_their_json_body(
    document: dict[str, Any], path: str, fields: set[str], required: list[str], model_field: str, model: str
) -> None:
    bodies = _body(document, path)
    assert set(bodies) == {"multipart/form-data", "application/json"}
    form, body = bodies["multipart/form-data"], bodies["application/json"]
    assert set(body["properties"]) == fields
    files = {"dataset", "network_weights"} if path == "/v1/jobs" else {"dataset"}
    assert set(form["properties"]) == fields | files, "the JSON body takes what the form does, but files"
    assert body.get("required", []) == required
    # JSON carries the object itself, the form its JSON text
    assert _schema(document, body["properties"][model_field]) == document["components"]["schemas"][model]
    assert form["properties"][model_field]["type"] == "string"


def test_a_dry_run_documents_its_config_as_training_config(document: dict[str, Any]) -> None:
    (body,) = _body(document, "/v1/plan").values()
    assert set(body["properties"]) == {"config", "dataset_id", "counts"} and body["required"] == ["config"]
    schemas = document["components"]["schemas"]
    assert _schema(document, body["properties"]["config"]) == schemas["TrainingConfig"]
    assert _schema(document, body["properties"]["counts"]) == schemas["DatasetCounts"]


def test_training_config_is_documented_field_by_field(document: dict[str, Any]) -> None:
    config = document["components"]["schemas"]["TrainingConfig"]
    assert set(config["properties"]) == set(TrainingConfig.model_fields)
    assert config["required"] == [n for n, f in TrainingConfig.model_fields.items() if f.is_required()]


def test_a_caption_job_takes_its_config_and_a_webhook(document: dict[str, Any]) -> None:
    (body,) = _body(document, "/v1/datasets/{dataset_id}/caption").values()
    caption = document["components"]["schemas"]["CaptionConfig"]
    # model_family: what `method: auto` chooses for (the config the job records has the chosen method)
    assert set(body["properties"]) == set(caption["properties"]) | {
        "webhook",
        "webhook_events",
        "model_family",
    }
    assert body["required"] == ["method"]


def _enum(document: dict[str, Any], node: dict[str, Any]) -> list[str]:
    return _schema(document, node).get("enum", [])


def test_job_status_and_kind_are_enums_of_every_value(document: dict[str, Any]) -> None:
    job = document["components"]["schemas"]["JobOut"]["properties"]
    assert _enum(document, job["status"]) == [s.value for s in JobStatus]
    assert _enum(document, job["kind"]) == [k.value for k in JobKind]
    (status,) = [p for p in document["paths"]["/v1/jobs"]["get"]["parameters"] if p["name"] == "status"]
    assert _enum(document, status["schema"]) == [s.value for s in JobStatus]


def test_webhook_event_types_and_delivery_statuses_are_enums(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    events = list(EVENT_TYPES)
    assert _enum(document, schemas["EndpointCreate"]["properties"]["events"]["items"]) == events
    assert _enum(document, schemas["EndpointOut"]["properties"]["events"]["items"]) == events
    assert _enum(document, schemas["DeliveryOut"]["properties"]["event_type"]) == events
    for model in ("JobJsonBody", "CaptionJobRequest"):
        as_list = schemas[model]["properties"]["webhook_events"]["anyOf"][0]
        assert _enum(document, as_list["items"]) == events, model
    statuses = ["pending", "delivered", "failed"]
    assert _enum(document, schemas["DeliveryOut"]["properties"]["status"]) == statuses
    operation = document["paths"]["/v1/webhooks/{webhook_id}/deliveries"]["get"]
    (status,) = [p for p in operation["parameters"] if p["name"] == "status"]
    assert _enum(document, status["schema"]) == statuses
