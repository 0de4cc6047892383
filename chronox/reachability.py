"""Which database, broker and Kafka this process uses, from which variables, and whether it
can reach them.

`announce` logs that once per process (the command line, Celery workers and beat, the
stream process all call it at start-up), so a deployment whose old variable names were
ignored, or picked up, says so where the operator looks. `require` checks the services a
command is about to use with short timeouts and turns any failure into `Unreachable`: one
line naming the service, its URL with the password hidden, the variable it came from and
the reason, instead of a client library's retries and traceback.
"""
from __future__ import annotations

import logging
import math
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from chronox.settings import ConfigError, PublishMode, Settings, hide_password

DATABASE, BROKER, KAFKA = "database", "broker", "kafka"
SERVICES = (DATABASE, BROKER, KAFKA)
_SETTING = {DATABASE: "database_url", BROKER: "broker_url", KAFKA: "kafka_brokers"}
CONNECT_TIMEOUT = 3.0  # seconds per service: long enough for a healthy remote, short for a person waiting

log = logging.getLogger("chronox.startup")
# The start-up line is shown at a process' usual level (WARNING for the command line, as
# Celery shows its banner), so this logger passes INFO on whatever its parents are set to.
log.setLevel(logging.INFO)

_lock = threading.Lock()
_announced: set[str] = set()
_reached: set[tuple[str, str]] = set()


class Unreachable(Exception):
    """A configured service did not answer; the message is one line, password hidden."""


def shown(settings: Settings, service: str) -> str:
    """The service's address as it may be logged: URL password hidden, brokers comma-joined."""
    value = getattr(settings, _SETTING[service])
    if service == KAFKA:
        return ",".join(value)
    return hide_password(value) if value else ""


def origin(settings: Settings, service: str) -> str:
    """The variables the service's address came from, or `embedded default`."""
    return ", ".join(settings.origin(_SETTING[service])) or "embedded default"


def describe(settings: Settings) -> str:
    """`database URL (from VAR, ...); broker ...; kafka ...`, passwords hidden."""
    parts = []
    for service in SERVICES:
        address = shown(settings, service) or \
            {BROKER: "none, tasks run in-process", KAFKA: "off, nothing is published"}.get(service, "")
        names = settings.origin(_SETTING[service])
        parts.append(f"{service} {address} ({'from ' + ', '.join(names) if names else 'embedded default'})")
    return "; ".join(parts)


def announce(settings: Settings) -> None:
    """Log `describe(settings)` at INFO on the chronox.startup logger, once per process
    (again only if the configuration it describes changes)."""
    line = describe(settings)
    with _lock:
        if line in _announced:
            return
        _announced.add(line)
    log.info("%s", line)


def require(settings: Settings, *services: str, timeout: float = CONNECT_TIMEOUT) -> None:
    """Check that each configured service in `services` answers within `timeout` seconds;
    the first that does not raises Unreachable. Unconfigured ones (the embedded SQLite file,
    no broker, Kafka off) need nothing. A service reached once is not checked again."""
    for service in services:
        address = getattr(settings, _SETTING[service])
        if not address:
            continue
        key = (service, repr(address))
        if key in _reached:
            continue
        reason = {DATABASE: _database, BROKER: _broker, KAFKA: _kafka}[service](settings, timeout)
        if reason is not None:
            reason = _one_line(reason, settings)
            raise Unreachable(f"{service} {shown(settings, service)} ({origin(settings, service)}) "
                              f"is unreachable: {reason}")
        with _lock:
            _reached.add(key)


def _one_line(text: str, settings: Settings) -> str:
    """The first line of a client's message, with any password of ours masked anyway."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    line = next((part.strip() for part in str(text).splitlines() if part.strip()), "no answer")
    for url in (settings.database_url, settings.broker_url):
        try:
            secret = make_url(url).password if url else None
        except (ArgumentError, ValueError):  # an unparsable URL has no password we could know of
            secret = None
        if secret:
            line = line.replace(str(secret), "***")
    return line[:300]


def _database(settings: Settings, timeout: float) -> str | None:
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError
    from sqlalchemy.pool import NullPool

    try:
        url = make_url(settings.database_url)
        if url.get_backend_name() == "sqlite":
            return None  # the embedded file: created on first use, nothing to reach
        # libpq counts whole seconds (and treats 1 as 2).
        connect_args = {"connect_timeout": max(2, math.ceil(timeout))} \
            if url.get_backend_name() == "postgresql" else {}
        engine = create_engine(url, poolclass=NullPool, connect_args=connect_args)
    except (ArgumentError, NoSuchModuleError, ImportError) as exc:
        raise ConfigError(f"database URL {shown(settings, DATABASE)} ({origin(settings, DATABASE)}) "
                          f"is not usable: {_one_line(str(exc), settings)}") from None
    try:
        with engine.connect():
            return None
    except SQLAlchemyError as exc:
        orig = getattr(exc, "orig", None)
        return str(orig if orig is not None else exc)
    finally:
        engine.dispose()


def _broker(settings: Settings, timeout: float) -> str | None:
    from kombu import Connection
    from kombu.exceptions import OperationalError

    # connect_timeout serves AMQP; the Redis transport reads its socket timeouts from the
    # transport options.
    connection = Connection(settings.broker_url, connect_timeout=timeout,
                            transport_options={"socket_connect_timeout": timeout, "socket_timeout": timeout})
    try:
        connection.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=timeout)
        return None
    except (OperationalError, OSError) as exc:
        return str(exc) or type(exc).__name__
    except (KeyError, ImportError) as exc:  # kombu names no transport for the URL's scheme
        raise ConfigError(f"broker URL {shown(settings, BROKER)} ({origin(settings, BROKER)}) "
                          f"is not usable: {exc}") from None
    finally:
        connection.release()


def _host_port(server: str) -> tuple[str, int]:
    host, sep, port = server.rpartition(":")
    if not sep or not port.isdigit():
        return server.strip("[]"), 9092
    return host.strip("[]"), int(port)


@contextmanager
def _quiet(name: str) -> Iterator[None]:
    """Silence a client library's own logger while probing: the failure is said once, by us."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(level)


def _kafka(settings: Settings, timeout: float) -> str | None:
    """A TCP connect to each bootstrap server (it names the reason: refused, unknown host),
    then a Kafka handshake with one that accepted (something else may listen there)."""
    errors = []
    for server in settings.kafka_brokers:
        try:
            socket.create_connection(_host_port(server), timeout=timeout).close()
            break
        except OSError as exc:
            errors.append(f"{server}: {exc.strerror or exc}")
    else:
        return "; ".join(errors)
    from chronox.publish import PublishError, kafka_brokers_reachable

    with _quiet("kafka"):
        try:
            kafka_brokers_reachable(settings, timeout)
        except PublishError as exc:
            return str(exc)
    return None


def publishing(settings: Settings, publish_mode: str | None = None) -> tuple[str, ...]:
    """Kafka, when a bar counts only once Kafka has it (kafka-first); db-first commits bars
    and keeps them in the outbox while Kafka is away, so it can start without Kafka."""
    return (KAFKA,) if (publish_mode or settings.publish_mode) == PublishMode.KAFKA_FIRST else ()


def needs_for_tasks(settings: Settings, publish_mode: str | None = None) -> tuple[str, ...]:
    """What a command that runs ChronoX's tasks uses itself: in-process, the database and
    the Kafka the tasks publish to; with a broker, the database (plans, follow-up, summary)
    and the broker; the workers reach Kafka on their own."""
    return (DATABASE, *publishing(settings, publish_mode)) if settings.in_process else (DATABASE, BROKER)
