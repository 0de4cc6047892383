"""Environment -> typed settings, read in one place.

Every variable is optional; unset means the embedded default (SQLite in the working
directory, tasks executed in-process, Redis and Kafka features off).
"""
from __future__ import annotations

import datetime as dt
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

POLYGON_FLATFILES_ENDPOINT = "https://files.polygon.io"
POLYGON_WS_URL = "wss://socket.polygon.io/stocks"  # real-time stocks feed
PUBLISH_MODES = ("kafka-first", "db-first")
PROVIDERS = ("polygon", "replay")
SNAPSHOT_METHODS = ("snapshot", "agg", "rest")


class ConfigError(ValueError):
    """A setting has a value ChronoX cannot use; the message names the variable."""


def _env(name: str) -> str | None:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return None
    return value.strip()


def _parse_day(name: str, value: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise ConfigError(f"{name}={value!r} is not a date (YYYY-MM-DD)") from None


def _parse_int(name: str, value: str | None, default: int | None, maximum: int | None = None) -> int | None:
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise ConfigError(f"{name}={value!r} is not an integer") from None
    if number < 0:
        raise ConfigError(f"{name}={value!r} must not be negative")
    if maximum is not None and number > maximum:
        raise ConfigError(f"{name}={value!r} is more than {maximum}")
    return number


def _parse_positive_float(name: str, value: str | None, default: float) -> float:
    if value is None:
        return default
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(f"{name}={value!r} is not a number") from None
    if not number > 0 or number == float("inf"):
        raise ConfigError(f"{name}={value!r} must be a positive number")
    return number


def _ws_url(name: str, value: str | None, default: str) -> str:
    url = value or default
    if not url.startswith(("ws://", "wss://")):
        raise ConfigError(f"{name}={url!r} must be a ws:// or wss:// URL, e.g. {default}")
    return url


def _choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    value = (_env(name) or default).lower()
    if value not in choices:
        raise ConfigError(f"{name}={value!r} is not one of {', '.join(choices)}")
    return value


def _parse_bool(name: str, value: str | None, default: bool) -> bool:
    if value is None:
        return default
    lowered = value.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}={value!r} is not a boolean (true or false)")


def _cron(name: str, value: str | None, default: str) -> str:
    text = value or default
    if len(text.split()) != 5:
        raise ConfigError(f"{name}={text!r} is not a cron expression of 5 fields "
                          "(minute hour day-of-month month day-of-week)")
    return text


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
    publish_mode: str = "kafka-first"
    publish_throttle_ms: int = 0  # pause after each Kafka message, to spare a small cluster
    backfill_start: dt.date | None = None
    kafka_topic_mode: str = "per-symbol"
    provider: str = "polygon"
    polygon_rate_limit: int | None = None  # requests per window, all processes together
    polygon_rate_window: float = 60.0
    polygon_timeout: float = 30.0
    polygon_max_retries: int = 5
    snapshot_method: str = "snapshot"
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


# A minute per message already stalls a day load for days; more is a typo, and beyond
# about 10**12 ms time.sleep overflows.
MAX_PUBLISH_THROTTLE_MS = 60_000


def load_settings() -> Settings:
    """Read the environment now; cheap enough to call per task."""
    publish_mode = (_env("CHRONOX_PUBLISH_MODE") or "kafka-first").lower()
    if publish_mode not in PUBLISH_MODES:
        raise ConfigError(
            f"CHRONOX_PUBLISH_MODE={publish_mode!r} is not one of {', '.join(PUBLISH_MODES)}"
        )
    topic_mode = (_env("CHRONOX_KAFKA_TOPIC_MODE") or "per-symbol").lower()
    if topic_mode not in ("per-symbol", "per-kind"):
        raise ConfigError(
            f"CHRONOX_KAFKA_TOPIC_MODE={topic_mode!r} is not one of per-symbol, per-kind"
        )
    broker_url = _env("CHRONOX_BROKER_URL")
    result_backend = _env("CHRONOX_RESULT_BACKEND")
    if result_backend is None and broker_url is not None and broker_url.startswith(
        ("redis://", "rediss://")
    ):
        result_backend = broker_url
    kafka = _env("CHRONOX_KAFKA_BROKERS")
    backfill_start = _env("CHRONOX_BACKFILL_START")
    return Settings(
        database_url=_env("CHRONOX_DATABASE_URL") or "sqlite:///chronox.db",
        broker_url=broker_url,
        result_backend=result_backend,
        redis_url=_env("CHRONOX_REDIS_URL"),
        kafka_brokers=tuple(b.strip() for b in kafka.split(",") if b.strip()) if kafka else (),
        flatfiles_url=_env("CHRONOX_FLATFILES_URL") or "s3://flatfiles",
        s3_endpoint_url=_env("CHRONOX_S3_ENDPOINT_URL") or POLYGON_FLATFILES_ENDPOINT,
        s3_access_key_id=_env("CHRONOX_S3_ACCESS_KEY_ID"),
        s3_secret_access_key=_env("CHRONOX_S3_SECRET_ACCESS_KEY"),
        polygon_api_key=_env("POLYGON_API_KEY"),
        polygon_base_url=_env("CHRONOX_POLYGON_BASE_URL") or "https://api.polygon.io",
        publish_mode=publish_mode,
        publish_throttle_ms=_parse_int("CHRONOX_PUBLISH_THROTTLE_MS", _env("CHRONOX_PUBLISH_THROTTLE_MS"), 0,
                                       maximum=MAX_PUBLISH_THROTTLE_MS) or 0,
        backfill_start=_parse_day("CHRONOX_BACKFILL_START", backfill_start)
        if backfill_start
        else None,
        kafka_topic_mode=topic_mode,
        provider=_choice("CHRONOX_PROVIDER", "polygon", PROVIDERS),
        # 0 reads as "no limit" so a deployment can switch the limit off explicitly.
        polygon_rate_limit=_parse_int("CHRONOX_POLYGON_RATE_LIMIT", _env("CHRONOX_POLYGON_RATE_LIMIT"), None) or None,
        polygon_rate_window=_parse_positive_float("CHRONOX_POLYGON_RATE_WINDOW",
                                                  _env("CHRONOX_POLYGON_RATE_WINDOW"), 60.0),
        polygon_timeout=_parse_positive_float("CHRONOX_POLYGON_TIMEOUT", _env("CHRONOX_POLYGON_TIMEOUT"), 30.0),
        polygon_max_retries=_parse_int("CHRONOX_POLYGON_MAX_RETRIES", _env("CHRONOX_POLYGON_MAX_RETRIES"), 5),
        snapshot_method=_choice("CHRONOX_SNAPSHOT_METHOD", "snapshot", SNAPSHOT_METHODS),
        snapshot_batch=_parse_int("CHRONOX_SNAPSHOT_BATCH", _env("CHRONOX_SNAPSHOT_BATCH"), 250) or 250,
        polygon_ws_url=_ws_url("CHRONOX_POLYGON_WS_URL", _env("CHRONOX_POLYGON_WS_URL"), POLYGON_WS_URL),
        stream_poll_seconds=_parse_positive_float("CHRONOX_STREAM_POLL_SECONDS",
                                                  _env("CHRONOX_STREAM_POLL_SECONDS"), 5.0),
        stream_backlog=_parse_int("CHRONOX_STREAM_BACKLOG", _env("CHRONOX_STREAM_BACKLOG"), 50_000) or 50_000,
        stream_batch=_parse_int("CHRONOX_STREAM_BATCH", _env("CHRONOX_STREAM_BATCH"), 5_000) or 5_000,
        stream_stamp_seconds=_parse_positive_float("CHRONOX_STREAM_STAMP_SECONDS",
                                                   _env("CHRONOX_STREAM_STAMP_SECONDS"), 5.0),
        stream_reconnect_min_seconds=_parse_positive_float(
            "CHRONOX_STREAM_RECONNECT_MIN_SECONDS", _env("CHRONOX_STREAM_RECONNECT_MIN_SECONDS"), 1.0),
        stream_reconnect_max_seconds=_parse_positive_float(
            "CHRONOX_STREAM_RECONNECT_MAX_SECONDS", _env("CHRONOX_STREAM_RECONNECT_MAX_SECONDS"), 60.0),
        stream_stale_minutes=_parse_int("CHRONOX_STREAM_STALE_MINUTES",
                                        _env("CHRONOX_STREAM_STALE_MINUTES"), 5) or 5,
        enable_scheduler=_parse_bool("CHRONOX_ENABLE_SCHEDULER", _env("CHRONOX_ENABLE_SCHEDULER"), True),
        gap_scan_cron=_cron("CHRONOX_GAP_SCAN_CRON", _env("CHRONOX_GAP_SCAN_CRON"), "0 0 * * *"),
        snapshot_interval_minutes=_parse_positive_float(
            "CHRONOX_SNAPSHOT_INTERVAL_MINUTES", _env("CHRONOX_SNAPSHOT_INTERVAL_MINUTES"), 5.0),
        stream_monitor_seconds=_parse_positive_float(
            "CHRONOX_STREAM_MONITOR_SECONDS", _env("CHRONOX_STREAM_MONITOR_SECONDS"), 60.0),
        outbox_drain_seconds=_parse_positive_float(
            "CHRONOX_OUTBOX_DRAIN_SECONDS", _env("CHRONOX_OUTBOX_DRAIN_SECONDS"), 60.0),
        backfill_stale_hours=_parse_positive_float(
            "CHRONOX_BACKFILL_STALE_HOURS", _env("CHRONOX_BACKFILL_STALE_HOURS"), 6.0),
    )


# Settings one run may override (`chronox run --publish-mode ...`); they travel to the
# workers as the phase tasks' `options` kwarg, so none of them may be a secret.
RUN_OPTIONS = ("publish_mode", "publish_throttle_ms", "snapshot_method")


def validate_run_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """Checked, normalised run options; ConfigError names the bad one."""
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
        else:
            choices = PUBLISH_MODES if name == "publish_mode" else SNAPSHOT_METHODS
            if not isinstance(value, str) or value.lower() not in choices:
                raise ConfigError(f"{name}={value!r} is not one of {', '.join(choices)}")
            value = value.lower()
        checked[name] = value
    return checked


def run_settings(options: Mapping[str, Any] | None = None) -> Settings:
    """The environment's settings with one run's overrides applied."""
    settings = load_settings()
    checked = validate_run_options(options)
    return replace(settings, **checked) if checked else settings
