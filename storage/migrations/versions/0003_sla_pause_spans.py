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


def downgrade() -> None:
    with op.batch_alter_table('sla_pauses', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_sla_pauses_ticket_id'))
    op.drop_table('sla_pauses')
