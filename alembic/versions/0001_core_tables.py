"""core tables

Revision ID: 0001
Revises: 
Create Date: 2026-11-22 03:51:02.240473
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('coverage',
    sa.Column('symbol', sa.String(length=10), nullable=False),
    sa.Column('trading_day', sa.Date(), nullable=False),
    sa.Column('source', sa.String(length=16), nullable=False),
    sa.Column('rows', sa.Integer(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('(CURRENT_TIMESTAMP)'), nullable=False),
    sa.PrimaryKeyConstraint('symbol', 'trading_day', 'source')
    )
    op.create_table('ohlcv_1m',
    sa.Column('symbol', sa.String(length=10), nullable=False),
    sa.Column('ts', sa.DateTime(timezone=True), nullable=False),
    sa.Column('open', sa.Float(), nullable=False),
    sa.Column('high', sa.Float(), nullable=False),
    sa.Column('low', sa.Float(), nullable=False),
    sa.Column('close', sa.Float(), nullable=False),
    sa.Column('volume', sa.Float(), nullable=False),
    sa.Column('vwap', sa.Float(), nullable=True),
    sa.Column('transactions', sa.Integer(), nullable=True),
    sa.Column('source', sa.String(length=16), nullable=False),
    sa.PrimaryKeyConstraint('symbol', 'ts')
    )
    op.create_table('publish_outbox',
    sa.Column('symbol', sa.String(length=10), nullable=False),
    sa.Column('trading_day', sa.Date(), nullable=False),
    sa.Column('source', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), server_default='0', nullable=False),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('(CURRENT_TIMESTAMP)'), nullable=False),
    sa.PrimaryKeyConstraint('symbol', 'trading_day', 'source')
    )
    op.create_table('quarantine',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('origin', sa.String(length=255), nullable=False),
    sa.Column('symbol', sa.String(length=32), nullable=True),
    sa.Column('raw', sa.Text(), nullable=True),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('(CURRENT_TIMESTAMP)'), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('quarantine', schema=None) as batch_op:
        batch_op.create_index('ix_quarantine_origin', ['origin'], unique=False)

    op.create_table('symbol_registry',
    sa.Column('symbol', sa.String(length=10), nullable=False),
    sa.Column('strategy', sa.String(length=64), nullable=False),
    sa.Column('timeframe', sa.String(length=8), server_default='1m', nullable=False),
    sa.Column('enabled', sa.Boolean(), server_default='1', nullable=False),
    sa.Column('last_backfill', sa.Date(), nullable=True),
    sa.Column('last_snapshot', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_stream', sa.DateTime(timezone=True), nullable=True),
    sa.Column('status', sa.String(length=16), server_default='idle', nullable=False),
    sa.Column('error_message', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('(CURRENT_TIMESTAMP)'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('(CURRENT_TIMESTAMP)'), nullable=False),
    sa.PrimaryKeyConstraint('symbol')
    )


def downgrade() -> None:
    op.drop_table('symbol_registry')
    with op.batch_alter_table('quarantine', schema=None) as batch_op:
        batch_op.drop_index('ix_quarantine_origin')

    op.drop_table('quarantine')
    op.drop_table('publish_outbox')
    op.drop_table('ohlcv_1m')
    op.drop_table('coverage')
