"""SLA pauses stored as spans (sla_pauses), so a pause is measured on the calendar in force

Revision ID: 0003
Revises: 0002
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import postdesk.storage.models

revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'sla_pauses',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('ticket_id', sa.Integer(), nullable=False),
        sa.Column('started_at', postdesk.storage.models.UTCDateTime(timezone=True),
                  nullable=False),
        sa.Column('ended_at', postdesk.storage.models.UTCDateTime(timezone=True),
                  nullable=True),
        sa.ForeignKeyConstraint(['ticket_id'], ['tickets.id'],
                                name=op.f('fk_sla_pauses_ticket_id_tickets')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_sla_pauses')),
    )
    with op.batch_alter_table('sla_pauses', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_sla_pauses_ticket_id'), ['ticket_id'],
                              unique=False)
    _spans_from_status_events()


def _spans_from_status_events() -> None:
    """The pauses of tickets that existed before spans were kept, rebuilt from their
    ``status_changed`` events (into ``pending`` opens a span, out of it closes it), so a
    later priority change measures them on the new calendar too."""
    utc = postdesk.storage.models.UTCDateTime(timezone=True)
    events = sa.table('events', sa.column('id', sa.Integer()),
                      sa.column('ticket_id', sa.Integer()), sa.column('at', utc),
                      sa.column('kind', sa.String()), sa.column('data', sa.JSON()))
    pauses = sa.table('sla_pauses', sa.column('ticket_id', sa.Integer()),
                      sa.column('started_at', utc), sa.column('ended_at', utc))
    rows = op.get_bind().execute(
        sa.select(events.c.ticket_id, events.c.at, events.c.data)
        .where(events.c.kind == 'status_changed', events.c.ticket_id.is_not(None))
        .order_by(events.c.ticket_id, events.c.at, events.c.id))
    spans: list[dict[str, object]] = []
    open_since: dict[int, object] = {}
    for ticket_id, at, data in rows:
        data = data or {}
        if data.get('old') == 'pending' and ticket_id in open_since:
            spans.append({'ticket_id': ticket_id, 'started_at': open_since.pop(ticket_id),
                          'ended_at': at})
        if data.get('new') == 'pending':
            open_since[ticket_id] = at
    spans += [{'ticket_id': t, 'started_at': since, 'ended_at': None}
              for t, since in open_since.items()]
    if spans:
        op.bulk_insert(pauses, spans)


def downgrade() -> None:
    with op.batch_alter_table('sla_pauses', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_sla_pauses_ticket_id'))
    op.drop_table('sla_pauses')
