"""Readers of Polygon's flat files, REST API and websocket stream."""
from __future__ import annotations

from typing import Any

SHOWN_CHARS = 80


def shown(value: Any) -> str:
    """repr of a value from the wire, cut short: a hostile value can be megabytes long and
    an error message only needs to identify it."""
    text = repr(value)
    return text if len(text) <= SHOWN_CHARS else f"{text[:SHOWN_CHARS]}...(+{len(text) - SHOWN_CHARS} chars)"
