"""ohlcv_5m, ohlcv_15m, ohlcv_1h as tables kept current with each load; publish_outbox.tf

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04 20:00:00

The views of 0003 computed every rollup per query; the tables hold the same columns with
the same meaning and are refreshed in the transaction of each write to the bars below
them (chronox.rollups). Existing minute bars are rolled up once here, through the views
themselves, before the views make way for the tables.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None

ROLLUPS = ('ohlcv_5m', 'ohlcv_15m', 'ohlcv_1h')
COLUMNS = 'symbol, bucket, open, high, low, close, volume, bars'


def _create(name: str) -> None:
    op.create_table(
        name,
        sa.Column('symbol', sa.String(length=10), nullable=False),
        sa.Column('bucket', sa.DateTime(timezone=True), nullable=False),
        sa.Column('open', sa.Float(), nullable=False),
        sa.Column('high', sa.Float(), nullable=False),
        sa.Column('low', sa.Float(), nullable=False),
        sa.Column('close', sa.Float(), nullable=False),
        sa.Column('volume', sa.Float(), nullable=False),
        sa.Column('bars', sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint('symbol', 'bucket', name=f'pk_{name}'),
    )


def upgrade() -> None:
    for name in ROLLUPS:
        _create(f'{name}_new')
        op.execute(f'INSERT INTO {name}_new ({COLUMNS}) SELECT {COLUMNS} FROM {name}')
        op.execute(f'DROP VIEW {name}')
        op.rename_table(f'{name}_new', name)
    with op.batch_alter_table('publish_outbox', schema=None) as batch_op:
        batch_op.add_column(sa.Column('tf', sa.String(length=8), server_default='1m', nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('publish_outbox', schema=None) as batch_op:
        batch_op.drop_column('tf')
    for name in reversed(ROLLUPS):
        op.drop_table(name)
    # The views as 0003 defined them.
    spec = importlib.util.spec_from_file_location('rollup_views_0003', Path(__file__).with_name('0003_rollup_views.py'))
    assert spec is not None and spec.loader is not None
    views = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(views)
    views.upgrade()
