"""Reads on the hottest request path without a trip through the thread pool: an asyncio psycopg pool
(psycopg_pool, by psycopg's authors) on Postgres. Used for the one query every poll of a job makes; all
else goes through SQLAlchemy in threads. With SQLite (the embedded mode) there is none and callers use
the thread path.

The same bounds as shared.db.session: connect timeout, keepalives, a statement timeout; a dead connection
is dropped by the pool after its error (which the API answers 503). The wait for a pooled connection is
short: after an outage psycopg_pool reconnects with a doubling backoff (a connection can be 16 s or more
away once the database is back), and a poll must not hang on that, so `first` raises NoPooledConnection
and the caller reads through the thread path, which connects afresh.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy.sql import Select

from shared.settings import Settings

log = logging.getLogger("lorabake.api")

POOL_WAIT_SECONDS = 0.5  # a poll that waits longer than this goes the thread path instead


class NoPooledConnection(Exception):
    """No pooled connection came in time (the pool is busy or still reconnecting): read another way."""


class AsyncReader:
    def __init__(self, settings: Settings) -> None:
        from psycopg_pool import AsyncConnectionPool

        from shared.db.session import postgres_connect_args

        options = settings.engine_options
        dsn = settings.database_url.replace("postgresql+psycopg://", "postgresql://", 1)
        self.pool = AsyncConnectionPool(
            dsn,
            min_size=1,
            max_size=max(2, options.pool_size),
            timeout=options.pool_timeout,
            # autocommit: a read is one round trip, with no BEGIN before it and no ROLLBACK on return
            kwargs={**postgres_connect_args(options), "autocommit": True},
            open=False,
            name="lorabake-reads",
        )

    @classmethod
    def for_settings(cls, settings: Settings) -> AsyncReader | None:
        if not settings.database_url.startswith("postgresql+psycopg://"):
            return None
        return cls(settings)

    async def open(self) -> None:
        await self.pool.open(wait=False)  # a database that is down at start-up is retried in the background

    async def close(self) -> None:
        await self.pool.close()

    async def first(self, query: CompiledQuery, **params: Any) -> tuple | None:
        from psycopg_pool import PoolTimeout

        try:
            async with self.pool.connection(timeout=POOL_WAIT_SECONDS) as conn:
                cursor = await conn.execute(query.sql, params)
                return await cursor.fetchone()
        except PoolTimeout as exc:  # raised only by the wait: the query's own errors are OperationalError
            raise NoPooledConnection(str(exc)) from exc


class CompiledQuery:
    """A SQLAlchemy Core select rendered once for psycopg, so the SQL follows the ORM models."""

    def __init__(self, statement: Select) -> None:
        from sqlalchemy.dialects import postgresql

        self.sql = str(statement.compile(dialect=postgresql.psycopg.dialect()))
