"""Server plumbing the provider stand-ins share: an HTTP server on a daemon thread, the
handler's reply helpers, a queue of injected faults, and a websocket server on its own
thread and event loop.

The stand-ins (binance, coingecko, news_feeds, polygon_rest, polygon_ws) keep what they
serve; only how they listen, start and stop lives here.
"""
from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar, Generic, Self, TypeVar

from websockets.asyncio.server import Server

R = TypeVar("R")  # what a stand-in logs per request
C = TypeVar("C")  # what a websocket stand-in keeps per connection
T = TypeVar("T")


# -- HTTP ------------------------------------------------------------------------------------

class StandInHandler(BaseHTTPRequestHandler):
    # HTTP/1.1 so pooled keep-alive clients (urllib3, httpx) behave as they do against the real APIs.
    protocol_version = "HTTP/1.1"
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the stand-ins keep their own request logs; access lines would only clutter test output

    def do_GET(self) -> None:
        self.server.stand_in._handle(self)

    def send_body(self, status: int, body: bytes, content_type: str = "application/json",
                  headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        """`payload` as JSON; bytes go out untouched, so a fault can send a broken body."""
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_body(status, body, headers=headers)


class _HTTPServer(ThreadingHTTPServer):
    # A client still holding a keep-alive connection must not keep the test process alive.
    daemon_threads = True
    stand_in: HTTPStandIn[Any]


class HTTPStandIn(Generic[R]):
    """An HTTP API on `host`:`port` (0: a free port), served from a daemon thread between
    start() and stop() (or as a context manager). Subclasses answer in `_handle` and may
    append what they saw to `requests` under `_lock`."""

    handler_class: ClassVar[type[StandInHandler]] = StandInHandler

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._lock = threading.Lock()
        self.requests: list[R] = []
        # Bound here rather than in start() so base_url is known before the server runs.
        self._server = _HTTPServer((host, port), self.handler_class)
        self._server.stand_in = self
        bound_host, bound_port = self._server.server_address[:2]
        if isinstance(bound_host, bytes):
            bound_host = bound_host.decode()
        self._origin = f"http://{bound_host}:{bound_port}"
        self._thread: threading.Thread | None = None

    def _handle(self, req: StandInHandler) -> None:
        raise NotImplementedError

    def start(self) -> Self:
        if self._thread is None:
            self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                            name=type(self).__name__, daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def clear_requests(self) -> None:
        with self._lock:
            self.requests.clear()


@dataclass
class Fault:
    kind: str
    remaining: int  # requests it still answers
    retry_after: float | None = None
    prefix: str | None = None  # it answers only paths starting with this; None: any path
    delay: float | None = None
    body: bytes | None = None  # instead of the kind's canned body


class FaultQueue:
    """Faults for the next requests, oldest first; each answers `remaining` requests whose path
    it matches, then leaves the queue. Thread-safe: handler threads take while tests add."""

    def __init__(self, kinds: Sequence[str]) -> None:
        self.kinds = tuple(kinds)
        self._lock = threading.Lock()
        self._faults: list[Fault] = []

    def add(self, fault: Fault) -> None:
        if fault.kind not in self.kinds:
            raise ValueError(f"unknown fault {fault.kind!r}; kinds: {', '.join(self.kinds)}")
        if fault.remaining < 1:
            return  # a fault for no request: queued, it would still answer one
        with self._lock:
            self._faults.append(fault)

    def take(self, path: str) -> Fault | None:
        with self._lock:
            for i, fault in enumerate(self._faults):
                if fault.prefix is None or path.startswith(fault.prefix):
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        del self._faults[i]
                    return fault
        return None

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()


# -- websocket -------------------------------------------------------------------------------

class WebSocketStandIn(Generic[C]):
    """A websocket server on its own thread and event loop, so synchronous tests can drive it
    while clients under test run theirs. Subclasses open the server in `_open`, learn the bound
    port in `_listening` and keep their connections in `_conns` under `_lock`."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._host, self._port = host, port
        self._lock = threading.Lock()
        self._conns: dict[int, C] = {}
        self._ids = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: Server | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._start_error: BaseException | None = None

    async def _open(self) -> Server:
        """The server, from websockets' serve() (which needs the running loop, hence a coroutine)."""
        raise NotImplementedError

    def _listening(self, port: int) -> None:
        """Called on the server's thread once it is bound to `port`, before start() returns."""

    def start(self) -> Self:
        if self._thread is not None:
            return self
        name = type(self).__name__
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError(f"{name} did not start")
        if self._start_error is not None:
            raise RuntimeError(f"{name} failed to start") from self._start_error
        return self

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            self._server = loop.run_until_complete(self._open())
        except BaseException as exc:
            self._start_error = exc
            self._ready.set()
            loop.close()
            return
        self._listening(self._server.sockets[0].getsockname()[1])
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def stop(self) -> None:
        if self._thread is None or self._loop is None or self._server is None:
            return

        async def shutdown() -> None:
            assert self._server is not None
            self._server.close()
            try:
                await asyncio.wait_for(self._server.wait_closed(), 2)
            except TimeoutError:
                # A client that never answers the close handshake (e.g. one whose event loop
                # is already gone) must not hang teardown.
                for conn in list(self._server.connections):
                    conn.transport.abort()
                await asyncio.wait_for(self._server.wait_closed(), 2)

        try:
            asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float | None = 10) -> T:
        """Run `coro` on the server's loop (connections belong to it) and wait for its result."""
        if self._loop is None:
            coro.close()
            raise RuntimeError(f"{type(self).__name__} is not started")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    @property
    def open_connections(self) -> int:
        with self._lock:
            return len(self._conns)

    def wait_for(self, predicate: Callable[[], Any], timeout: float = 5.0, interval: float = 0.01) -> bool:
        """Poll `predicate` until it holds (True) or `timeout` seconds pass (False)."""
        deadline = time.monotonic() + timeout
        while True:
            if predicate():
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(interval)
