"""Range partitions of the big tables on PostgreSQL: created on demand, dropped by retention.

A partitioned table (`ohlcv_1m` by month; the tick tables by day) keeps its partitions in the
schema PARTITION_SCHEMA, named `<table>_p<YYYYMM>` or `<table>_p<YYYYMMDD>` after the first
day they hold, plus one DEFAULT partition `<table>_default`. Writers call ensure_partitions
(or ensure_window / ensure_times) for what they are about to write, so a load writes into, and
a reload replaces rows of, only the partitions of its own days, and the cost of a day's load
does not grow with the history kept. The default partition catches rows of a range nobody
prepared (a raw INSERT by hand); creating the range's partition later moves them into it.

A table joins by registering its Scheme here; `tick=True` puts its partitions under
CHRONOX_TICK_RETENTION_DAYS (drop_expired_ticks, beat job `tick_retention`). Its migration
creates the parent (`PARTITION BY RANGE (<column>)`) and the default partition, as 0010 does
for ohlcv_1m. SQLite keeps plain tables: every function here is a no-op on it.
"""
from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Connection

from chronox.db import get_engine
from chronox.settings import Settings

log = logging.getLogger(__name__)

PARTITION_SCHEMA = "chronox_partitions"  # out of the application schema: the models' inspection never sees them
_LOCK = 7234003  # pg_advisory_xact_lock namespace: one creator of a table's partitions at a time
_NAME = re.compile(r"_p(\d{6}|\d{8})$")


class Interval(StrEnum):
    DAY = "day"
    MONTH = "month"


@dataclass(frozen=True)
class Scheme:
    """How one table is partitioned: by `column` (timestamptz) in ranges of a day or a month,
    whose bounds are midnights in `zone`; `tick`: old partitions expire (retention)."""

    table: str
    interval: Interval
    column: str = "ts"
    zone: str = "UTC"
    tick: bool = False

    def start_of(self, moment: dt.datetime) -> dt.datetime:
        """The start (UTC) of the partition holding `moment`."""
        local = moment.astimezone(ZoneInfo(self.zone))
        day = local.date() if self.interval == Interval.DAY else local.date().replace(day=1)
        return self.midnight(day)

    def day_start(self, day: dt.date) -> dt.datetime:
        """The start (UTC) of the partition holding `day` (a day in `zone`)."""
        return self.midnight(day if self.interval == Interval.DAY else day.replace(day=1))

    def next_start(self, start: dt.datetime) -> dt.datetime:
        day = start.astimezone(ZoneInfo(self.zone)).date()
        if self.interval == Interval.DAY:
            return self.midnight(day + dt.timedelta(days=1))
        return self.midnight((day.replace(day=28) + dt.timedelta(days=4)).replace(day=1))

    def name(self, start: dt.datetime) -> str:
        day = start.astimezone(ZoneInfo(self.zone)).date()
        return f"{self.table}_p{day:%Y%m%d}" if self.interval == Interval.DAY else f"{self.table}_p{day:%Y%m}"

    def start_of_name(self, name: str) -> dt.datetime | None:
        """The start of the partition called `name`, or None when it is not one of ours."""
        match = _NAME.search(name)
        if not name.startswith(f"{self.table}_p") or match is None \
                or len(match.group(1)) != (8 if self.interval == Interval.DAY else 6):
            return None
        digits = match.group(1)
        try:
            return self.midnight(dt.date(int(digits[:4]), int(digits[4:6]), int(digits[6:8] or 1)))
        except ValueError:
            return None

    def midnight(self, day: dt.date) -> dt.datetime:
        return dt.datetime.combine(day, dt.time(0), ZoneInfo(self.zone)).astimezone(dt.UTC)


SCHEMES: dict[str, Scheme] = {}


def register(scheme: Scheme) -> Scheme:
    SCHEMES[scheme.table] = scheme
    return scheme


# Minute bars: months, on UTC midnights. A New York day lies in one month's partition, but
# for the last evening hour of a winter month's last trading day (20:00 New York is 01:00 UTC).
OHLCV_1M = register(Scheme("ohlcv_1m", Interval.MONTH))
# Trades and quotes (migration 0011): New York days, so a day file's load or reload touches
# one partition; old ones expire (CHRONOX_TICK_RETENTION_DAYS).
TRADES = register(Scheme("trades", Interval.DAY, zone="America/New_York", tick=True))
QUOTES = register(Scheme("quotes", Interval.DAY, zone="America/New_York", tick=True))


def _postgres(conn: Connection) -> bool:
    return conn.dialect.name == "postgresql"


def ensure_partitions(conn: Connection, table: str, first_day: dt.date, last_day: dt.date) -> list[str]:
    """Create the partitions of `table` holding the days first_day..last_day (days in the
    table's zone) that do not exist yet; returns the names created. In the caller's
    transaction (keep it short: attaching a partition locks out other attaches until commit)."""
    scheme = SCHEMES[table]
    return ensure_window(conn, table, scheme.midnight(first_day), scheme.midnight(last_day + dt.timedelta(days=1)))


def ensure_window(conn: Connection, table: str, start: dt.datetime, end: dt.datetime) -> list[str]:
    """ensure_partitions for the instants [start, end)."""
    if not _postgres(conn) or start >= end:
        return []
    scheme = SCHEMES[table]
    starts = []
    at = scheme.start_of(start)
    while at < end:
        starts.append(at)
        at = scheme.next_start(at)
    return _ensure(conn, scheme, starts)


def ensure_times(conn: Connection, table: str, times: Iterable[dt.datetime]) -> list[str]:
    """ensure_partitions for the partitions holding `times` (a batch of bars, however spread)."""
    if not _postgres(conn):
        return []
    scheme = SCHEMES[table]
    return _ensure(conn, scheme, sorted({scheme.start_of(t) for t in times}))


def _missing(conn: Connection, scheme: Scheme, starts: list[dt.datetime]) -> list[dt.datetime]:
    names = [scheme.name(s) for s in starts]
    absent = {name for (name,) in conn.exec_driver_sql(
        "SELECT n FROM unnest(%(names)s::text[]) AS n WHERE to_regclass(quote_ident(%(schema)s) || '.' "
        "|| quote_ident(n)) IS NULL", {"names": names, "schema": PARTITION_SCHEMA})}
    return [s for s, name in zip(starts, names, strict=True) if name in absent]


def _ensure(conn: Connection, scheme: Scheme, starts: list[dt.datetime]) -> list[str]:
    if not starts or not _missing(conn, scheme, starts):
        return []
    conn.exec_driver_sql("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (_LOCK, scheme.table))
    created = []
    default = _default_partition(conn, scheme.table)
    for start in _missing(conn, scheme, starts):  # again: another writer may have made them meanwhile
        created.append(_create(conn, scheme, start, default))
    return created


def _default_partition(conn: Connection, table: str) -> str | None:
    """The default partition of `table` (schema-qualified, quoted), if it has one."""
    return conn.exec_driver_sql(
        "SELECT format('%%I.%%I', n.nspname, c.relname) FROM pg_inherits i "
        "JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE i.inhparent = to_regclass(%(table)s) AND pg_get_expr(c.relpartbound, c.oid) = 'DEFAULT'",
        {"table": table}).scalar()


def _create(conn: Connection, scheme: Scheme, start: dt.datetime, default: str | None) -> str:
    """Create and attach one partition. Created apart and then attached: ATTACH PARTITION takes
    a SHARE UPDATE EXCLUSIVE lock on the parent, so readers and writers of the other partitions
    go on, where CREATE TABLE ... PARTITION OF would lock the whole table out."""
    name = scheme.name(start)
    qualified = f'"{PARTITION_SCHEMA}"."{name}"'
    bounds = {"start": start, "end": scheme.next_start(start)}
    conn.exec_driver_sql(f'CREATE TABLE {qualified} (LIKE "{scheme.table}" INCLUDING DEFAULTS INCLUDING '
                         'CONSTRAINTS INCLUDING STORAGE)')
    if default is not None:
        # Rows of this range that reached the default partition move into their own.
        moved = conn.exec_driver_sql(
            f'WITH moved AS (DELETE FROM {default} WHERE "{scheme.column}" >= %(start)s '
            f'AND "{scheme.column}" < %(end)s RETURNING *) INSERT INTO {qualified} SELECT * FROM moved',
            bounds).rowcount
        if moved:
            log.info("moved %d row(s) of %s from %s into its new partition %s", moved, scheme.table, default, name)
    conn.exec_driver_sql(f'ALTER TABLE "{scheme.table}" ATTACH PARTITION {qualified} '
                         "FOR VALUES FROM (%(start)s) TO (%(end)s)", bounds)
    log.info("created partition %s.%s of %s for [%s, %s)", PARTITION_SCHEMA, name, scheme.table,
             bounds["start"].isoformat(), bounds["end"].isoformat())
    return name


def partitions(conn: Connection, table: str) -> list[tuple[str, dt.datetime]]:
    """`table`'s partitions of our naming (not the default one) with their starts, oldest first."""
    if not _postgres(conn):
        return []
    scheme = SCHEMES[table]
    rows = conn.exec_driver_sql(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE i.inhparent = to_regclass(%(table)s) "
        "AND n.nspname = %(schema)s", {"table": table, "schema": PARTITION_SCHEMA})
    found = [(name, start) for (name,) in rows if (start := scheme.start_of_name(name)) is not None]
    return sorted(found, key=lambda item: item[1])


def drop_partitions_before(conn: Connection, table: str, cutoff: dt.date) -> list[str]:
    """Drop the partitions of `table` whose whole range lies before `cutoff` (a day in the
    table's zone), rows and all; returns their names. DROP locks the parent for a moment:
    a lock wait beyond 10 s fails (and the job retries) rather than queue every reader
    behind it."""
    if not _postgres(conn):
        return []
    scheme = SCHEMES[table]
    boundary = scheme.midnight(cutoff)
    dropped = []
    conn.exec_driver_sql("SET LOCAL lock_timeout = '10s'")
    for name, start in partitions(conn, table):
        if scheme.next_start(start) <= boundary:
            conn.exec_driver_sql(f'DROP TABLE "{PARTITION_SCHEMA}"."{name}"')
            dropped.append(name)
    if dropped:
        log.info("dropped %d partition(s) of %s before %s: %s", len(dropped), table, cutoff, ", ".join(dropped))
    return dropped


def drop_expired_ticks(settings: Settings, today: dt.date | None = None) -> dict[str, Any]:
    """The `tick_retention` job: drop every tick table's partitions older than
    CHRONOX_TICK_RETENTION_DAYS days (kept: `today`, UTC, and the days before it within the
    retention), each table in its own transaction."""
    days = settings.tick_retention_days
    if not days:
        return {"skipped": "CHRONOX_TICK_RETENTION_DAYS is unset: tick partitions are kept"}
    engine = get_engine(settings.database_url)
    if engine.dialect.name != "postgresql":
        return {"skipped": "SQLite keeps plain tables: nothing is partitioned"}
    cutoff = (today or dt.datetime.now(dt.UTC).date()) - dt.timedelta(days=days)
    dropped: dict[str, list[str]] = {}
    for scheme in SCHEMES.values():
        if scheme.tick:
            with engine.begin() as conn:
                dropped[scheme.table] = drop_partitions_before(conn, scheme.table, cutoff)
    return {"cutoff": cutoff.isoformat(), "dropped": dropped}
