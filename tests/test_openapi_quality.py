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
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.routing import APIRoute
from fastapi.utils import generate_unique_id
from starlette.routing import BaseRoute

from api.app import create_app
from api.deps import admin_identity, current_identity
from shared.settings import Settings

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
def operations(tmp_path_factory: pytest.TempPathFactory) -> list[Operation]:
    """The document the API serves at /openapi.json, built the way `lorabake api` builds it."""
    app = create_app(Settings(data_dir=Path(tmp_path_factory.mktemp("data"))))
    paths = app.openapi()["paths"]
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
