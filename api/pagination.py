"""Newest-first keyset pagination: the cursor is the id of the last row of the previous page."""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

from fastapi import Query
from sqlalchemy import Select, tuple_
from sqlalchemy.orm import Session

from shared.db.models import is_object_id
from shared.errors import LorabakeError

Row = TypeVar("Row")

# Documented as our ids look; checked by newest_first_page, which names the field in its 422.
Cursor = Annotated[
    str | None,
    Query(description="`next_cursor` of the previous page", json_schema_extra={"pattern": "^[0-9a-f]{32}$"}),
]


def newest_first_page(
    session: Session, query: Select, model: type[Row], owner: str | None, cursor: str | None, limit: int
) -> tuple[list[Row], str | None]:
    """A page of `query`; the cursor must be a row of `owner`'s (of anyone's for None: an admin's view)."""
    table: Any = model
    if cursor is not None:
        anchor = session.get(model, cursor) if is_object_id(cursor) else None
        if anchor is None or (owner is not None and anchor.owner != owner):
            raise LorabakeError(
                "unknown cursor", code="invalid_cursor", details={"field": "cursor"}, status_code=422
            )
        query = query.where(tuple_(table.created_at, table.id) < tuple_(anchor.created_at, anchor.id))
    rows = list(session.scalars(query.order_by(table.created_at.desc(), table.id.desc()).limit(limit + 1)))
    next_cursor = rows[limit - 1].id if len(rows) > limit else None  # type: ignore[attr-defined]
    return rows[:limit], next_cursor
