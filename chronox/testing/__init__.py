"""Stand-ins and process helpers for tests and benchmarks; never imported by the product at run time.

polygon_rest: a local Polygon REST API (FakePolygonRest); polygon_ws: a local Polygon
stream (FakePolygonStream); workers: real `celery worker` processes (WorkerProcess);
services: librdkafka's mock Kafka cluster (MockKafka) and throwaway PostgreSQL databases
(temporary_database); servers: the HTTP and websocket plumbing the stand-ins share. They
need what the `test` / `bench` extras install (confluent-kafka for the mock cluster).
"""
