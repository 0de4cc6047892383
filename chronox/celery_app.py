"""The Celery application; configuration lives in the top-level celeryconfig module."""
from __future__ import annotations

from celery import Celery
from celery.signals import worker_process_init

app = Celery("chronox")
app.config_from_object("celeryconfig")


@worker_process_init.connect
def _fresh_connections(**_kwargs: object) -> None:
    # Prefork children inherit the parent's pooled sockets; never share them.
    from chronox.db import dispose_engines

    dispose_engines()
