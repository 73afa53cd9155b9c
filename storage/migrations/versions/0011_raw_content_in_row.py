"""small raw emails kept in their row (raw_messages.content)

Revision ID: 0011
Revises: 0010
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0011'
down_revision: str | None = '0010'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable: every raw email accepted before this revision is a file in the blob store.
    with op.batch_alter_table('raw_messages') as batch:
        batch.add_column(sa.Column('content', sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    # Rows whose bytes live only here would lose them: refuse rather than drop mail.
    kept = op.get_bind().execute(sa.text(
        "SELECT count(*) FROM raw_messages WHERE content IS NOT NULL")).scalar()
    if kept:
        raise RuntimeError(f"{kept} raw emails are kept only in raw_messages.content; "
                           "downgrading below 0011 would lose them")
    with op.batch_alter_table('raw_messages') as batch:
        batch.drop_column('content')
