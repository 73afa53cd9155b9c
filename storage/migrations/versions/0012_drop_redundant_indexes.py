"""four indexes no query needs, each written for every email

Revision ID: 0012
Revises: 0011

Every index is one more page written (one more WAL frame on SQLite, more WAL on
PostgreSQL) for each row inserted or moved. Two of these repeat the leading column of a
unique constraint's index (``uq_messages_ticket_mid``, ``uq_sla_clocks_cycle`` lead with
``ticket_id``, so look-ups by ticket use those); ``events.kind`` is only ever read
together with ``ticket_id``, and ``raw_messages.reason`` only grouped within a status,
which ``ix_raw_messages_status_received`` finds.
"""
from collections.abc import Sequence

from alembic import op

revision: str = '0012'
down_revision: str | None = '0011'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DROPPED = (
    ('messages', 'ix_messages_ticket_id', ['ticket_id']),
    ('sla_clocks', 'ix_sla_clocks_ticket_id', ['ticket_id']),
    ('events', 'ix_events_kind', ['kind']),
    ('raw_messages', 'ix_raw_messages_reason', ['reason']),
)


def upgrade() -> None:
    # Plain DROP INDEX: no table copy (batch mode) is needed for it on SQLite.
    for table, name, _columns in DROPPED:
        op.drop_index(name, table_name=table)


def downgrade() -> None:
    for table, name, columns in DROPPED:
        op.create_index(name, table, columns, unique=False)
