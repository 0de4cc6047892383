"""Range-partitioned ohlcv_1m on PostgreSQL: one partition per month (UTC), plus a default

The table is rebuilt as `PARTITION BY RANGE (ts)` with the same columns, primary key and
indexes; its rows are copied into month partitions (about 200 k rows/s: plan the upgrade of
a big table). Partitions live in the schema `chronox_partitions`, named `ohlcv_1m_pYYYYMM`,
plus `ohlcv_1m_default` for rows of a month nobody prepared; the writers create the months
they need (chronox.partitions, whose naming this must match). SQLite keeps the plain table.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04 22:00:00
"""
from __future__ import annotations

import re

from alembic import op

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None

SCHEMA = 'chronox_partitions'
TABLE = 'ohlcv_1m'
OLD = 'ohlcv_1m_unpartitioned'


def _other_indexes(bind, table: str) -> list[tuple[str, str]]:
    """(name, definition) of the indexes of `table` that are not its primary key."""
    return list(bind.exec_driver_sql(
        "SELECT i.relname, pg_get_indexdef(x.indexrelid) FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid "
        "WHERE x.indrelid = to_regclass(%(table)s) AND NOT x.indisprimary ORDER BY i.relname", {"table": table}))


def _months(bind, table: str) -> list[tuple[str, str, str]]:
    """(YYYYMM, first instant, next month's first instant) of every month `table` has rows in (UTC)."""
    months = []
    for (month,) in bind.exec_driver_sql(f"SELECT DISTINCT to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM') FROM \"{table}\""):
        year, number = map(int, month.split("-"))
        later = f"{year + number // 12}-{number % 12 + 1:02d}"
        months.append((f"{year}{number:02d}", f"{month}-01 00:00:00+00", f"{later}-01 00:00:00+00"))
    return sorted(months)


def _rebuild(bind, source: str, partitioned: bool) -> None:
    """ohlcv_1m made again from `source` (the old table, renamed), then `source` dropped;
    the primary key and every other index come along."""
    indexes = _other_indexes(bind, source)
    for name, _ in indexes:
        op.execute(f'ALTER INDEX "{name}" RENAME TO "{name}_old"')
    op.execute(f'ALTER TABLE "{source}" RENAME CONSTRAINT ohlcv_1m_pkey TO {source}_pkey')
    op.execute(f'CREATE TABLE {TABLE} (LIKE "{source}" INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING STORAGE '
               f'INCLUDING COMMENTS){" PARTITION BY RANGE (ts)" if partitioned else ""}')
    if partitioned:
        op.execute(f'ALTER TABLE {TABLE} ADD CONSTRAINT ohlcv_1m_pkey PRIMARY KEY (symbol, ts)')
        op.execute(f'CREATE SCHEMA IF NOT EXISTS {SCHEMA}')
        op.execute(f'CREATE TABLE {SCHEMA}.{TABLE}_default PARTITION OF {TABLE} DEFAULT')
        for name, first, after in _months(bind, source):
            op.execute(f"CREATE TABLE {SCHEMA}.{TABLE}_p{name} PARTITION OF {TABLE} "
                       f"FOR VALUES FROM ('{first}') TO ('{after}')")
        op.execute(f'INSERT INTO {TABLE} SELECT * FROM "{source}"')
    else:
        op.execute(f'INSERT INTO {TABLE} SELECT * FROM "{source}"')
        # The key after the rows: one index build instead of a row-by-row insert into it.
        op.execute(f'ALTER TABLE {TABLE} ADD CONSTRAINT ohlcv_1m_pkey PRIMARY KEY (symbol, ts)')
    for _, definition in indexes:
        op.execute(re.sub(r' ON (ONLY )?\S+ ', f' ON {TABLE} ', definition, count=1))
    op.execute(f'DROP TABLE "{source}"')
    if not partitioned:
        op.execute(f'DROP SCHEMA IF EXISTS {SCHEMA}')  # RESTRICT: other tables' partitions keep it


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != 'postgresql':
        return
    op.execute(f'ALTER TABLE {TABLE} RENAME TO {OLD}')
    _rebuild(bind, OLD, partitioned=True)
    op.execute(f'ANALYZE {TABLE}')


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != 'postgresql':
        return
    op.execute(f'ALTER TABLE {TABLE} RENAME TO {OLD}')
    _rebuild(bind, OLD, partitioned=False)
