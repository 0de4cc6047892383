"""The Celery application; configuration lives in the top-level celeryconfig module."""
from __future__ import annotations

from celery import Celery
from celery.signals import beat_init, celeryd_after_setup, worker_process_init

from chronox.settings import Settings
from chronox.tasks.config import celery_config
from chronox.tasks.observability import install as install_observability

app = Celery("chronox")
app.config_from_object("celeryconfig")
install_observability(app)  # /metrics, /healthz and /readyz of workers and beat


def make_client(settings: Settings) -> Celery:
    """A new Celery app configured from `settings` (broker, result backend, routes), not the
    current app: for a process that only sends tasks, inspects workers or reads results."""
    client = Celery("chronox", set_as_current=False)
    client.config_from_object(celery_config(settings))
    return client


@worker_process_init.connect
def _fresh_connections(**_kwargs: object) -> None:
    # Prefork children inherit the parent's pooled sockets; never share them.
    from chronox.db import dispose_engines

    dispose_engines()


@celeryd_after_setup.connect  # the worker's, once its logging is set up (worker_init comes before)
@beat_init.connect
def _say_connections(**_kwargs: object) -> None:
    # Once per worker or beat process (prefork children do not send these): which database,
    # broker and Kafka it uses, and from which variables.
    from chronox.reachability import announce
    from chronox.settings import load_settings

    announce(load_settings())
