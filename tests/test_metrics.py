"""Prometheus metrics of the real processes: a prefork `celery worker` (2 children) after a
registry run against the Polygon REST stand-in, and `chronox stream` after events from the
websocket stand-in, scraped over HTTP; counters must equal what the run did (rows in the
database, requests the stand-in answered, messages on Kafka). One end-to-end test lets a
real Prometheus (Debian's package) scrape a worker, beat and the stream, and reads the
series back from its HTTP API, including the dashboard's top row next to `chronox status`."""
from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from chronox import registry
from chronox.db import get_engine
from chronox.sample import day_rows, write_day_file
from tests.conftest import DAYS, REPO
from tests.faults.servers import free_port
from tests.helpers import count, serve_days, wait_for_statuses, wait_until

pytestmark = pytest.mark.timeout(240)

M0 = 1_704_205_800_000  # 2024-01-02 14:30 UTC, epoch ms
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def unique(prefix: str) -> str:
    """Kafka topics are per symbol and the mock cluster lives for the whole session."""
    return f"{prefix}{uuid.uuid4().hex[:4].upper()}"


def get(port: int, path: str, timeout: float = 10) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def scrape(port: int) -> Samples:
    status, body = get(port, "/metrics")
    assert status == 200
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(body.decode()) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of `name` over the series carrying `labels` (0 when there is none)."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def am(symbol: str, start_ms: int, price: float = 100.0, **extra: Any) -> dict[str, Any]:
    """An AM event as Polygon's docs show it (minute aggregate, epoch ms window)."""
    return {"ev": "AM", "sym": symbol, "v": 1200, "av": 5000, "op": price, "vw": price + 0.1, "o": price,
            "c": price + 0.25, "h": price + 0.5, "l": price - 0.5, "a": price, "z": 12,
            "s": start_ms, "e": start_ms + 60_000, **extra}


def write_day_with_bad_rows(root: Path, day: dt.date, symbol: str) -> int:
    """The sample file of `symbol` with two rows no bar can come from; returns the good rows."""
    rows = day_rows(day, [symbol])
    first_ns = rows[0][6]
    bad = [(symbol, 100, 10.0, 10.5, 9.0, 9.5, first_ns + 30_000_000_000_000, 3),  # high below open
           (symbol, 100, "abc", 10.5, 11.0, 9.5, first_ns + 31_000_000_000_000, 3)]  # price not a number
    write_day_file(root, day, sorted(rows + bad, key=lambda r: r[6]))
    return len(rows)


def prepare_run(url: str, flatfiles: Path, polygon: Any) -> tuple[str, str]:
    """A flatpack symbol with 2 bad rows per day file and an api symbol with one impossible
    REST bar; the first two aggregate requests are answered 429."""
    flat, rest = unique("MF"), unique("MR")
    for day in DAYS:
        write_day_with_bad_rows(flatfiles, day, flat)
    serve_days(polygon, rest, DAYS)
    night = int(dt.datetime(2024, 1, 3, 8, 0, tzinfo=dt.UTC).timestamp() * 1000)  # 03:00 New York
    polygon.add_minute_bars(rest, [{"t": night, "o": 10.0, "h": 9.0, "l": 8.0, "c": 9.5, "v": 100, "n": 1}])
    polygon.set_ticker_details(flat, {})
    polygon.inject("/v2/aggs", "429", count=2, retry_after=1)
    engine = get_engine(url)
    registry.add_symbol(engine, flat, "flatpack")
    registry.add_symbol(engine, rest, "api")
    return flat, rest


def test_a_prefork_worker_serves_what_its_children_counted(pg_url, kafka, flatfiles, polygon, start_worker,
                                                           celery_client, monkeypatch):
    port = free_port()
    monkeypatch.setenv("CHRONOX_METRICS_PORT", str(port))
    flat, rest = prepare_run(pg_url, flatfiles, polygon)
    worker = start_worker(concurrency=2)
    celery_client.send_task("chronox.registry.execute", kwargs={
        "symbols": [flat, rest], "start": DAYS[0].isoformat(), "end": DAYS[-1].isoformat()})
    assert wait_for_statuses(pg_url, [flat, rest]) == {flat: "completed", rest: "completed"}, worker.log()

    def settled() -> Samples | None:
        # A run's last task (finalize) reports after the registry row is written.
        samples = scrape(port)
        sent = value(samples, "market_data_kafka_messages_total", kind="backfill", result="sent")
        return samples if sent == on_kafka else None

    on_kafka = sum(len(kafka.messages(f"chronox.backfill.{s}")) for s in (flat, rest))
    samples = wait_until(settled, timeout=15, what="every Kafka message counted")

    bars = "market_data_bars_ingested_total"
    assert value(samples, bars, source="flatpack", provider="polygon", market="stocks") == \
        count(pg_url, "SELECT count(*) FROM ohlcv_1m WHERE source = 'flatpack'") > 0
    assert value(samples, bars, source="api") == count(pg_url, "SELECT count(*) FROM ohlcv_1m WHERE source = 'api'") > 0
    quarantined = "market_data_quarantined_rows_total"
    assert value(samples, quarantined, source="flatpack") == 2 * len(DAYS) == \
        count(pg_url, "SELECT count(*) FROM quarantine WHERE symbol = :s", s=flat)
    assert value(samples, quarantined, source="api") == 1 == \
        count(pg_url, "SELECT count(*) FROM quarantine WHERE symbol = :s", s=rest)

    answered = Counter("429" if r.status == 429 else "200" if r.status == 200 else f"{r.status // 100}xx"
                       for r in polygon.requests)
    assert answered["429"] == 2
    for status, n in answered.items():
        assert value(samples, "market_data_provider_requests_total", provider="polygon", status=status) == n, status
    assert value(samples, "market_data_provider_requests_total") == len(polygon.requests)
    # Each 429 was one failed attempt, retried: transient; nothing failed otherwise.
    assert value(samples, "market_data_ingestion_errors_total", kind="transient") == 2
    assert value(samples, "market_data_ingestion_errors_total") == 2
    assert value(samples, "market_data_kafka_messages_total", result="failed") == 0
    # Every task of the run that finished, timed by phase (retried attempts and a task that
    # replaced itself do not finish): 3 day loads and 3 REST steps of the flatpack symbol,
    # one gap window, a finalize per symbol, and execute, begin and fan-out.
    durations = {phase: value(samples, "market_data_phase_duration_seconds_count", phase=phase)
                 for phase in ("flatpack", "api", "finalize", "control")}
    assert durations == {"flatpack": 6, "api": 1, "finalize": 2, "control": 3}
    assert value(samples, "service_info", service="chronox", component="worker") == 1

    status, body = get(port, "/healthz")
    assert (status, json.loads(body)["status"]) == (200, "live")
    status, body = get(port, "/readyz")
    checks = {c["name"]: c for c in json.loads(body)["checks"]}
    assert status == 200 and set(checks) == {"database", "broker", "kafka"}
    assert all(c["ok"] and c["latency_ms"] >= 0 for c in checks.values()), checks
    assert checks["database"]["detail"].startswith("migrations at head")
    # The children counted into the worker's own directory, removed when it stops.
    directory = Path(f"/tmp/chronox-metrics-{worker.proc.pid}")
    assert len({p.stem.rsplit("_", 1)[-1] for p in directory.glob("counter_*.db")}) >= 1
    worker.stop()
    assert not directory.exists()


def test_the_stream_serves_its_bars_quarantine_subscriptions_and_lag(pg_url, ws, start_stream):
    port = free_port()
    a, b = unique("SA"), unique("SB")
    engine = get_engine(pg_url)
    registry.add_symbol(engine, a, "stream")
    registry.add_symbol(engine, b, "stream")
    stream = start_stream(CHRONOX_METRICS_PORT=str(port))
    assert ws.wait_for(lambda: ws.subscriptions == {f"AM.{a}", f"AM.{b}"}, 15), stream.log()
    ws.send_am([am(a, M0), am(a, M0 + 60_000), am(b, M0), am(b, M0 + 60_000, h=40.0)])  # high below open
    ws.send_raw("not json")
    wait_until(lambda: count(pg_url, "SELECT count(*) FROM quarantine") == 2
               and count(pg_url, "SELECT count(*) FROM ohlcv_1m") == 3, what="bars and quarantine rows")
    newest_end = dt.datetime(2024, 1, 2, 14, 32, tzinfo=dt.UTC)  # the last bar's minute, ended

    def sampled() -> Samples | None:
        samples = scrape(port)
        return samples if value(samples, "market_data_stream_lag_seconds") > 0 else None

    samples = wait_until(sampled, what="the lag sampled")
    now = dt.datetime.now(dt.UTC)
    assert value(samples, "market_data_bars_ingested_total", source="stream", provider="polygon") == 3
    assert value(samples, "market_data_quarantined_rows_total", source="stream") == 2
    assert value(samples, "market_data_active_streams", provider="polygon") == 2
    assert value(samples, "market_data_stream_backlog", provider="polygon") == 0
    lag = value(samples, "market_data_stream_lag_seconds", provider="polygon")
    assert (now - newest_end).total_seconds() - 5 <= lag <= (now - newest_end).total_seconds()
    assert value(samples, "market_data_stream_stale_seconds", provider="polygon") == 5 * 60
    assert value(samples, "service_info", component="stream") == 1
    status, body = get(port, "/healthz")
    assert status == 200 and json.loads(body)["component"] == "stream"
    status, body = get(port, "/readyz")
    assert status == 200 and [c["name"] for c in json.loads(body)["checks"]] == ["database"]
    assert stream.stop()[0] == 0


# -- a real Prometheus ----------------------------------------------------------------------

class Prometheus:
    """Debian's `prometheus` server scraping `targets` (job -> port) every second."""

    def __init__(self, targets: dict[str, int], workdir: Path):
        binary = shutil.which("prometheus")
        assert binary, "prometheus is not installed (scripts/test.sh installs Debian's package)"
        self.port = free_port()
        config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                  "scrape_configs": [{"job_name": job, "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}
                                     for job, port in targets.items()]}
        (workdir / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
        self._log = open(workdir / "prometheus.log", "wb")
        self.proc = subprocess.Popen([binary, f"--config.file={workdir / 'prometheus.yml'}",
                                      f"--storage.tsdb.path={workdir / 'data'}",
                                      f"--web.listen-address=127.0.0.1:{self.port}"],
                                     stdout=self._log, stderr=subprocess.STDOUT)

    def query(self, expr: str) -> list[dict[str, Any]]:
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.loads(response.read())
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        self._log.close()


def by_label(result: list[dict[str, Any]], label: str) -> dict[str, float]:
    return {series["metric"].get(label, ""): float(series["value"][1]) for series in result}


def test_prometheus_scrapes_worker_beat_and_stream(pg_url, kafka, flatfiles, polygon, ws, start_worker,
                                                   start_stream, celery_client, monkeypatch, tmp_path):
    from tests.test_monitoring_files import dashboard_top_row

    ports = {"chronox-worker": free_port(), "chronox-beat": free_port(), "chronox-stream": free_port()}
    flat, rest = prepare_run(pg_url, flatfiles, polygon)
    streamed = unique("SP")
    registry.add_symbol(get_engine(pg_url), streamed, "stream")
    monkeypatch.setenv("CHRONOX_METRICS_PORT", str(ports["chronox-worker"]))
    start_worker(concurrency=2)
    celery_client.send_task("chronox.registry.execute", kwargs={
        "symbols": [flat, rest], "start": DAYS[0].isoformat(), "end": DAYS[-1].isoformat()})
    stream = start_stream(CHRONOX_METRICS_PORT=str(ports["chronox-stream"]))
    beat_log = open(tmp_path / "beat.log", "wb")
    beat = subprocess.Popen([sys.executable, "-m", "celery", "-A", "chronox", "beat", "--loglevel", "INFO",
                             "--schedule", str(tmp_path / "beat-schedule")], cwd=REPO, stdout=beat_log,
                            stderr=subprocess.STDOUT,
                            env={**os.environ, "CHRONOX_METRICS_PORT": str(ports["chronox-beat"]),
                                 "CHRONOX_ENABLE_SCHEDULER": "false", "CHRONOX_METRICS_SAMPLE_SECONDS": "0.5"})
    prometheus = Prometheus(ports, tmp_path)
    try:
        assert wait_for_statuses(pg_url, [flat, rest]) == {flat: "completed", rest: "completed"}
        assert ws.wait_for(lambda: ws.subscriptions == {f"AM.{streamed}"}, 15), stream.log()
        ws.send_am([am(streamed, M0 + i * 60_000) for i in range(4)])
        wait_until(lambda: count(pg_url, "SELECT count(*) FROM ohlcv_1m WHERE source = 'stream'") == 4,
                   what="the streamed bars")
        expected = {s: float(count(pg_url, "SELECT count(*) FROM ohlcv_1m WHERE source = :s", s=s))
                    for s in ("flatpack", "api", "stream")}

        def ingested() -> dict[str, float] | None:
            found = by_label(prometheus.query("sum by (source) (market_data_bars_ingested_total)"), "source")
            return found if found == expected else None

        wait_until(ingested, timeout=60, interval=0.5, what=f"Prometheus to hold {expected}")
        up = by_label(prometheus.query("up"), "job")
        assert up == {job: 1.0 for job in ports}, up
        info = by_label(prometheus.query("service_info"), "component")
        assert info == {"worker": 1.0, "beat": 1.0, "stream": 1.0}
        assert by_label(prometheus.query("market_data_provider_requests_total"), "status")["429"] == 2
        assert by_label(prometheus.query("market_data_active_streams"), "provider") == {"polygon": 1.0}
        ready = prometheus.query("market_data_ready")  # set when /readyz answers
        assert ready == [] or all(float(s["value"][1]) == 1 for s in ready)

        # The dashboard's top row through Prometheus shows what `chronox status` prints.
        from click.testing import CliRunner

        from chronox.cli import cli

        result = CliRunner().invoke(cli, ["status", "--json"])
        assert result.exit_code == 0, result.output
        figures = json.loads(result.output)["dashboard"]
        assert figures["symbols"]["completed"] == 2 and figures["queue_depth"] is not None

        def top_row() -> dict[str, Any] | None:
            shown = {title: by_label(prometheus.query(expr), label) for title, expr, label in dashboard_top_row()}
            return shown if shown == expected_row else None

        expected_row = {"Symbols by status": {s: float(n) for s, n in figures["symbols"].items()},
                        "Outbox pending": {"": float(figures["outbox_pending"])},
                        "Queue depth": {q: float(n) for q, n in figures["queue_depth"].items()}}
        wait_until(top_row, timeout=30, interval=0.5, what=f"the top row to show {expected_row}")
    finally:
        prometheus.stop()
        beat.send_signal(signal.SIGTERM)
        beat.wait(30)
        beat_log.close()
        stream.stop()
