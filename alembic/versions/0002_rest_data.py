"""REST data: ticker details, dividends, splits, daily bars, latest snapshots

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 04:12:51.475395
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('dividends',
    sa.Column('id', sa.String(length=100), nullable=False),
    sa.Column('symbol', sa.String(length=10), nullable=False),
    sa.Column('ex_dividend_date', sa.Date(), nullable=False),
    sa.Column('record_date', sa.Date(), nullable=True),
    sa.Column('pay_date', sa.Date(), nullable=True),
    sa.Column('declaration_date', sa.Date(), nullable=True),
    sa.Column('cash_amount', sa.Float(), nullable=False),
    sa.Column('currency', sa.String(length=8), nullable=True),
    sa.Column('frequency', sa.Integer(), nullable=True),
    sa.Column('dividend_type', sa.String(length=8), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('dividends', schema=None) as batch_op:
        batch_op.create_index('ix_dividends_symbol', ['symbol'], unique=False)

    op.create_table('ohlcv_1d',
    sa.Column('symbol', sa.String(length=10), nullable=False),
    sa.Column('day', sa.Date(), nullable=False),
    sa.Column('open', sa.Float(), nullable=False),
    sa.Column('high', sa.Float(), nullable=False),
    sa.Column('low', sa.Float(), nullable=False),
    sa.Column('close', sa.Float(), nullable=False),
    sa.Column('volume', sa.Float(), nullable=False),
    sa.Column('vwap', sa.Float(), nullable=True),
    sa.Column('transactions', sa.Integer(), nullable=True),
    sa.Column('source', sa.String(length=16), nullable=False),
    sa.PrimaryKeyConstraint('symbol', 'day')
    )
    op.create_table('snapshot_latest',
    sa.Column('symbol', sa.String(length=10), nullable=False),
    sa.Column('ts', sa.DateTime(timezone=True), nullable=False),
    sa.Column('price', sa.Float(), nullable=False),
    sa.Column('volume', sa.Float(), nullable=True),
    sa.Column('prev_close', sa.Float(), nullable=True),
    sa.Column('method', sa.String(length=16), nullable=False),
    sa.Column('fetched_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('symbol')
    )
    op.create_table('splits',
    sa.Column('id', sa.String(length=100), nullable=False),
    sa.Column('symbol', sa.String(length=10), nullable=False),
    sa.Column('execution_date', sa.Date(), nullable=False),
    sa.Column('split_from', sa.Float(), nullable=False),
    sa.Column('split_to', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('splits', schema=None) as batch_op:
        batch_op.create_index('ix_splits_symbol', ['symbol'], unique=False)

    op.create_table('ticker_details',
    sa.Column('symbol', sa.String(length=10), nullable=False),
    sa.Column('name', sa.String(length=255), nullable=True),
    sa.Column('market', sa.String(length=32), nullable=True),
    sa.Column('primary_exchange', sa.String(length=16), nullable=True),
    sa.Column('type', sa.String(length=16), nullable=True),
    sa.Column('active', sa.Boolean(), nullable=True),
    sa.Column('currency', sa.String(length=16), nullable=True),
    sa.Column('list_date', sa.Date(), nullable=True),
    sa.Column('raw', sa.Text(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('(CURRENT_TIMESTAMP)'), nullable=False),
    sa.PrimaryKeyConstraint('symbol')
    )


def downgrade() -> None:
    op.drop_table('ticker_details')
    with op.batch_alter_table('splits', schema=None) as batch_op:
        batch_op.drop_index('ix_splits_symbol')

    op.drop_table('splits')
    op.drop_table('snapshot_latest')
    op.drop_table('ohlcv_1d')
    with op.batch_alter_table('dividends', schema=None) as batch_op:
        batch_op.drop_index('ix_dividends_symbol')

    op.drop_table('dividends')
