"""Celery configuration for work that must not be lost (DESIGN decision 6), as a pure
function of the settings: the deployed app (through the top-level celeryconfig module),
beat and every client built with chronox.celery_app.make_client read the same values."""
from __future__ import annotations

from typing import Any

from celery.schedules import crontab
from kombu import Exchange, Queue

from chronox.settings import Settings
from chronox.tasks.beat import etl_realtime_entries

QUEUES = ("chronox.control", "chronox.flatfiles", "chronox.rest", "chronox.publish", "chronox.sinks",
          "chronox.realtime")


def celery_config(settings: Settings) -> dict[str, Any]:
    """Every Celery setting ChronoX uses, by its lowercase Celery name."""
    default = Exchange("chronox", type="direct")
    return {
        # Unset broker: the CLI runs the task graph in-process and nothing is sent anywhere.
        "broker_url": settings.broker_url or "memory://",
        "result_backend": settings.result_backend,
        "result_expires": 7 * 24 * 3600,
        "result_extended": True,  # Flower and `celery result` show names and arguments
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "enable_utc": True,
        "timezone": "UTC",
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_soft_time_limit": 1800,
        "task_time_limit": 2100,
        "task_track_started": True,
        "task_send_sent_event": True,
        "worker_send_task_events": True,
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,  # keep reconnecting through a broker restart
        # Redis redelivers an unacked task after the visibility timeout; it must exceed the
        # longest task (the hard time limit) or a long day load would run twice at once.
        "broker_transport_options": {"visibility_timeout": 2400},
        "result_backend_transport_options": {"retry_policy": {"timeout": 5.0}},
        "redis_backend_health_check_interval": 30,
        "task_queues": tuple(Queue(name, default, routing_key=name) for name in QUEUES),
        "task_default_queue": "chronox.control",
        "task_default_exchange": "chronox",
        "task_default_routing_key": "chronox.control",
        "task_routes": {
            "chronox.phase.flatpack_day": {"queue": "chronox.flatfiles", "routing_key": "chronox.flatfiles"},
            # Tick day files load with the minute bars'; their REST gap fill is REST work.
            "chronox.ticks.day": {"queue": "chronox.flatfiles", "routing_key": "chronox.flatfiles"},
            "chronox.ticks.*": {"queue": "chronox.rest", "routing_key": "chronox.rest"},
            "chronox.publish.drain_outbox": {"queue": "chronox.publish", "routing_key": "chronox.publish"},
            "chronox.rest.*": {"queue": "chronox.rest", "routing_key": "chronox.rest"},
            "chronox.snapshot.*": {"queue": "chronox.rest", "routing_key": "chronox.rest"},
            # Stream activation and the health check are quick bookkeeping: the control queue.
            "chronox.phase.stream": {"queue": "chronox.control", "routing_key": "chronox.control"},
            "chronox.stream.*": {"queue": "chronox.control", "routing_key": "chronox.control"},
            "chronox.schedule.*": {"queue": "chronox.control", "routing_key": "chronox.control"},
            # The minute and 10-minute refreshes: a queue of their own, so their workers scale apart.
            "chronox.realtime.*": {"queue": "chronox.realtime", "routing_key": "chronox.realtime"},
            # Sinks copy committed rows to the lake and Redis; sending them is quick bookkeeping.
            "chronox.sink.stream_day": {"queue": "chronox.control", "routing_key": "chronox.control"},
            "chronox.sink.*": {"queue": "chronox.sinks", "routing_key": "chronox.sinks"},
            "chronox.features.*": {"queue": "chronox.sinks", "routing_key": "chronox.sinks"},
            "chronox.news.*": {"queue": "chronox.rest", "routing_key": "chronox.rest"},
        },
        "imports": ("chronox.tasks.backfill", "chronox.tasks.rest", "chronox.tasks.stream", "chronox.tasks.schedule",
                    "chronox.tasks.sinks", "chronox.tasks.news", "chronox.tasks.etl", "chronox.tasks.realtime",
                    "chronox.tasks.retention", "chronox.tasks.ticks"),
        "beat_schedule": _beat_schedule(settings),
    }


# The registry service's job ids -> beat jobs: `chronox schedule trigger` takes either name.
JOB_ALIASES: dict[str, str] = {"nightly_gap_detection": "nightly_gap_scan"}


def job_name(name: str) -> str:
    """The beat job `name` stands for (itself unless it is an old id)."""
    return JOB_ALIASES.get(name, name)


def job_aliases(job: str) -> list[str]:
    """The old ids that stand for `job`."""
    return sorted(alias for alias, target in JOB_ALIASES.items() if target == job)


def _data_jobs(settings: Settings) -> dict[str, dict[str, Any]]:
    """Beat jobs of the lake, the feature store, news and tick retention, each only when what it serves is on."""
    jobs: dict[str, dict[str, Any]] = {}
    if settings.lake_url or settings.feature_store:
        minute, hour, day_of_month, month, day_of_week = settings.sink_day_cron.split()
        jobs["sink_stream_day"] = {
            "task": "chronox.sink.stream_day",
            "schedule": crontab(minute=minute, hour=hour, day_of_month=day_of_month,
                                month_of_year=month, day_of_week=day_of_week),
            "options": {"queue": "chronox.control", "expires": 23 * 3600},
        }
    if settings.feature_store:
        every = settings.feature_sweep_minutes * 60
        jobs["feature_ttl_sweep"] = {"task": "chronox.features.ttl_sweep", "schedule": every,
                                     "options": {"queue": "chronox.sinks", "expires": every}}
    if settings.news_feeds:
        every = settings.news_feed_minutes * 60
        jobs["news_feeds"] = {"task": "chronox.news.feeds", "schedule": every,
                              "options": {"queue": "chronox.rest", "expires": every}}
    if settings.tick_retention_days:
        # Expired tick partitions (chronox.partitions), once a day in the quiet hours.
        jobs["tick_retention"] = {"task": "chronox.schedule.tick_retention", "schedule": crontab(minute=15, hour=3),
                                  "options": {"queue": "chronox.control", "expires": 23 * 3600}}
    return jobs


def _beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    """Beat's jobs by stable name; each expires before its next run, so a beat that was
    down (or a backlog of queued runs) never piles the same job up."""
    if not settings.enable_scheduler:
        return {}
    minute, hour, day_of_month, month, day_of_week = settings.gap_scan_cron.split()
    snapshot_every = settings.snapshot_interval_minutes * 60
    return _data_jobs(settings) | etl_realtime_entries(settings) | {
        "nightly_gap_scan": {
            "task": "chronox.schedule.nightly_gap_scan",
            "schedule": crontab(minute=minute, hour=hour, day_of_month=day_of_month,
                                month_of_year=month, day_of_week=day_of_week),
            "options": {"queue": "chronox.control", "expires": 23 * 3600},
        },
        "snapshot_refresh": {
            "task": "chronox.snapshot.refresh",
            "schedule": snapshot_every,
            "options": {"queue": "chronox.rest", "expires": snapshot_every},
        },
        "stream_monitor": {
            "task": "chronox.stream.monitor",
            "schedule": settings.stream_monitor_seconds,
            "options": {"queue": "chronox.control", "expires": settings.stream_monitor_seconds},
        },
        "outbox_drain": {
            "task": "chronox.publish.drain_outbox",
            "schedule": settings.outbox_drain_seconds,
            "options": {"queue": "chronox.publish", "expires": settings.outbox_drain_seconds},
        },
    }
