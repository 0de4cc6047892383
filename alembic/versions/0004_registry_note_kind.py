"""symbol_registry.note_kind: what error_message is (error, warning, stream_stale)

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04 18:40:00
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('symbol_registry', schema=None) as batch_op:
        batch_op.add_column(sa.Column('note_kind', sa.String(length=16), nullable=True))
    # Rows written before this column said their kind only through the message's prefix.
    op.execute("UPDATE symbol_registry SET note_kind = CASE "
               "WHEN error_message LIKE 'warning: %' THEN 'warning' "
               "WHEN error_message LIKE 'stream stale:%' THEN 'stream_stale' "
               "ELSE 'error' END WHERE error_message IS NOT NULL")


def downgrade() -> None:
    with op.batch_alter_table('symbol_registry', schema=None) as batch_op:
        batch_op.drop_column('note_kind')
