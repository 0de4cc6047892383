"""Trades and quotes: the tables `trades` and `quotes`, and `tick_coverage`

On PostgreSQL both tick tables are range-partitioned on `ts` by New York day (chronox.partitions
makes the day partitions as loads need them, `trades_pYYYYMMDD` in the schema chronox_partitions,
and CHRONOX_TICK_RETENTION_DAYS drops old ones), with a default partition for rows of a day
nobody prepared. SQLite keeps plain tables.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05 10:00:00
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None

SCHEMA = 'chronox_partitions'
TICK_TABLES = ('trades', 'quotes')


def _identity() -> list[sa.Column]:
    """The columns every tick table starts with (chronox.models.TickColumns)."""
    return [
        sa.Column('symbol', sa.String(length=32), nullable=False),
        sa.Column('ts', sa.DateTime(timezone=True), nullable=False),
        sa.Column('sip_timestamp', sa.BigInteger(), nullable=False),
        sa.Column('sequence_number', sa.BigInteger(), nullable=False),
        sa.Column('participant_timestamp', sa.BigInteger(), nullable=True),
        sa.Column('trf_timestamp', sa.BigInteger(), nullable=True),
        sa.Column('conditions', sa.Text(), nullable=True),
        sa.Column('tape', sa.Integer(), nullable=True),
        sa.Column('source', sa.String(length=16), nullable=False),
    ]


def upgrade() -> None:
    op.create_table(
        'trades',
        *_identity(),
        sa.Column('exchange', sa.Integer(), nullable=False),
        sa.Column('trade_id', sa.String(length=64), nullable=False),
        sa.Column('price', sa.Float(), nullable=False),
        sa.Column('size', sa.Float(), nullable=False),
        sa.Column('correction', sa.Integer(), nullable=True),
        sa.Column('trf_id', sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint('symbol', 'ts', 'sip_timestamp', 'sequence_number'),
        postgresql_partition_by='RANGE (ts)',
    )
    op.create_table(
        'quotes',
        *_identity(),
        sa.Column('bid_exchange', sa.Integer(), nullable=True),
        sa.Column('bid_price', sa.Float(), nullable=True),
        sa.Column('bid_size', sa.Float(), nullable=True),
        sa.Column('ask_exchange', sa.Integer(), nullable=True),
        sa.Column('ask_price', sa.Float(), nullable=True),
        sa.Column('ask_size', sa.Float(), nullable=True),
        sa.Column('indicators', sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint('symbol', 'ts', 'sip_timestamp', 'sequence_number'),
        postgresql_partition_by='RANGE (ts)',
    )
    op.create_table(
        'tick_coverage',
        sa.Column('symbol', sa.String(length=32), nullable=False),
        sa.Column('trading_day', sa.Date(), nullable=False),
        sa.Column('dataset', sa.String(length=16), nullable=False),
        sa.Column('source', sa.String(length=16), nullable=False),
        sa.Column('rows', sa.Integer(), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('(CURRENT_TIMESTAMP)'),
                  nullable=False),
        sa.PrimaryKeyConstraint('symbol', 'trading_day', 'dataset'),
    )
    if op.get_bind().dialect.name == 'postgresql':
        op.execute(f'CREATE SCHEMA IF NOT EXISTS {SCHEMA}')
        for table in TICK_TABLES:
            op.execute(f'CREATE TABLE {SCHEMA}.{table}_default PARTITION OF {table} DEFAULT')


def downgrade() -> None:
    op.drop_table('tick_coverage')
    for table in TICK_TABLES:
        op.drop_table(table)  # its partitions go with it
