"""sink_state and news

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04 20:00:00
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('sink_state',
    sa.Column('symbol', sa.String(length=32), nullable=False),
    sa.Column('day', sa.Date(), nullable=False),
    sa.Column('sink', sa.String(length=16), nullable=False),
    sa.Column('rows', sa.Integer(), nullable=False),
    sa.Column('digest', sa.String(length=64), nullable=False),
    sa.Column('written_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('symbol', 'day', 'sink')
    )
    op.create_table('news',
    sa.Column('id', sa.String(length=128), nullable=False),
    sa.Column('published_utc', sa.DateTime(timezone=True), nullable=False),
    sa.Column('source', sa.String(length=64), nullable=False),
    sa.Column('title', sa.Text(), nullable=False),
    sa.Column('url', sa.String(length=2048), nullable=True),
    sa.Column('tickers', sa.Text(), nullable=False),
    sa.Column('description', sa.Text(), nullable=True),
    sa.Column('sentiment', sa.Text(), nullable=True),
    sa.Column('raw', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('news', schema=None) as batch_op:
        batch_op.create_index('ix_news_published_utc', ['published_utc'], unique=False)
        batch_op.create_index('ux_news_url', ['url'], unique=True)


def downgrade() -> None:
    with op.batch_alter_table('news', schema=None) as batch_op:
        batch_op.drop_index('ux_news_url')
        batch_op.drop_index('ix_news_published_utc')
    op.drop_table('news')
    op.drop_table('sink_state')
