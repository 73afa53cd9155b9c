"""Schema migrations (Alembic), run from code so the installed package needs no
alembic.ini in the working directory.

Every command checks that the schema is current before it starts; that check (and
``status``) reads the version table and compares it with ``SCHEMA_HEAD``, so that a
command on a current database never imports Alembic's runtime (with Mako and Pygments,
~0.1 s of CPU at every start). Alembic is imported where it is needed: to upgrade, and to
answer whenever the quick reading cannot (several stored revisions), with its own
errors."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine, inspect, text

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig

MIGRATIONS = Path(__file__).parent / "migrations"
# The newest migration's revision, said once here so that the schema check needs no
# Alembic; a new migration updates it (tests/test_migrations.py compares it with Alembic's
# own head, so the two cannot drift apart unnoticed).
SCHEMA_HEAD = "0012"
# Alembic's default version table (env.py does not name another one).
VERSION_TABLE = "alembic_version"


def alembic_config(engine: Engine) -> AlembicConfig:
    # Imported here, not at the top: only an upgrade or a full check needs Alembic.
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    # Alembic keeps its options in a ConfigParser, which reads "%" as the start of an
    # interpolation: a URL with an escaped character (a password with "@", a socket
    # directory in the query, a data directory named "50%") is stored with "%%".
    url = engine.url.render_as_string(hide_password=False)
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    from alembic import command  # see alembic_config

    cfg = alembic_config(engine)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def current_revision(engine: Engine) -> str | None:
    """The database's revision, as Alembic's ``MigrationContext.get_current_revision``
    says it (which raises when the version table holds more than one)."""
    stored = stored_revisions(engine)
    if len(stored) <= 1:
        return stored[0] if stored else None
    from alembic.runtime.migration import MigrationContext  # see alembic_config

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision() -> str:
    """The revision a current database is at: the newest migration's (``SCHEMA_HEAD``)."""
    return SCHEMA_HEAD


def stored_revisions(engine: Engine) -> tuple[str, ...]:
    """The revisions in the version table; none for a database never migrated."""
    with engine.connect() as conn:
        if not inspect(conn).has_table(VERSION_TABLE):
            return ()
        rows = conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars()
        return tuple(rows)


def is_up_to_date(engine: Engine) -> bool:
    return current_revision(engine) == SCHEMA_HEAD
