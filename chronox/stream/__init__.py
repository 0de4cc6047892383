"""Streaming: the `chronox stream` process (process), its write side (writer), and the
Celery-facing stream phase and health check (activation)."""
