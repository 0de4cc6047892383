"""What the `requests`-based providers (Binance, CoinGecko) share: one pooled Session per
process, timeouts, Retry-After, strict JSON, and error messages cut short and scrubbed.

Failures to reach the provider at all (timeouts, refused or reset connections) come out as
TransientProviderError; what an answer's status means is for each provider module to say.
"""
from __future__ import annotations

import datetime as dt
import email.utils
import json
import os
import threading
from collections.abc import Mapping
from typing import Any

import requests
from requests.adapters import HTTPAdapter

from chronox import metrics
from chronox.bars import UTC
from chronox.sources.base import ProviderError, TransientProviderError

_sessions: dict[int, requests.Session] = {}
_sessions_lock = threading.Lock()


def session() -> requests.Session:
    """This process's Session: connections are pooled across calls and providers; a forked
    Celery child gets its own, never its parent's sockets."""
    pid = os.getpid()
    with _sessions_lock:
        current = _sessions.get(pid)
        if current is None:
            current = requests.Session()
            # Retries belong to the task layer (backoff, Retry-After, the breaker), not urllib3.
            adapter = HTTPAdapter(pool_connections=8, pool_maxsize=16, max_retries=0)
            current.mount("https://", adapter)
            current.mount("http://", adapter)
            _sessions[pid] = current
        return current


def timeouts(seconds: float) -> tuple[float, float]:
    """(connect, read): connecting never takes more than 10 s to fail."""
    return min(10.0, seconds), seconds


def retry_after(value: str | None) -> float | None:
    """Retry-After as seconds: a number of seconds or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - dt.datetime.now(UTC)).total_seconds())


def scrub(text: str, secret: str | None) -> str:
    return text.replace(secret, "***") if secret else text


def get(provider: str, url: str, params: Mapping[str, Any] | None, headers: Mapping[str, str],
        timeout: float, secret: str | None = None) -> requests.Response:
    """One GET; any status comes back, a request that never got an answer raises TransientProviderError."""
    try:
        response = session().get(url, params=params, headers=headers, timeout=timeouts(timeout),
                                 allow_redirects=False)
    except requests.RequestException as exc:
        metrics.provider_request(provider, None)
        path = requests.utils.urlparse(url).path
        raise TransientProviderError(scrub(f"{provider} {path}: {type(exc).__name__}: {exc}", secret)) from None
    metrics.provider_request(provider, response.status_code)
    return response


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def strict_json(data: bytes | str) -> Any:
    """JSON without NaN and Infinity (Python's parser takes them; JSON has no such numbers):
    ValueError for either, or for text that is not JSON."""
    return json.loads(data, parse_constant=_reject_constant)


def json_body(response: requests.Response, malformed: type[ProviderError], what: str) -> Any:
    """The body as JSON; NaN and Infinity (not JSON, though Python's parser takes them) refused."""
    try:
        return strict_json(response.content)
    except ValueError as exc:
        raise malformed(f"malformed response to {what}: not JSON ({str(exc)[:120]})") from None
    except RecursionError:
        raise malformed(f"malformed response to {what}: not JSON (nested too deeply)") from None


def body_text(response: requests.Response, size: int = 120) -> str:
    return response.content[:size].decode("utf-8", "replace").strip() or "empty body"
