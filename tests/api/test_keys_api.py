"""/v1/keys and scopes: admin keys make and revoke tenants' keys over the API; a key without a route's scope
gets a 403 naming it, on every route; a tenant never sees another owner's keys."""

from __future__ import annotations

import uuid

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from api.app import create_app
from shared.db.keys import SCOPES, create_api_key
from shared.db.session import session_scope
from tests.support.stack import settings_from_env

# Routes every valid key may use: the same for every tenant.
OPEN_TO_ANY_KEY = {
    ("GET", "/v1/models"),
    ("GET", "/v1/presets"),
    ("GET", "/v1/presets/{name}"),
    ("POST", "/v1/configs/kohya"),
    ("POST", "/v1/configs/sd-scripts"),
    ("GET", "/v1/keys"),
    ("GET", "/v1/keys/{key_id}"),
    ("DELETE", "/v1/keys/{key_id}"),
    ("GET", "/v1/usage"),  # the owner's account: any of its keys reads it (an admin's, any owner's)
}
ADMIN_ONLY = {("POST", "/v1/keys")}
READS_BY_POST = {("POST", "/v1/plan")}  # a dry run: it stores nothing


def api_routes(app) -> list[APIRoute]:  # noqa: ANN001
    found = []
    for route in app.routes:
        inner = getattr(route, "original_router", None)
        found.extend(inner.routes if inner is not None else [route])
    return [r for r in found if isinstance(r, APIRoute)]


def required_scope(route: APIRoute) -> str | None:
    pending = list(route.dependant.dependencies)
    while pending:
        dep = pending.pop()
        scope = getattr(dep.call, "scope", None)
        if scope is not None:
            return scope
        pending.extend(dep.dependencies)
    return None


def admin_headers(pg_url: str) -> dict[str, str]:
    with session_scope(pg_url) as session:
        key = create_api_key(session, owner=f"ops-{uuid.uuid4().hex[:6]}", admin=True)
    return {"Authorization": f"Bearer {key}"}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_every_v1_route_needs_a_scope_unless_it_is_the_same_for_every_key(client):
    for route in api_routes(client.app):
        if not route.path.startswith("/v1/"):
            continue
        for method in route.methods - {"HEAD"}:
            scope = required_scope(route)
            if (method, route.path) in OPEN_TO_ANY_KEY | ADMIN_ONLY:
                assert scope is None, (method, route.path)
            else:
                assert scope in SCOPES, (method, route.path)
                resource = route.path.split("/")[2]
                # a plan is a dry-run job, a generation a job of its own; an upload is where a dataset's zip
                # goes on its way in
                expected = {
                    "plan": "jobs",
                    "queue": "jobs",
                    "generations": "jobs",
                    "uploads": "datasets",
                }.get(resource, resource)
                assert scope.split(":")[0] == expected, (method, route.path, scope)
                reads = method == "GET" or (method, route.path) in READS_BY_POST
                assert scope.endswith(":read") == reads, (method, route.path, scope)


def test_a_key_without_the_scope_gets_a_403_naming_it_on_every_scoped_route(client, pg_url):
    admin = admin_headers(pg_url)
    scoped = [
        (method, route.path, required_scope(route))
        for route in api_routes(client.app)
        for method in route.methods - {"HEAD"}
        if route.path.startswith("/v1/") and required_scope(route) is not None
    ]
    assert len(scoped) >= 15
    keys: dict[str, dict] = {}
    for method, path, scope in scoped:
        if scope not in keys:
            others = [s for s in SCOPES if s != scope]
            made = client.post("/v1/keys", headers=admin, json={"owner": "limited", "scopes": others})
            assert made.status_code == 201, made.text
            keys[scope] = bearer(made.json()["key"])
        url = path.replace("{job_id}", uuid.uuid4().hex).replace("{dataset_id}", uuid.uuid4().hex)
        url = url.replace("{artifact_id}", uuid.uuid4().hex).replace("{image_id}", uuid.uuid4().hex)
        response = client.request(method, url, headers=keys[scope])
        assert response.status_code == 403, (method, path, response.text)
        assert response.json()["error"] == {
            "code": "missing_scope",
            "message": f"this API key lacks the scope {scope!r}",
            "details": {"scope": scope, "key_id": response.json()["error"]["details"]["key_id"]},
        }


def test_an_admin_makes_a_tenant_key_shown_once_that_works_and_stops_when_revoked(client, pg_url):
    admin = admin_headers(pg_url)
    tenant = f"tenant-{uuid.uuid4().hex[:6]}"
    made = client.post(
        "/v1/keys",
        headers=admin,
        json={
            "owner": tenant,
            "name": "web app",
            "scopes": ["jobs:read"],
            "limits": {"max_queued": 2, "max_running": 1, "priority": 3},
        },
    )
    assert made.status_code == 201, made.text
    created = made.json()
    key = created["key"]
    assert key.startswith("lb_") and created["prefix"] == key[:10]
    assert (created["owner"], created["scopes"], created["admin"]) == (tenant, ["jobs:read"], False)
    assert created["limits"] == {
        "max_queued": 2,
        "max_running": 1,
        "priority": 3,
        "submissions_per_minute": None,
        "max_retention_days": None,
        "gpu_seconds_per_month": None,
        "storage_bytes": None,
    }
    assert created["last_used_at"] is None

    assert client.get("/v1/jobs", headers=bearer(key)).status_code == 200
    listed = client.get("/v1/keys", headers=admin, params={"owner": tenant}).json()["items"]
    assert [k["id"] for k in listed] == [created["id"]]
    assert "key" not in listed[0]  # never shown again
    assert listed[0]["last_used_at"] is not None  # it was used just now
    assert client.post("/v1/jobs", headers=bearer(key), json={}).status_code == 403  # no jobs:write

    revoked = client.delete(f"/v1/keys/{created['id']}", headers=admin)
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    gone = client.get("/v1/jobs", headers=bearer(key))
    assert gone.status_code == 401 and gone.json()["error"]["code"] == "invalid_api_key"
    assert client.get("/v1/keys", headers=admin, params={"owner": tenant}).json()["items"] == []
    with_revoked = client.get("/v1/keys", headers=admin, params={"owner": tenant, "include_revoked": True})
    assert [k["id"] for k in with_revoked.json()["items"]] == [created["id"]]


def test_a_tenant_sees_and_revokes_only_its_own_owners_keys(client, pg_url):
    admin = admin_headers(pg_url)
    made = {
        owner: client.post("/v1/keys", headers=admin, json={"owner": owner}).json()
        for owner in (f"a-{uuid.uuid4().hex[:6]}", f"b-{uuid.uuid4().hex[:6]}")
    }
    (a, a_key), (b, b_key) = [(o, k) for o, k in made.items()]
    second_a = client.post("/v1/keys", headers=admin, json={"owner": a, "name": "second"}).json()

    mine = client.get("/v1/keys", headers=bearer(a_key["key"])).json()["items"]
    assert {k["id"] for k in mine} == {a_key["id"], second_a["id"]}
    assert client.get("/v1/keys", headers=bearer(a_key["key"]), params={"owner": b}).status_code == 403
    assert client.get(f"/v1/keys/{b_key['id']}", headers=bearer(a_key["key"])).status_code == 404
    assert client.delete(f"/v1/keys/{b_key['id']}", headers=bearer(a_key["key"])).status_code == 404
    assert client.get("/v1/jobs", headers=bearer(b_key["key"])).status_code == 200  # untouched
    made_by_tenant = client.post("/v1/keys", headers=bearer(a_key["key"]), json={"owner": a})
    assert made_by_tenant.status_code == 403 and made_by_tenant.json()["error"]["details"]["scope"] == "admin"
    assert client.delete(f"/v1/keys/{second_a['id']}", headers=bearer(a_key["key"])).status_code == 200
    assert client.get("/v1/jobs", headers=bearer(second_a["key"])).status_code == 401


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"owner": "x", "scopes": ["jobs:delete"]}, "scopes"),
        ({"owner": "../etc"}, "owner"),
        ({"owner": "x", "limits": {"max_queued": -1}}, "limits.max_queued"),
        ({"owner": "x", "limits": {"max_running": 0}}, "limits.max_running"),
        ({"owner": "x", "limits": {"priority": 1000}}, "limits.priority"),
        ({"owner": "x", "limits": {"storage_bytes": -1}}, "limits.storage_bytes"),
        ({"owner": "x", "surprise": 1}, "surprise"),
    ],
)
def test_bad_key_requests_are_422_naming_the_field(client, pg_url, body, field):
    response = client.post("/v1/keys", headers=admin_headers(pg_url), json=body)
    assert response.status_code == 422, response.text
    details = response.json()["error"]["details"]
    named = [f["field"] for f in details.get("fields", [])] + [details.get("field")]
    assert field in named, details


def test_revocation_reaches_another_api_process_within_the_auth_cache(env, pg_url):
    admin = admin_headers(pg_url)
    settings = settings_from_env({**env, "LORABAKE_AUTH_CACHE_SECONDS": "0"})
    with TestClient(create_app(settings)) as first, TestClient(create_app(settings)) as second:
        made = first.post("/v1/keys", headers=admin, json={"owner": "replicas"}).json()
        assert second.get("/v1/jobs", headers=bearer(made["key"])).status_code == 200
        assert first.delete(f"/v1/keys/{made['id']}", headers=admin).status_code == 200
        assert second.get("/v1/jobs", headers=bearer(made["key"])).status_code == 401
