"""Engine and session factory. One engine per process and URL, built from settings.

Every connection has bounds (connect timeout, TCP keepalives and user timeout, a statement timeout, a pool
wait limit), so a database that is down or unreachable turns into an error the caller can answer (503) or
retry, never into a request or worker that hangs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from shared.settings import EngineOptions


def _enable_sqlite_foreign_keys_and_wal(dbapi_conn, _record) -> None:  # noqa: ANN001
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    # API and worker write at once in the embedded mode: WAL + a busy timeout avoid "database is locked".
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def postgres_connect_args(options: EngineOptions) -> dict[str, object]:
    return {
        "connect_timeout": options.connect_timeout,
        # A peer that vanished (host down, cable cut) is noticed in seconds, not after the kernel's hours.
        "keepalives": 1,
        "keepalives_idle": 10,
        "keepalives_interval": 3,
        "keepalives_count": 3,
        "tcp_user_timeout": 15_000,
        "options": f"-c statement_timeout={options.statement_timeout_ms}",
    }


@lru_cache(maxsize=8)
def get_engine(database_url: str, options: EngineOptions = EngineOptions()) -> Engine:  # noqa: B008
    if database_url.startswith("sqlite"):
        engine = create_engine(database_url, connect_args={"check_same_thread": False, "timeout": 10})
        event.listen(engine, "connect", _enable_sqlite_foreign_keys_and_wal)
        return engine
    return create_engine(
        database_url,
        pool_pre_ping=False,
        pool_size=options.pool_size,
        max_overflow=options.max_overflow,
        pool_timeout=options.pool_timeout,
        pool_recycle=1800,
        connect_args=postgres_connect_args(options),
    )


def session_factory(database_url: str, options: EngineOptions = EngineOptions()) -> sessionmaker[Session]:  # noqa: B008
    return sessionmaker(get_engine(database_url, options), expire_on_commit=False)


@contextmanager
def session_scope(database_url: str) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    session = session_factory(database_url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
