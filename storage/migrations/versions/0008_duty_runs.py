"""the last run of each scheduler duty (postdesk status)

Revision ID: 0008
Revises: 0003
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import postdesk.storage.models

revision: str = '0008'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'duty_runs',
        sa.Column('duty', sa.String(length=100), nullable=False),
        sa.Column('holder', sa.String(length=200), nullable=False),
        sa.Column('started_at', postdesk.storage.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column('finished_at', postdesk.storage.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column('error', sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint('duty', name=op.f('pk_duty_runs')),
    )


def downgrade() -> None:
    op.drop_table('duty_runs')
