"""What every `chronox` command module shares: one-line errors, settings, the database.

Command modules (cli.py and the cli_* modules it registers) import these from here, so
none of them imports another and `python -m chronox.cli` has no import cycle.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import click
from sqlalchemy import Engine

from chronox.settings import ConfigError, Settings, load_settings
from chronox.strategy import InvalidInput

F = TypeVar("F", bound=Callable[..., Any])


def _user_errors(func: F) -> F:
    """Bad input and unreachable services become a one-line message and exit code 1."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError
        from sqlalchemy.exc import OperationalError, ProgrammingError

        from chronox.reachability import Unreachable
        from chronox.sources.flatfiles import FlatFileError

        try:
            return func(*args, **kwargs)
        except (InvalidInput, ConfigError, FlatFileError, Unreachable) as exc:
            raise click.ClickException(str(exc)) from None
        except (OperationalError, ProgrammingError) as exc:
            text = str(exc.orig) if exc.orig is not None else str(exc)
            if "no such table" in text or "does not exist" in text and "relation" in text:
                raise click.ClickException(
                    "database has no ChronoX tables: run `chronox db upgrade` first") from None
            raise click.ClickException(f"database error: {text.strip().splitlines()[0]}") from None
        except (BotoCoreError, ClientError) as exc:  # e.g. the S3 endpoint of CHRONOX_FLATFILES_URL is unreachable
            raise click.ClickException(f"flat files: {exc}") from None

    return wrapper  # type: ignore[return-value]


def _settings() -> Settings:
    from chronox.reachability import announce

    try:
        settings = load_settings()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    announce(settings)  # once per process: which database, broker and Kafka, from which variables
    return settings


def _require(settings: Settings, *services: str) -> None:
    """Fail in seconds with one line if a configured service this command uses is unreachable."""
    from chronox.reachability import require

    require(settings, *services)


def _engine(settings: Settings) -> Engine:
    from chronox.db import prepared_engine
    from chronox.reachability import DATABASE

    _require(settings, DATABASE)
    return prepared_engine(settings.database_url)
