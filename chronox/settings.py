"""Environment -> typed settings, read in one place.

Every variable is optional; unset (or blank) means the `Settings` field's default: SQLite
in the working directory, tasks executed in-process, Redis and Kafka features off.
`ENVIRONMENT` lists the variables, one entry each: the variable, the field it sets and
the parser that checks it. The defaults live only on `Settings`.
"""
from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
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


# The plain string values, for click.Choice and messages.
PUBLISH_MODES: tuple[str, ...] = tuple(m.value for m in PublishMode)
SNAPSHOT_METHODS: tuple[str, ...] = tuple(m.value for m in SnapshotMethod)
PROVIDERS: tuple[str, ...] = tuple(m.value for m in ProviderName)


class ConfigError(ValueError):
    """A setting has a value ChronoX cannot use; the message names the variable."""


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


# -- the table ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Variable:
    """One environment variable: the Settings field it sets and how its text is checked."""

    name: str
    setting: str  # the Settings field
    parse: Parser


ENVIRONMENT: tuple[Variable, ...] = (
    Variable("CHRONOX_DATABASE_URL", "database_url", _text),
    Variable("CHRONOX_BROKER_URL", "broker_url", _text),  # unset: tasks run in-process
    Variable("CHRONOX_RESULT_BACKEND", "result_backend", _text),  # unset: a Redis broker doubles as it
    Variable("CHRONOX_REDIS_URL", "redis_url", _text),
    Variable("CHRONOX_KAFKA_BROKERS", "kafka_brokers", _list),  # unset: Kafka off
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
    Variable("CHRONOX_STREAM_POLL_SECONDS", "stream_poll_seconds", _positive_float),
    Variable("CHRONOX_STREAM_BACKLOG", "stream_backlog", _int(1)),
    Variable("CHRONOX_STREAM_BATCH", "stream_batch", _int(1)),
    Variable("CHRONOX_STREAM_STAMP_SECONDS", "stream_stamp_seconds", _positive_float),
    Variable("CHRONOX_STREAM_RECONNECT_MIN_SECONDS", "stream_reconnect_min_seconds", _positive_float),
    Variable("CHRONOX_STREAM_RECONNECT_MAX_SECONDS", "stream_reconnect_max_seconds", _positive_float),
    Variable("CHRONOX_STREAM_STALE_MINUTES", "stream_stale_minutes", _int(1)),
    Variable("CHRONOX_ENABLE_SCHEDULER", "enable_scheduler", _bool),
    Variable("CHRONOX_GAP_SCAN_CRON", "gap_scan_cron", _cron),
    Variable("CHRONOX_SNAPSHOT_INTERVAL_MINUTES", "snapshot_interval_minutes", _positive_float),
    Variable("CHRONOX_STREAM_MONITOR_SECONDS", "stream_monitor_seconds", _positive_float),
    Variable("CHRONOX_OUTBOX_DRAIN_SECONDS", "outbox_drain_seconds", _positive_float),
    Variable("CHRONOX_BACKFILL_STALE_HOURS", "backfill_stale_hours", _positive_float),
)


def _env(environ: Mapping[str, str], name: str) -> str | None:
    value = environ.get(name)
    if value is None or value.strip() == "":
        return None
    return value.strip()


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read the environment (os.environ unless given) now; cheap enough to call per task."""
    source = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for variable in ENVIRONMENT:
        text = _env(source, variable.name)
        if text is not None:
            values[variable.setting] = variable.parse(variable.name, text)
    broker_url = values.get("broker_url")
    if "result_backend" not in values and broker_url and broker_url.startswith(("redis://", "rediss://")):
        values["result_backend"] = broker_url
    return Settings(**values)


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
