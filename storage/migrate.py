"""Schema migrations (Alembic), run from code so the installed package needs no
alembic.ini in the working directory.

Every command checks that the schema is current before it starts; that check (and
``status``) reads the version table and the migration scripts' revision lines itself, so
that a command on a current database never imports Alembic's runtime (with Mako and
Pygments, ~0.1 s of CPU at every start). Alembic is imported where it is needed: to
upgrade, and to answer whenever the quick reading cannot (several stored revisions, scripts
it cannot read), with its own errors."""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine, inspect, text

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig

MIGRATIONS = Path(__file__).parent / "migrations"
# Alembic's default version table (env.py does not name another one).
VERSION_TABLE = "alembic_version"


def alembic_config(engine: Engine) -> AlembicConfig:
    # Imported here, not at the top: only an upgrade or a full check needs Alembic.
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False))
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


def head_revision(engine: Engine) -> str | None:
    """The scripts' head, as Alembic's ``ScriptDirectory.get_current_head`` says it
    (which raises when there are several)."""
    head = script_head()
    if head is not None:
        return head
    from alembic.script import ScriptDirectory  # see alembic_config

    return ScriptDirectory.from_config(alembic_config(engine)).get_current_head()


def stored_revisions(engine: Engine) -> tuple[str, ...]:
    """The revisions in the version table; none for a database never migrated."""
    with engine.connect() as conn:
        if not inspect(conn).has_table(VERSION_TABLE):
            return ()
        rows = conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars()
        return tuple(rows)


@cache
def script_head() -> str | None:
    """The one revision of the migration scripts that no other script revises, read from
    their ``revision`` and ``down_revision`` lines; None when there is not exactly one or
    a script does not say plainly (Alembic then decides)."""
    revisions: set[str] = set()
    revised: set[str] = set()
    for path in sorted((MIGRATIONS / "versions").glob("*.py")):
        values: dict[str, object] = {}
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.Assign) and len(node.targets) == 1:
                target, value = node.targets[0], node.value
            elif isinstance(node, ast.AnnAssign) and node.value is not None:
                target, value = node.target, node.value
            else:
                continue
            if isinstance(target, ast.Name) and target.id in ("revision", "down_revision"):
                try:
                    values[target.id] = ast.literal_eval(value)
                except ValueError:
                    return None
        revision, down = values.get("revision"), values.get("down_revision")
        if not isinstance(revision, str):
            return None
        revisions.add(revision)
        if isinstance(down, str):
            revised.add(down)
        elif isinstance(down, tuple | list) and all(isinstance(d, str) for d in down):
            revised.update(down)
        elif down is not None:
            return None
    heads = revisions - revised
    return heads.pop() if len(heads) == 1 else None


def is_up_to_date(engine: Engine) -> bool:
    return current_revision(engine) == head_revision(engine)
