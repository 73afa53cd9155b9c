"""IMAP mailbox state (failure episodes, unmoved mail) and per-message fetch strikes

Revision ID: 0006
Revises: 0003
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import postdesk.storage.models

revision: str = '0006'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC_DATETIME = postdesk.storage.models.UTCDateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        'imap_mailbox_states',
        sa.Column('mailbox', sa.String(length=200), nullable=False),
        sa.Column('last_sync_at', UTC_DATETIME, nullable=True),
        sa.Column('unmoved_count', sa.Integer(), nullable=False),
        sa.Column('unmoved_since', UTC_DATETIME, nullable=True),
        sa.Column('move_failing_since', UTC_DATETIME, nullable=True),
        sa.Column('move_error', sa.Text(), nullable=True),
        sa.Column('move_alerted_at', UTC_DATETIME, nullable=True),
        sa.Column('login_failing_since', UTC_DATETIME, nullable=True),
        sa.Column('login_error', sa.Text(), nullable=True),
        sa.Column('login_alerted_at', UTC_DATETIME, nullable=True),
        sa.Column('fetch_in_flight', sa.JSON(), nullable=True),
        sa.Column('updated_at', UTC_DATETIME, nullable=False),
        sa.PrimaryKeyConstraint('mailbox', name=op.f('pk_imap_mailbox_states')))
    op.create_table(
        'imap_message_strikes',
        sa.Column('mailbox', sa.String(length=200), nullable=False),
        sa.Column('uidvalidity', sa.BigInteger(), nullable=False),
        sa.Column('uid', sa.BigInteger(), nullable=False),
        sa.Column('suspect', sa.Boolean(), nullable=False),
        sa.Column('strikes', sa.Integer(), nullable=False),
        sa.Column('reason', sa.Text(), nullable=True),
        sa.Column('failed_at', UTC_DATETIME, nullable=True),
        sa.Column('updated_at', UTC_DATETIME, nullable=False),
        sa.PrimaryKeyConstraint('mailbox', 'uidvalidity', 'uid',
                                name=op.f('pk_imap_message_strikes')))


def downgrade() -> None:
    op.drop_table('imap_message_strikes')
    op.drop_table('imap_mailbox_states')
