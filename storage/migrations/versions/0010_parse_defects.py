"""what the lenient parser repaired in each stored email (messages.parse_defects)

Revision ID: 0010
Revises: 0008
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0010'
down_revision: str | None = '0008'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable, no default: messages stored before this revision were not examined.
    with op.batch_alter_table('messages') as batch:
        batch.add_column(sa.Column('parse_defects', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('messages') as batch:
        batch.drop_column('parse_defects')
