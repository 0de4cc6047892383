"""Celery configuration for work that must not be lost (DESIGN decision 6), as a pure
function of the settings: the deployed app (through the top-level celeryconfig module),
beat and every client built with chronox.celery_app.make_client read the same values."""
from __future__ import annotations

from typing import Any

from celery.schedules import crontab
from kombu import Exchange, Queue

from chronox.settings import Settings

QUEUES = ("chronox.control", "chronox.flatfiles", "chronox.rest", "chronox.publish")


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
            "chronox.publish.drain_outbox": {"queue": "chronox.publish", "routing_key": "chronox.publish"},
            "chronox.rest.*": {"queue": "chronox.rest", "routing_key": "chronox.rest"},
            "chronox.snapshot.*": {"queue": "chronox.rest", "routing_key": "chronox.rest"},
            # Stream activation and the health check are quick bookkeeping: the control queue.
            "chronox.phase.stream": {"queue": "chronox.control", "routing_key": "chronox.control"},
            "chronox.stream.*": {"queue": "chronox.control", "routing_key": "chronox.control"},
            "chronox.schedule.*": {"queue": "chronox.control", "routing_key": "chronox.control"},
        },
        "imports": ("chronox.tasks.backfill", "chronox.tasks.rest", "chronox.tasks.stream", "chronox.tasks.schedule"),
        "beat_schedule": _beat_schedule(settings),
    }


def _beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    """Beat's jobs by stable name; each expires before its next run, so a beat that was
    down (or a backlog of queued runs) never piles the same job up."""
    if not settings.enable_scheduler:
        return {}
    minute, hour, day_of_month, month, day_of_week = settings.gap_scan_cron.split()
    snapshot_every = settings.snapshot_interval_minutes * 60
    return {
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
