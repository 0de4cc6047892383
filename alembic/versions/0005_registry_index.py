"""idx_symbol_registry_enabled on symbol_registry (enabled, status)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04 20:00:00
"""
from __future__ import annotations

from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The registry service's index, under its name, so its users' queries and tooling find it.
    op.create_index('idx_symbol_registry_enabled', 'symbol_registry', ['enabled', 'status'], unique=False)


def downgrade() -> None:
    op.drop_index('idx_symbol_registry_enabled', table_name='symbol_registry')
