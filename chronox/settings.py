"""Environment -> typed settings, read in one place.

Every variable is optional; unset (or blank) means the `Settings` field's default: SQLite
in the working directory, tasks executed in-process, Redis and Kafka features off.
`ENVIRONMENT` lists the variables, one entry each: the variable, the field it sets and
the parser that checks it. The defaults live only on `Settings`. Some entries name the
registry service's variables (TIMESCALE_*, REDIS_*, KAFKA_BROKERS, ...) they fall back to
when unset; `Settings.origin` says which variables a value came from.
"""
from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from enum import StrEnum
from typing import Any

POLYGON_FLATFILES_ENDPOINT = "https://files.polygon.io"
POLYGON_WS_URL = "wss://socket.polygon.io/stocks"  # real-time stocks feed

# A minute per message already stalls a day load for days; more is a typo, and beyond
# about 10**12 ms time.sleep overflows.
MAX_PUBLISH_THROTTLE_MS = 60_000


class PublishMode(StrEnum):
    KAFKA_FIRST = "kafka-first"
    DB_FIRST = "db-first"


class TopicMode(StrEnum):
    PER_SYMBOL = "per-symbol"
    PER_KIND = "per-kind"


class SnapshotMethod(StrEnum):
    SNAPSHOT = "snapshot"
    AGG = "agg"
    REST = "rest"


class ProviderName(StrEnum):
    POLYGON = "polygon"
    REPLAY = "replay"


class CoinGeckoPlan(StrEnum):
    """Which header carries COINGECKO_API_KEY (x-cg-demo-api-key or x-cg-pro-api-key)."""

    DEMO = "demo"
    PRO = "pro"


# The plain string values, for click.Choice and messages.
PUBLISH_MODES: tuple[str, ...] = tuple(m.value for m in PublishMode)
SNAPSHOT_METHODS: tuple[str, ...] = tuple(m.value for m in SnapshotMethod)
PROVIDERS: tuple[str, ...] = tuple(m.value for m in ProviderName)


class ConfigError(ValueError):
    """A setting has a value ChronoX cannot use; the message names the variable."""


@dataclass(frozen=True)
class NewsFeed:
    """An RSS or Atom feed (CHRONOX_NEWS_FEEDS) and the symbols its articles are about."""

    url: str
    symbols: tuple[str, ...]


_URL_PASSWORD = re.compile(r"(//[^:/@]*:)[^@/]*@")


def hide_password(url: str) -> str:
    """`url` with its password as ***, for logs and messages (anything without one unchanged)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    if "@" not in url:
        return url
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):  # not URL-shaped for SQLAlchemy: mask user:password@ by hand
        return _URL_PASSWORD.sub(r"\1***@", url)


@dataclass(frozen=True)
class Settings:
    database_url: str = "sqlite:///chronox.db"
    broker_url: str | None = None
    result_backend: str | None = None
    redis_url: str | None = None
    kafka_brokers: tuple[str, ...] = ()
    flatfiles_url: str = "s3://flatfiles"
    s3_endpoint_url: str = POLYGON_FLATFILES_ENDPOINT
    s3_access_key_id: str | None = field(default=None, repr=False)
    s3_secret_access_key: str | None = field(default=None, repr=False)
    polygon_api_key: str | None = field(default=None, repr=False)
    polygon_base_url: str = "https://api.polygon.io"
    publish_mode: PublishMode = PublishMode.KAFKA_FIRST
    publish_throttle_ms: int = 0  # pause after each Kafka message, to spare a small cluster
    backfill_start: dt.date | None = None
    kafka_topic_mode: TopicMode = TopicMode.PER_SYMBOL
    provider: ProviderName = ProviderName.POLYGON
    polygon_rate_limit: int | None = None  # requests per window, all processes together; None: unlimited
    polygon_rate_window: float = 60.0
    polygon_timeout: float = 30.0
    polygon_max_retries: int = 5
    snapshot_method: SnapshotMethod = SnapshotMethod.SNAPSHOT
    snapshot_batch: int = 250
    polygon_ws_url: str = POLYGON_WS_URL
    polygon_crypto_ws_url: str = "wss://socket.polygon.io/crypto"  # the crypto cluster: XA.<PAIR>
    stream_poll_seconds: float = 5.0  # registry re-read by the stream process
    stream_backlog: int = 50_000  # bars between the socket reader and the writer
    stream_batch: int = 5_000  # bars per database transaction / Kafka flush
    stream_stamp_seconds: float = 5.0  # how often last_stream is written
    stream_reconnect_min_seconds: float = 1.0
    stream_reconnect_max_seconds: float = 60.0
    stream_stale_minutes: int = 5
    enable_scheduler: bool = True
    gap_scan_cron: str = "0 0 * * *"  # minute hour day-of-month month day-of-week, UTC
    snapshot_interval_minutes: float = 5.0
    stream_monitor_seconds: float = 60.0
    outbox_drain_seconds: float = 60.0
    backfill_stale_hours: float = 6.0  # a 'running' symbol older than this is presumed dead
    lake_url: str | None = None  # Parquet lake root, a directory or s3://bucket/prefix; None: lake off
    lake_s3_endpoint_url: str | None = None  # None: AWS's own endpoint
    lake_s3_access_key_id: str | None = field(default=None, repr=False)  # None: botocore's credential chain
    lake_s3_secret_access_key: str | None = field(default=None, repr=False)
    feature_store: bool = False  # features in Redis (CHRONOX_REDIS_URL)
    feature_store_days: int = 2  # newest days per symbol kept in Redis
    feature_ttl_seconds: int | None = 3600  # None: keys never expire
    feature_sweep_minutes: float = 15.0
    sink_day_cron: str = "30 1 * * *"  # sinks of the stream's completed New York day, UTC
    news_feeds: tuple[NewsFeed, ...] = ()
    news_feed_minutes: float = 15.0
    metrics_port: int = 8000  # /metrics, /healthz, /readyz of every long-running process; 0: none
    metrics_sample_seconds: float = 15.0  # how often beat samples the registry, outbox and queues
    liveness_seconds: float = 60.0  # a main loop stalled (or a worker off the broker) this long is not live
    # The ETL / real-time jobs (chronox.etl, chronox.realtime): crons read in schedule_tz.
    schedule_tz: str = "America/New_York"
    daily_historical_cron: str = "30 16 * * 1-5"  # after the close; holidays are skipped by the job
    weekly_backfill_cron: str = "0 2 * * 0"
    weekly_backfill_days: int = 365
    hourly_refresh_minutes: int = 10
    latest_prices_minutes: int = 1
    realtime_budget_share: float = 0.3  # of CHRONOX_POLYGON_RATE_LIMIT, held back for real-time work
    max_history_start: dt.date = dt.date(2003, 9, 10)  # the first day of Polygon's minute flat files
    # Binance (chronox.sources.binance*) and CoinGecko (chronox.sources.coingecko); their REST
    # calls share CHRONOX_POLYGON_TIMEOUT and CHRONOX_POLYGON_MAX_RETRIES with Polygon's.
    binance_base_url: str = "https://api.binance.com"
    binance_ws_url: str = "wss://stream.binance.com:9443"
    binance_data_url: str = "https://data.binance.vision"
    binance_api_key: str | None = field(default=None, repr=False)  # optional: market data needs none
    binance_weight_limit: int = 6000  # request weight per minute, all workers together
    coingecko_base_url: str | None = None  # None: the public/demo or the pro root, per coingecko_plan
    coingecko_api_key: str | None = field(default=None, repr=False)  # None: the keyless public API
    coingecko_plan: CoinGeckoPlan = CoinGeckoPlan.DEMO
    coingecko_rate_limit: int | None = 30  # calls per minute, all workers together; None: unlimited
    breaker_failures: int = 5  # consecutive transient failures that open a provider's circuit
    breaker_cooldown_seconds: float = 60.0
    tick_retention_days: int | None = None  # tick partitions older than this are dropped; None: kept
    # Which variables set each field read from the environment (a CHRONOX_ one, or the
    # registry service's it falls back to); a field absent here has its default. Pairs, not
    # a dict, so Settings stays hashable.
    origins: tuple[tuple[str, tuple[str, ...]], ...] = field(default=(), repr=False)

    def origin(self, setting: str) -> tuple[str, ...]:
        """The variables `setting` came from; () for the embedded default."""
        return dict(self.origins).get(setting, ())

    def __repr__(self) -> str:
        # dataclass keeps a __repr__ the class defines: this one hides URL passwords.
        shown = (f"{f.name}={(hide_password(v) if isinstance(v, str) else v)!r}"
                 for f in fields(self) if f.repr for v in (getattr(self, f.name),))
        return f"Settings({', '.join(shown)})"

    @property
    def in_process(self) -> bool:
        """No broker configured: the task graph runs inside the calling process."""
        return self.broker_url is None

    @property
    def kafka_enabled(self) -> bool:
        return bool(self.kafka_brokers)

    def default_backfill_start(self, today: dt.date | None = None) -> dt.date:
        if self.backfill_start is not None:
            return self.backfill_start
        return (today or dt.date.today()) - dt.timedelta(days=30)


# -- parsers: (variable name, stripped non-blank value) -> the field's value ---------------

Parser = Callable[[str, str], Any]


def _text(name: str, value: str) -> str:
    return value


def _list(name: str, value: str) -> tuple[str, ...]:
    """Comma-separated, blanks dropped."""
    return tuple(item.strip() for item in value.split(",") if item.strip())


def _choice(kind: type[StrEnum]) -> Parser:
    def parse(name: str, value: str) -> StrEnum:
        lowered = value.lower()
        try:
            return kind(lowered)
        except ValueError:
            choices = ", ".join(m.value for m in kind)
            raise ConfigError(f"{name}={lowered!r} is not one of {choices}") from None

    return parse


def _int(minimum: int, maximum: int | None = None, zero: Any = 0) -> Parser:
    """A whole number from `minimum` (0 or 1) up to `maximum`; 0, when allowed, parses to `zero`."""

    def parse(name: str, value: str) -> Any:
        try:
            number = int(value)
        except ValueError:
            raise ConfigError(f"{name}={value!r} is not an integer") from None
        if number < minimum:
            raise ConfigError(f"{name}={value!r} " + ("must be at least 1" if minimum else "must not be negative"))
        if maximum is not None and number > maximum:
            raise ConfigError(f"{name}={value!r} is more than {maximum}")
        return zero if number == 0 else number

    return parse


def _positive_float(name: str, value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(f"{name}={value!r} is not a number") from None
    if not number > 0 or number == float("inf"):
        raise ConfigError(f"{name}={value!r} must be a positive number")
    return number


def _bool(name: str, value: str) -> bool:
    lowered = value.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}={value!r} is not a boolean (true or false)")


def _day(name: str, value: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise ConfigError(f"{name}={value!r} is not a date (YYYY-MM-DD)") from None


def _ws_url(name: str, value: str) -> str:
    if not value.startswith(("ws://", "wss://")):
        raise ConfigError(f"{name}={value!r} must be a ws:// or wss:// URL, e.g. {POLYGON_WS_URL}")
    return value


def _cron(name: str, value: str) -> str:
    if len(value.split()) != 5:
        raise ConfigError(f"{name}={value!r} is not a cron expression of 5 fields "
                          "(minute hour day-of-month month day-of-week)")
    return value


def _zone(name: str, value: str) -> str:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"{name}={value!r} is not an IANA time zone (e.g. America/New_York, UTC)") from None
    return value


def _share(name: str, value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(f"{name}={value!r} is not a number") from None
    if not 0 <= number < 1:
        raise ConfigError(f"{name}={value!r} must be from 0 (no reserve) up to, not including, 1")
    return number


def _news_feeds(name: str, value: str) -> tuple[NewsFeed, ...]:
    """A JSON list of {"url": "http(s)://...", "symbols": ["AAPL", ...]}."""
    import json

    from chronox.strategy import InvalidInput, validate_symbol

    example = '[{"url": "https://example.com/feed.xml", "symbols": ["AAPL"]}]'
    try:
        items = json.loads(value)
    except ValueError:
        raise ConfigError(f"{name} is not JSON; expected e.g. {example}") from None
    if not isinstance(items, list):
        raise ConfigError(f"{name} must be a JSON list, e.g. {example}")
    feeds = []
    for item in items:
        url = item.get("url") if isinstance(item, dict) else None
        symbols = item.get("symbols", []) if isinstance(item, dict) else None
        if not isinstance(url, str) or not url.startswith(("http://", "https://")) or not isinstance(symbols, list):
            raise ConfigError(f"{name}: {str(item)[:80]} is not {{\"url\": \"http(s)://...\", \"symbols\": [...]}}")
        try:
            feeds.append(NewsFeed(url, tuple(validate_symbol(s) for s in symbols)))
        except InvalidInput as exc:
            raise ConfigError(f"{name}: {exc}") from None
    return tuple(feeds)


# -- the registry service's variables: fallbacks for CHRONOX_ ones -------------------------

def _port(name: str, value: str) -> int:
    number: int = _int(1, maximum=65535)(name, value)
    return number


def _timescale_url(parts: Mapping[str, str]) -> str:
    """TIMESCALE_* -> a PostgreSQL URL; libpq's defaults for the parts not given (the
    database is named after the user)."""
    from sqlalchemy.engine import URL

    user = parts.get("TIMESCALE_USER", "postgres")
    return URL.create("postgresql", username=user, password=parts.get("TIMESCALE_PASSWORD"),
                      host=parts.get("TIMESCALE_HOST", "localhost"),
                      port=_port("TIMESCALE_PORT", parts.get("TIMESCALE_PORT", "5432")),
                      database=parts.get("TIMESCALE_DB", user)).render_as_string(hide_password=False)


def _redis_url(parts: Mapping[str, str]) -> str:
    """REDIS_* -> redis://[:password@]host:port/0: no old variable names a database, Redis's default is 0."""
    from urllib.parse import quote

    password = parts.get("REDIS_PASSWORD")
    auth = f":{quote(password, safe='')}@" if password else ""
    return (f"redis://{auth}{parts.get('REDIS_HOST', 'localhost')}:"
            f"{_port('REDIS_PORT', parts.get('REDIS_PORT', '6379'))}/0")


@dataclass(frozen=True)
class Legacy:
    """The registry service's variables read when the CHRONOX_ one is unset: any of `names`
    set is enough; `build` makes the CHRONOX_ variable's text of those set (by name), and
    without it the one name's text is taken as is."""

    names: tuple[str, ...]
    build: Callable[[Mapping[str, str]], str] | None = None

    def read(self, environ: Mapping[str, str]) -> tuple[str | None, tuple[str, ...]]:
        """(text, the variables it came from); (None, ()) when none of them is set."""
        parts = {name: text for name in self.names if (text := _env(environ, name)) is not None}
        if not parts:
            return None, ()
        return (self.build(parts) if self.build else parts[self.names[0]]), tuple(parts)


TIMESCALE = Legacy(("TIMESCALE_HOST", "TIMESCALE_PORT", "TIMESCALE_DB", "TIMESCALE_USER", "TIMESCALE_PASSWORD"),
                   _timescale_url)
REDIS = Legacy(("REDIS_HOST", "REDIS_PORT", "REDIS_PASSWORD"), _redis_url)


# -- the table ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Variable:
    """One environment variable: the Settings field it sets and how its text is checked;
    `legacy`, the registry service's variables that stand in for it when it is unset."""

    name: str
    setting: str  # the Settings field
    parse: Parser
    legacy: Legacy | None = None


ENVIRONMENT: tuple[Variable, ...] = (
    Variable("CHRONOX_DATABASE_URL", "database_url", _text, TIMESCALE),
    Variable("CHRONOX_BROKER_URL", "broker_url", _text, REDIS),  # unset: tasks run in-process
    Variable("CHRONOX_RESULT_BACKEND", "result_backend", _text),  # unset: a Redis broker doubles as it
    Variable("CHRONOX_REDIS_URL", "redis_url", _text, REDIS),
    Variable("CHRONOX_KAFKA_BROKERS", "kafka_brokers", _list, Legacy(("KAFKA_BROKERS",))),  # unset: Kafka off
    Variable("CHRONOX_FLATFILES_URL", "flatfiles_url", _text),
    Variable("CHRONOX_S3_ENDPOINT_URL", "s3_endpoint_url", _text),
    Variable("CHRONOX_S3_ACCESS_KEY_ID", "s3_access_key_id", _text),
    Variable("CHRONOX_S3_SECRET_ACCESS_KEY", "s3_secret_access_key", _text),
    Variable("POLYGON_API_KEY", "polygon_api_key", _text),
    Variable("CHRONOX_POLYGON_BASE_URL", "polygon_base_url", _text),
    Variable("CHRONOX_PUBLISH_MODE", "publish_mode", _choice(PublishMode)),
    # 0: no pause after a Kafka message.
    Variable("CHRONOX_PUBLISH_THROTTLE_MS", "publish_throttle_ms", _int(0, maximum=MAX_PUBLISH_THROTTLE_MS)),
    Variable("CHRONOX_BACKFILL_START", "backfill_start", _day),  # unset: 30 days before today
    Variable("CHRONOX_KAFKA_TOPIC_MODE", "kafka_topic_mode", _choice(TopicMode)),
    Variable("CHRONOX_PROVIDER", "provider", _choice(ProviderName)),
    # 0: unlimited (None), so a deployment can switch the limit off explicitly.
    Variable("CHRONOX_POLYGON_RATE_LIMIT", "polygon_rate_limit", _int(0, zero=None)),
    Variable("CHRONOX_POLYGON_RATE_WINDOW", "polygon_rate_window", _positive_float),
    Variable("CHRONOX_POLYGON_TIMEOUT", "polygon_timeout", _positive_float),
    # 0: no retries, the first failure is final.
    Variable("CHRONOX_POLYGON_MAX_RETRIES", "polygon_max_retries", _int(0)),
    Variable("CHRONOX_SNAPSHOT_METHOD", "snapshot_method", _choice(SnapshotMethod)),
    # Sizes and ages: 0 has no meaning and is refused (at least 1).
    Variable("CHRONOX_SNAPSHOT_BATCH", "snapshot_batch", _int(1)),
    Variable("CHRONOX_POLYGON_WS_URL", "polygon_ws_url", _ws_url),
    Variable("CHRONOX_POLYGON_CRYPTO_WS_URL", "polygon_crypto_ws_url", _ws_url),
    Variable("CHRONOX_STREAM_POLL_SECONDS", "stream_poll_seconds", _positive_float),
    Variable("CHRONOX_STREAM_BACKLOG", "stream_backlog", _int(1)),
    Variable("CHRONOX_STREAM_BATCH", "stream_batch", _int(1)),
    Variable("CHRONOX_STREAM_STAMP_SECONDS", "stream_stamp_seconds", _positive_float),
    Variable("CHRONOX_STREAM_RECONNECT_MIN_SECONDS", "stream_reconnect_min_seconds", _positive_float),
    Variable("CHRONOX_STREAM_RECONNECT_MAX_SECONDS", "stream_reconnect_max_seconds", _positive_float),
    Variable("CHRONOX_STREAM_STALE_MINUTES", "stream_stale_minutes", _int(1)),
    Variable("CHRONOX_ENABLE_SCHEDULER", "enable_scheduler", _bool, Legacy(("ENABLE_SCHEDULER",))),
    Variable("CHRONOX_GAP_SCAN_CRON", "gap_scan_cron", _cron),
    Variable("CHRONOX_SNAPSHOT_INTERVAL_MINUTES", "snapshot_interval_minutes", _positive_float,
             Legacy(("SNAPSHOT_INTERVAL_MINUTES",))),
    Variable("CHRONOX_STREAM_MONITOR_SECONDS", "stream_monitor_seconds", _positive_float),
    Variable("CHRONOX_OUTBOX_DRAIN_SECONDS", "outbox_drain_seconds", _positive_float),
    Variable("CHRONOX_BACKFILL_STALE_HOURS", "backfill_stale_hours", _positive_float),
    Variable("CHRONOX_LAKE_URL", "lake_url", _text),  # unset: no Parquet lake
    Variable("CHRONOX_LAKE_S3_ENDPOINT_URL", "lake_s3_endpoint_url", _text),
    Variable("CHRONOX_LAKE_S3_ACCESS_KEY_ID", "lake_s3_access_key_id", _text),
    Variable("CHRONOX_LAKE_S3_SECRET_ACCESS_KEY", "lake_s3_secret_access_key", _text),
    Variable("CHRONOX_FEATURE_STORE", "feature_store", _bool),
    Variable("CHRONOX_FEATURE_STORE_DAYS", "feature_store_days", _int(1)),
    # 0: keys without a TTL (None).
    Variable("CHRONOX_FEATURE_TTL_SECONDS", "feature_ttl_seconds", _int(0, zero=None)),
    Variable("CHRONOX_FEATURE_SWEEP_MINUTES", "feature_sweep_minutes", _positive_float),
    Variable("CHRONOX_SINK_DAY_CRON", "sink_day_cron", _cron),
    Variable("CHRONOX_NEWS_FEEDS", "news_feeds", _news_feeds),
    Variable("CHRONOX_NEWS_FEED_MINUTES", "news_feed_minutes", _positive_float),
    # 0: no endpoint. PROMETHEUS_PORT is the name the systems ChronoX replaces used.
    Variable("CHRONOX_METRICS_PORT", "metrics_port", _int(0, maximum=65535), Legacy(("PROMETHEUS_PORT",))),
    Variable("CHRONOX_METRICS_SAMPLE_SECONDS", "metrics_sample_seconds", _positive_float),
    Variable("CHRONOX_LIVENESS_SECONDS", "liveness_seconds", _positive_float),
    Variable("CHRONOX_SCHEDULE_TZ", "schedule_tz", _zone),
    Variable("CHRONOX_DAILY_HISTORICAL_CRON", "daily_historical_cron", _cron),
    Variable("CHRONOX_WEEKLY_BACKFILL_CRON", "weekly_backfill_cron", _cron),
    Variable("CHRONOX_WEEKLY_BACKFILL_DAYS", "weekly_backfill_days", _int(1)),
    Variable("CHRONOX_HOURLY_REFRESH_MINUTES", "hourly_refresh_minutes", _int(1, maximum=60)),
    Variable("CHRONOX_LATEST_PRICES_MINUTES", "latest_prices_minutes", _int(1, maximum=60)),
    Variable("CHRONOX_REALTIME_BUDGET_SHARE", "realtime_budget_share", _share),
    Variable("CHRONOX_MAX_HISTORY_START", "max_history_start", _day),
    Variable("CHRONOX_BINANCE_BASE_URL", "binance_base_url", _text),
    Variable("CHRONOX_BINANCE_WS_URL", "binance_ws_url", _ws_url),
    Variable("CHRONOX_BINANCE_DATA_URL", "binance_data_url", _text),
    Variable("BINANCE_API_KEY", "binance_api_key", _text),
    Variable("CHRONOX_BINANCE_WEIGHT_LIMIT", "binance_weight_limit", _int(1)),
    Variable("CHRONOX_COINGECKO_BASE_URL", "coingecko_base_url", _text),
    Variable("COINGECKO_API_KEY", "coingecko_api_key", _text),
    Variable("CHRONOX_COINGECKO_PLAN", "coingecko_plan", _choice(CoinGeckoPlan)),
    # 0: unlimited (None), as for CHRONOX_POLYGON_RATE_LIMIT.
    Variable("CHRONOX_COINGECKO_RATE_LIMIT", "coingecko_rate_limit", _int(0, zero=None)),
    Variable("CHRONOX_BREAKER_FAILURES", "breaker_failures", _int(1)),
    Variable("CHRONOX_BREAKER_COOLDOWN_SECONDS", "breaker_cooldown_seconds", _positive_float),
    # Unset (or 0): tick partitions are kept for ever.
    Variable("CHRONOX_TICK_RETENTION_DAYS", "tick_retention_days", _int(0, zero=None)),
)


# Every registry-service variable the table reads, e.g. for a test to clear them all.
LEGACY_VARIABLES: tuple[str, ...] = tuple(dict.fromkeys(
    name for v in ENVIRONMENT if v.legacy is not None for name in v.legacy.names))


def _env(environ: Mapping[str, str], name: str) -> str | None:
    value = environ.get(name)
    if value is None or value.strip() == "":
        return None
    return value.strip()


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read the environment (os.environ unless given) now; cheap enough to call per task."""
    source = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    origins: dict[str, tuple[str, ...]] = {}
    for variable in ENVIRONMENT:
        names: tuple[str, ...] = (variable.name,)
        text = _env(source, variable.name)
        if text is None and variable.legacy is not None:  # CHRONOX_ wins; else the old name
            text, names = variable.legacy.read(source)
        if text is not None:
            values[variable.setting] = variable.parse(", ".join(names), text)
            origins[variable.setting] = names
    if values.get("feature_store") and not values.get("redis_url"):
        raise ConfigError("CHRONOX_FEATURE_STORE=true needs CHRONOX_REDIS_URL (the Redis the features go to)")
    broker_url = values.get("broker_url")
    if "result_backend" not in values and broker_url and broker_url.startswith(("redis://", "rediss://")):
        values["result_backend"] = broker_url
        origins["result_backend"] = origins["broker_url"]
    return Settings(**values, origins=tuple(origins.items()))


# Settings one run may override (`chronox run --publish-mode ...`); they travel to the
# workers as the phase tasks' `options` kwarg, so none of them may be a secret.
RUN_OPTIONS = ("publish_mode", "publish_throttle_ms", "snapshot_method")
_RUN_CHOICES: dict[str, type[StrEnum]] = {"publish_mode": PublishMode, "snapshot_method": SnapshotMethod}


def validate_run_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """Checked, normalised run options as plain JSON values (str, int); ConfigError names the bad one."""
    checked: dict[str, Any] = {}
    for name, value in (options or {}).items():
        if value is None:
            continue
        if name not in RUN_OPTIONS:
            raise ConfigError(f"unknown run option {name!r}; known: {', '.join(RUN_OPTIONS)}")
        if name == "publish_throttle_ms":
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_PUBLISH_THROTTLE_MS:
                raise ConfigError(f"publish_throttle_ms={value!r} must be a whole number of milliseconds "
                                  f"from 0 to {MAX_PUBLISH_THROTTLE_MS}")
            value = int(value)
        else:
            choices = tuple(m.value for m in _RUN_CHOICES[name])
            if not isinstance(value, str) or value.lower() not in choices:
                raise ConfigError(f"{name}={value!r} is not one of {', '.join(choices)}")
            value = str(value.lower())
        checked[name] = value
    return checked


def run_settings(options: Mapping[str, Any] | None = None) -> Settings:
    """The environment's settings with one run's overrides applied."""
    settings = load_settings()
    checked = validate_run_options(options)
    typed: dict[str, Any] = {name: _RUN_CHOICES[name](value) if name in _RUN_CHOICES else value
                             for name, value in checked.items()}
    return replace(settings, **typed) if typed else settings
