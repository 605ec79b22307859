"""Alembic environment: the URL comes from lorabake settings (or -x url=...), metadata from
shared.db.models."""

from __future__ import annotations

from alembic import context
from sqlalchemy import engine_from_config, pool

from shared.db.models import Base

config = context.config
url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
if not url:
    from shared.settings import get_settings  # only when no URL was given: it reads LORABAKE_* env

    url = get_settings().database_url

target_metadata = Base.metadata


def run_offline() -> None:
    context.configure(url=url, target_metadata=target_metadata, literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connectable = engine_from_config({"sqlalchemy.url": url}, prefix="sqlalchemy.", poolclass=pool.NullPool)
    with connectable.connect() as connection:
        # batch mode lets later ALTERs run on SQLite too (one history for both databases)
        context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
