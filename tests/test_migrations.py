"""The Alembic migrations build exactly the schema the models describe, on SQLite and
PostgreSQL: no model change ships without its migration."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from postdesk.storage.db import make_engine
from postdesk.storage.migrate import upgrade
from postdesk.storage.models import Base
from tests.support import backend, backend_param


@pytest.mark.parametrize("kind", [backend_param("sqlite"), backend_param("postgres-redis")])
def test_migrations_match_models(kind: str, tmp_path: Path) -> None:
    with backend(kind, tmp_path) as be:
        engine = make_engine(be.database_url)
        try:
            upgrade(engine)
            with engine.connect() as conn:
                diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        finally:
            engine.dispose()
    assert diff == []
