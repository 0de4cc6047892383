"""Worker processes that call a provider on command, for tests of what processes share
(request budgets, holds after a 429 or 418, circuit breakers) through Redis.

Spawned once and reused: a spawned interpreter takes seconds to start on a busy machine,
longer than the Retry-After a test waits out. Each command carries the environment the
provider is built from, so one pool serves tests with different stand-ins.
"""
from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

Outcome = tuple[str, Any]  # ("ok", how many items) | ("throttled" | "breaker" | "budget", seconds) | ("error", text)


def _provider(name: str, env: Mapping[str, str], options: Mapping[str, Any]) -> Any:
    from chronox.settings import load_settings

    settings = load_settings(env)
    if name == "binance":
        from chronox.sources.binance import BinanceRest

        return BinanceRest(settings, **options)
    from chronox.sources.coingecko import CoinGeckoRest

    return CoinGeckoRest(settings, **options)


def _call(provider: Any, method: str, args: Sequence[Any]) -> Outcome:
    from chronox.breaker import BreakerOpen, Throttled
    from chronox.ratelimit import RateLimited
    from chronox.sources.base import ProviderError

    try:
        result = getattr(provider, method)(*args)
        return "ok", len(result) if isinstance(result, list) else 1
    except Throttled as exc:
        return "throttled", exc.retry_after
    except BreakerOpen as exc:
        return "breaker", exc.retry_after
    except RateLimited as exc:
        return "budget", exc.wait
    except ProviderError as exc:
        return "error", str(exc)


def _serve(commands: Any, ready: Any, results: Any) -> None:
    ready.put(True)
    while True:
        command = commands.get()
        if command is None:
            return
        name, env, options, method, args, count = command
        provider = _provider(name, env, options)
        for _ in range(count):
            results.put(_call(provider, method, args))


class ProviderWorkers:
    """`processes` spawned workers; run() has them call at once and returns what each got."""

    def __init__(self, processes: int = 2):
        # spawn, not fork: test processes have threads whose locks a fork would copy held
        context = multiprocessing.get_context("spawn")
        ready = context.Queue()
        self._results = context.Queue()
        self._commands = [context.Queue() for _ in range(processes)]
        self._procs = [context.Process(target=_serve, args=(q, ready, self._results), daemon=True)
                       for q in self._commands]
        for p in self._procs:
            p.start()
        for _ in self._procs:
            ready.get(timeout=120)

    def run(self, provider: str, env: Mapping[str, str], method: str, args: Sequence[Any] = (),
            processes: int = 1, count: int = 1, options: Mapping[str, Any] | None = None,
            before: Callable[[], object] = lambda: None, timeout: float = 60.0) -> list[Outcome]:
        """`processes` workers each make `count` calls of `method`, right after `before()`."""
        before()
        command = (provider, dict(env), dict(options or {}), method, tuple(args), count)
        for queue in self._commands[:processes]:
            queue.put(command)
        deadline = time.monotonic() + timeout
        return [self._results.get(timeout=max(0.1, deadline - time.monotonic())) for _ in range(processes * count)]

    def close(self) -> None:
        for queue in self._commands:
            queue.put(None)
        for p in self._procs:
            p.join(10)
            if p.is_alive():
                p.terminate()
