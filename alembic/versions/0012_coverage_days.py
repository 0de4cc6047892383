"""`coverage_days`: the coverage table folded into 64-day words, kept by triggers

One row per symbol and word of 64 calendar days (word w holds the days 1970-01-01 + 64 w
onwards, bit i the day 64 w + i): `days` has the bit of every day with a coverage row of
any source, `final_days` of every day with a row of another source than the api phase
(`chronox.gaps.REST_SOURCE`). The gap scan reads these few words per symbol instead of
every coverage row. Triggers on `coverage` keep them exact whoever writes the table (the
loads, an operator deleting rows to force a reload, a TRUNCATE): statement-level with
transition tables on PostgreSQL (one pass per statement, whatever its size), per row on
SQLite. A deleted row clears its day's bit only when no row of that day is left.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-05 01:00:00
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None

REST_SOURCE = 'api'  # chronox.gaps.REST_SOURCE, frozen here as migrations are


def _day_number(day: str, dialect: str) -> str:
    """Days since 1970-01-01 of the date expression `day`, in SQL."""
    if dialect == 'postgresql':
        return f"({day} - DATE '1970-01-01')"
    return f"CAST(julianday({day}) - 2440587.5 AS INTEGER)"  # SQLite keeps dates as 'YYYY-MM-DD'


def _word(day: str, dialect: str) -> str:
    return f"({_day_number(day, dialect)} >> 6)"


def _bit(day: str, dialect: str) -> str:
    return f"(CAST(1 AS BIGINT) << ({_day_number(day, dialect)} & 63))"


def _final_bit(row: str, dialect: str) -> str:
    return f"(CASE WHEN {row}.source <> '{REST_SOURCE}' THEN {_bit(f'{row}.trading_day', dialect)} ELSE 0 END)"


def _left(row: str, final: bool) -> str:
    """Whether `coverage` still has a row (of another source than the api phase) for `row`'s day."""
    other = f" AND c.source <> '{REST_SOURCE}'" if final else ""
    return (f"EXISTS (SELECT 1 FROM coverage c WHERE c.symbol = {row}.symbol "
            f"AND c.trading_day = {row}.trading_day{other})")


def _postgres_add(rows: str) -> str:
    """Set the bits of the coverage rows in `rows` (a transition table or `coverage`)."""
    return (f"INSERT INTO coverage_days AS d (symbol, word, days, final_days) "
            f"SELECT r.symbol, {_word('r.trading_day', 'postgresql')}, bit_or({_bit('r.trading_day', 'postgresql')}), "
            f"       bit_or({_final_bit('r', 'postgresql')}) "
            f"FROM {rows} r GROUP BY 1, 2 "
            f"ON CONFLICT (symbol, word) DO UPDATE SET days = d.days | excluded.days, "
            f"final_days = d.final_days | excluded.final_days")


def _postgres_remove(rows: str) -> str:
    """Clear the bits of the days in `rows` (the removed rows) that no row covers any more."""
    bit = _bit('r.trading_day', 'postgresql')
    return (f"UPDATE coverage_days AS d SET days = d.days & ~g.gone, final_days = d.final_days & ~g.gone_final "
            f"FROM (SELECT r.symbol, {_word('r.trading_day', 'postgresql')} AS word, "
            f"             bit_or(CASE WHEN {_left('r', False)} THEN 0 ELSE {bit} END) AS gone, "
            f"             bit_or(CASE WHEN {_left('r', True)} THEN 0 ELSE {bit} END) AS gone_final "
            f"      FROM (SELECT DISTINCT symbol, trading_day FROM {rows} x) r GROUP BY 1, 2) g "
            f"WHERE d.symbol = g.symbol AND d.word = g.word AND (g.gone | g.gone_final) <> 0")


# An update that keeps a row's key (symbol, day, source: a reload's new row count) changes
# no bit; only rows whose key appeared or went are looked at. EXCEPT hashes both sides
# (a NOT EXISTS between transition tables, which have no statistics, ran as a nested loop:
# 3.8 s for a market's day).
_CHANGED = ("(SELECT symbol, trading_day, source FROM {this} "
            "EXCEPT SELECT symbol, trading_day, source FROM {that})")

POSTGRES_FUNCTION = f"""
CREATE FUNCTION coverage_days_sync() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        -- Not TRUNCATE: a TRUNCATE naming both tables runs this while it holds coverage_days.
        DELETE FROM coverage_days;
    ELSIF TG_OP = 'INSERT' THEN
        {_postgres_add('new_rows')};
    ELSIF TG_OP = 'DELETE' THEN
        {_postgres_remove('old_rows')};
    ELSE
        {_postgres_remove(_CHANGED.format(this='old_rows', that='new_rows'))};
        {_postgres_add(_CHANGED.format(this='new_rows', that='old_rows'))};
    END IF;
    RETURN NULL;
END $$
"""

POSTGRES_TRIGGERS = (
    "CREATE TRIGGER coverage_days_insert AFTER INSERT ON coverage REFERENCING NEW TABLE AS new_rows "
    "FOR EACH STATEMENT EXECUTE FUNCTION coverage_days_sync()",
    "CREATE TRIGGER coverage_days_delete AFTER DELETE ON coverage REFERENCING OLD TABLE AS old_rows "
    "FOR EACH STATEMENT EXECUTE FUNCTION coverage_days_sync()",
    "CREATE TRIGGER coverage_days_update AFTER UPDATE ON coverage REFERENCING OLD TABLE AS old_rows "
    "NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION coverage_days_sync()",
    "CREATE TRIGGER coverage_days_truncate AFTER TRUNCATE ON coverage FOR EACH STATEMENT "
    "EXECUTE FUNCTION coverage_days_sync()",
)


def _sqlite_add(row: str) -> str:
    return (f"INSERT INTO coverage_days (symbol, word, days, final_days) VALUES ({row}.symbol, "
            f"{_word(f'{row}.trading_day', 'sqlite')}, {_bit(f'{row}.trading_day', 'sqlite')}, "
            f"{_final_bit(row, 'sqlite')}) "
            "ON CONFLICT (symbol, word) DO UPDATE SET days = days | excluded.days, "
            "final_days = final_days | excluded.final_days;")


def _sqlite_remove(row: str) -> str:
    bit = _bit(f'{row}.trading_day', 'sqlite')
    return (f"UPDATE coverage_days SET days = days & ~(CASE WHEN {_left(row, False)} THEN 0 ELSE {bit} END), "
            f"final_days = final_days & ~(CASE WHEN {_left(row, True)} THEN 0 ELSE {bit} END) "
            f"WHERE symbol = {row}.symbol AND word = {_word(f'{row}.trading_day', 'sqlite')};")


SQLITE_TRIGGERS = (
    f"CREATE TRIGGER coverage_days_insert AFTER INSERT ON coverage BEGIN {_sqlite_add('NEW')} END",
    f"CREATE TRIGGER coverage_days_delete AFTER DELETE ON coverage BEGIN {_sqlite_remove('OLD')} END",
    f"CREATE TRIGGER coverage_days_update AFTER UPDATE ON coverage BEGIN {_sqlite_remove('OLD')} "
    f"{_sqlite_add('NEW')} END",
)


def upgrade() -> None:
    op.create_table('coverage_days',
    sa.Column('symbol', sa.String(length=32), nullable=False),
    sa.Column('word', sa.Integer(), nullable=False),
    sa.Column('days', sa.BigInteger(), nullable=False),
    sa.Column('final_days', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('symbol', 'word')
    )
    dialect = op.get_bind().dialect.name
    if dialect == 'postgresql':
        op.execute(_postgres_add('coverage'))
        op.execute(POSTGRES_FUNCTION)
        for trigger in POSTGRES_TRIGGERS:
            op.execute(trigger)
        return
    # SQLite has no bit_or: a sum of distinct powers of two is their OR (the sign bit too,
    # in two's complement).
    op.execute(f"INSERT INTO coverage_days (symbol, word, days, final_days) "
               f"SELECT r.symbol, {_word('r.trading_day', 'sqlite')}, sum(DISTINCT {_bit('r.trading_day', 'sqlite')}), "
               f"       sum(DISTINCT {_final_bit('r', 'sqlite')}) FROM coverage r GROUP BY 1, 2")
    for trigger in SQLITE_TRIGGERS:
        op.execute(trigger)


def downgrade() -> None:
    if op.get_bind().dialect.name == 'postgresql':
        op.execute("DROP FUNCTION coverage_days_sync() CASCADE")
    else:
        for name in ('insert', 'delete', 'update'):
            op.execute(f"DROP TRIGGER coverage_days_{name}")
    op.drop_table('coverage_days')
