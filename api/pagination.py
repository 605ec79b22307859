"""Newest-first keyset pagination: the cursor is the id of the last row of the previous page."""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy import Select, tuple_
from sqlalchemy.orm import Session

from shared.errors import LorabakeError
from shared.models import is_object_id

Row = TypeVar("Row")


def newest_first_page(
    session: Session, query: Select, model: type[Row], owner: str, cursor: str | None, limit: int
) -> tuple[list[Row], str | None]:
    table: Any = model
    if cursor:
        anchor = session.get(model, cursor) if is_object_id(cursor) else None
        if anchor is None or anchor.owner != owner:
            raise LorabakeError(
                "unknown cursor", code="invalid_cursor", details={"field": "cursor"}, status_code=422
            )
        query = query.where(tuple_(table.created_at, table.id) < tuple_(anchor.created_at, anchor.id))
    rows = list(session.scalars(query.order_by(table.created_at.desc(), table.id.desc()).limit(limit + 1)))
    next_cursor = rows[limit - 1].id if len(rows) > limit else None  # type: ignore[attr-defined]
    return rows[:limit], next_cursor
