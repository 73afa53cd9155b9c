"""outbox drafts (render after commit) and the flood-check index

Revision ID: 0002
Revises: 0001
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('outbox') as batch:
        batch.add_column(sa.Column('draft', sa.JSON(), nullable=True))
        batch.alter_column('raw', existing_type=sa.LargeBinary(), nullable=True)
    op.create_index('ix_tickets_requester_created', 'tickets',
                    ['requester_email', 'created_at'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_tickets_requester_created', table_name='tickets')
    with op.batch_alter_table('outbox') as batch:
        batch.alter_column('raw', existing_type=sa.LargeBinary(), nullable=False)
        batch.drop_column('draft')
