"""Alembic environment: run by ``postdesk db upgrade`` (storage.migrate) with a live
connection handed over in ``config.attributes``."""

from alembic import context
from sqlalchemy.engine import Connection

from postdesk.storage.models import Base

config = context.config
target_metadata = Base.metadata


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is None:
        from sqlalchemy import create_engine

        url = config.get_main_option("sqlalchemy.url")
        if url is None:
            raise SystemExit("no sqlalchemy.url and no connection; run `postdesk db upgrade`")
        engine = create_engine(url)
        with engine.connect() as conn:
            _run(conn)
        return
    _run(connection)


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite can't ALTER much
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("offline migrations are not supported; run `postdesk db upgrade`")
run_migrations_online()
