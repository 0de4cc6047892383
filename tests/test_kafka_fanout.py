"""ChronoX's Kafka publisher against librdkafka's mock broker: envelopes as bytes, many new
per-symbol topics in one metadata request, held messages kept in order, and the failures
flush() must report."""
import json
import time

import pytest

from chronox import publish
from chronox.publish import KafkaPublisher, PublishError, bar_envelope

pytestmark = pytest.mark.timeout(120)

# Values whose JSON spelling differs between serializers (exponents, long fractions).
AWKWARD = [(0.1 + 0.2, 1e16, 1e-07, 123456789.123456, 0.0), (100.0, 100.25, 99.5, 100.125, 1.5e9)]


def test_envelopes_mean_what_bar_envelope_says(kafka):
    publisher = KafkaPublisher([kafka.bootstrap])
    for i, (o, h, low, c, v) in enumerate(AWKWARD):
        publisher.send_bar("ENVB", "1m", f"2024-01-02T14:3{i}:00Z", o, h, low, c, v, "stream", kind="stream",
                           market="stocks", provider="polygon")
    publisher.send("stream", "ENVB", {"event": "stream_activated", "symbol": "ENVB", "note": "déjà", 7: "int key"})
    publisher.flush()
    publisher.close()
    messages = kafka.messages("chronox.stream.ENVB")
    assert [m.key for m in messages] == [b"ENVB"] * 3
    decoded = [json.loads(m.value) for m in messages]
    expected = [bar_envelope("ENVB", "1m", f"2024-01-02T14:3{i}:00Z", *values, "stream")
                for i, values in enumerate(AWKWARD)]
    # The same keys, in the same order, and the same values as the standard library's JSON of it.
    assert decoded[:2] == [json.loads(json.dumps(e)) for e in expected]
    assert [list(d) for d in decoded[:2]] == [list(e) for e in expected]
    assert decoded[2] == {"event": "stream_activated", "symbol": "ENVB", "note": "déjà", "7": "int key"}


def test_a_batch_to_hundreds_of_new_topics_waits_for_one_metadata_fetch(kafka):
    # kafka-python alone waits retry_backoff_ms (0.2 s) per new topic: 400 topics ~80 s.
    symbols = [f"FAN{i:03d}" for i in range(400)]
    publisher = KafkaPublisher([kafka.bootstrap])
    started = time.monotonic()
    for minute in range(2):
        for s in symbols:
            publisher.send_bar(s, "1m", f"2024-01-02T14:3{minute}:00Z", 1.0 + minute, 2.0, 0.5, 1.5, 10.0, "api")
    publisher.flush()
    elapsed = time.monotonic() - started
    publisher.close()
    assert elapsed < 20, f"first publish to {len(symbols)} new topics took {elapsed:.1f}s"
    for s in (symbols[0], symbols[199], symbols[-1]):
        got = kafka.json_messages(f"chronox.backfill.{s}", timeout_ms=1500)
        assert [(e["symbol"], e["ts"], e["ohlcv"]["open"]) for e in got] == \
            [(s, "2024-01-02T14:30:00Z", 1.0), (s, "2024-01-02T14:31:00Z", 2.0)]


def test_held_messages_go_out_in_order_when_the_hold_is_full(kafka, monkeypatch):
    monkeypatch.setattr(publish, "HOLD_LIMIT", 25)
    publisher = KafkaPublisher([kafka.bootstrap], topic_mode="per-kind")
    for i in range(60):  # the first 25 are held until the topic is known, the rest go straight out
        publisher.send_bar(f"ORD{i % 3}", "1m", f"2024-01-02T15:{i:02d}:00Z", float(i), float(i), float(i),
                           float(i), 1.0, "stream", kind="ordertest")
    publisher.flush()
    publisher.close()
    got = kafka.json_messages("chronox.ordertest", timeout_ms=1500)
    for n in range(3):
        assert [e["ohlcv"]["open"] for e in got if e["symbol"] == f"ORD{n}"] == [float(i) for i in range(n, 60, 3)]


def test_flush_reports_topics_that_never_get_metadata(kafka):
    publisher = KafkaPublisher([kafka.bootstrap], max_block_ms=1500, allow_auto_create_topics=False)
    publisher.send_bar("NOTOPIC", "1m", "2024-01-02T14:30:00Z", 1.0, 1.0, 1.0, 1.0, 1.0, "api")
    with pytest.raises(PublishError, match=r"rejected 1 message\(s\): no metadata for 1 topic\(s\)"):
        publisher.flush()
    publisher.flush()  # reported once: nothing left to fail
    with pytest.raises(ValueError):
        publisher.send_bar("BAD NAME", "1m", "2024-01-02T14:30:00Z", 1.0, 1.0, 1.0, 1.0, 1.0, "api")
    publisher.close()


def test_key_partitioner_places_keys_where_kafka_pythons_default_does():
    from kafka.partitioner.default import DefaultPartitioner

    default = DefaultPartitioner()
    for n in (1, 3, 12, 50):
        partitions = list(range(n))
        for key in (b"AAPL", b"BRK.B", b"BTC-USD", b"X" * 31, b""):
            for _ in range(2):  # the second time from the remembered hash
                assert publish.key_partitioner(key, partitions, partitions) == default(key, partitions, partitions)
    assert publish.key_partitioner(None, [0, 1], [1]) == 1  # keyless: an available partition


def test_a_metadata_answer_over_a_megabyte_keeps_the_connection(caplog):
    from chronox.testing.services import MockKafka

    # A cluster of its own: the mock looks topics up in a list, and 7,000 more would slow
    # every later test's lookups. Its metadata answer for these topics is about 1.2 MB.
    cluster = MockKafka()
    symbols = [f"BIG{i:04d}" for i in range(7000)]
    caplog.set_level("INFO", logger="kafka")
    publisher = KafkaPublisher([cluster.bootstrap])
    for s in symbols:
        publisher.send_bar(s, "1m", "2024-01-02T14:30:00Z", 1.0, 2.0, 0.5, 1.5, 10.0, "api")
    publisher.flush()
    publisher.close()
    dropped = [r.getMessage() for r in caplog.records if "Invalid frame length" in r.getMessage()]
    assert dropped == []
    for s in (symbols[0], symbols[3500], symbols[-1]):
        got = cluster.json_messages(f"chronox.backfill.{s}", timeout_ms=1500)
        assert [(e["symbol"], e["ohlcv"]["close"]) for e in got] == [(s, 1.5)]
