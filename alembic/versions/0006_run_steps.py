"""run_steps: what each step of a symbol's latest run did

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04 20:00:00
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'run_steps',
        sa.Column('symbol', sa.String(length=32), nullable=False),
        sa.Column('step', sa.String(length=32), nullable=False),
        sa.Column('outcome', sa.String(length=16), nullable=False),
        sa.Column('detail', sa.Text(), nullable=True),
        sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('(CURRENT_TIMESTAMP)'),
                  nullable=False),
        sa.PrimaryKeyConstraint('symbol', 'step'),
    )


def downgrade() -> None:
    op.drop_table('run_steps')
