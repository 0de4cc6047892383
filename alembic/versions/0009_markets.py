"""Markets and providers per symbol: symbol_registry.market, provider, provider_symbol;
symbol columns wide enough for crypto pairs (BASE-QUOTE)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04 21:00:00

Existing rows become stocks from Polygon, which is what they were.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None

SYMBOL_TABLES = ('symbol_registry', 'ohlcv_1m', 'coverage', 'publish_outbox', 'ticker_details', 'dividends',
                 'splits', 'ohlcv_1d', 'snapshot_latest', 'ohlcv_5m', 'ohlcv_15m', 'ohlcv_1h')


def _symbol_length(length: int) -> None:
    for name in SYMBOL_TABLES:
        with op.batch_alter_table(name, schema=None) as batch_op:
            batch_op.alter_column('symbol', existing_type=sa.String(length=10 if length == 32 else 32),
                                  type_=sa.String(length=length), existing_nullable=False)


def upgrade() -> None:
    _symbol_length(32)
    with op.batch_alter_table('symbol_registry', schema=None) as batch_op:
        batch_op.add_column(sa.Column('market', sa.String(length=16), server_default='stocks', nullable=False))
        batch_op.add_column(sa.Column('provider', sa.String(length=16), server_default='polygon', nullable=False))
        batch_op.add_column(sa.Column('provider_symbol', sa.String(length=64), nullable=True))
    with op.batch_alter_table('publish_outbox', schema=None) as batch_op:
        batch_op.add_column(sa.Column('market', sa.String(length=16), server_default='stocks', nullable=False))
        batch_op.add_column(sa.Column('provider', sa.String(length=16), server_default='polygon', nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('publish_outbox', schema=None) as batch_op:
        batch_op.drop_column('provider')
        batch_op.drop_column('market')
    with op.batch_alter_table('symbol_registry', schema=None) as batch_op:
        batch_op.drop_column('provider_symbol')
        batch_op.drop_column('provider')
        batch_op.drop_column('market')
    _symbol_length(10)
