"""`GET /metrics`: open like /healthz unless LORABAKE_METRICS_TOKEN is set, then `Authorization: Bearer
TOKEN` is required. Left out of the OpenAPI schema: it is for Prometheus, not for API clients."""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from starlette.concurrency import run_in_threadpool

from api.deps import State
from shared.errors import AuthError

router = APIRouter(tags=["metrics"])


def token_matches(authorization: str, token: str) -> bool:
    scheme, _, given = authorization.partition(" ")
    # compare_digest: how long the comparison takes says nothing about the token
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request, state: State) -> Response:
    token = state.settings.metrics_token
    if token and not token_matches(request.headers.get("authorization", ""), token):
        raise AuthError(
            "send the metrics token as 'Authorization: Bearer TOKEN'", code="invalid_metrics_token"
        )
    registry: CollectorRegistry = request.app.state.metrics_registry
    encode, content_type = choose_encoder(request.headers.get("accept"))
    # the collectors query the database and the broker: in a thread, never on the event loop
    body = await run_in_threadpool(encode, registry)
    return Response(body, media_type=content_type)
