"""One Alembic history for Postgres and SQLite: it upgrades, downgrades, and matches the ORM models."""

from __future__ import annotations

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from shared.db.migrate import alembic_config, upgrade
from shared.db.models import Base
from shared.db.session import get_engine
from tests.support import services


def drift(url: str) -> list:
    with get_engine(url).connect() as conn:
        return compare_metadata(MigrationContext.configure(conn), Base.metadata)


@pytest.fixture(params=["sqlite", "postgres"])
def empty_db_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'm.db'}"
        return
    url, name = services.create_pg_database()
    yield url
    get_engine(url).dispose()
    services.drop_pg_database(name)


def test_history_round_trips_and_matches_the_models(empty_db_url):
    upgrade(empty_db_url)
    assert drift(empty_db_url) == []
    command.downgrade(alembic_config(empty_db_url), "base")
    upgrade(empty_db_url)
    assert drift(empty_db_url) == []
