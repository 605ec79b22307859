"""FastAPI dependencies: app state, a database session per request, and the caller's identity."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from api.state import AppState
from shared.errors import AuthError
from shared.keys import owner_for_key


def get_state(request: Request) -> AppState:
    return request.app.state.lorabake


def get_session(state: Annotated[AppState, Depends(get_state)]) -> Iterator[Session]:
    session = state.sessions()
    try:
        yield session
    finally:
        session.close()


def current_owner(request: Request, session: Annotated[Session, Depends(get_session)]) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise AuthError(
            "send an API key as 'Authorization: Bearer KEY' (create one with `lorabake create-key`)",
            code="missing_api_key",
        )
    owner = owner_for_key(session, key.strip())
    if owner is None:
        raise AuthError("the API key is unknown or revoked", code="invalid_api_key")
    return owner


# The parameters every route takes, named once.
Owner = Annotated[str, Depends(current_owner)]
State = Annotated[AppState, Depends(get_state)]
DB = Annotated[Session, Depends(get_session)]
