"""Rows in PostgreSQL's binary COPY format, built from numpy columns.

PostgreSQL reads binary COPY without parsing text: no timestamp or decimal parsing per
field, which is most of a text COPY's cost for rows of numbers. Each row is a 16-bit field
count, then per field a 32-bit length (-1: NULL, no value) and the value in network byte
order (float8: IEEE double; int4; timestamptz: microseconds since 2000-01-01 UTC; text: its
bytes). Rows that agree on the leading symbol's length and on which fields are NULL share
one layout, so each such group is one numpy structured array written with one tobytes().
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

HEADER = b"PGCOPY\n\xff\r\n\x00" + (0).to_bytes(4, "big") + (0).to_bytes(4, "big")  # no flags, no extension
TRAILER = (-1).to_bytes(2, "big", signed=True)
POSTGRES_EPOCH = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)

# numpy types of the fixed-width fields PostgreSQL expects, big-endian.
TIMESTAMPTZ, FLOAT8, INT4 = np.dtype(">i8"), np.dtype(">f8"), np.dtype(">i4")
NULL = -1


@dataclass(frozen=True)
class Field:
    """One column after the symbol: per-row `values` of PostgreSQL type `kind`, one constant
    text (bytes) for every row, or None (NULL in every row); `nulls` marks rows whose value
    is NULL."""

    kind: np.dtype | None
    values: np.ndarray | bytes | None
    nulls: np.ndarray | None = None

    @classmethod
    def text(cls, value: bytes) -> Field:
        return cls(np.dtype(f"S{len(value)}"), value)

    @classmethod
    def null(cls) -> Field:
        return cls(None, None)


def microseconds(moment: dt.datetime) -> int:
    """A timestamptz value: microseconds since PostgreSQL's epoch."""
    return (moment - POSTGRES_EPOCH) // dt.timedelta(microseconds=1)


class Names:
    """The symbols rows refer to by index, as the arrays symbol_rows needs: made once per
    load, not once per block of rows."""

    def __init__(self, names: Sequence[bytes]):
        self.lengths = np.array([len(n) for n in names], dtype=np.int64)
        # Names are ASCII without NUL bytes, so numpy's fixed-width bytes keep them whole.
        self.array = np.array(names, dtype=f"S{max((len(n) for n in names), default=1)}")


def symbol_rows(names: Names, symbols: np.ndarray, fields: Sequence[Field]) -> bytes:
    """Binary COPY rows (no header, no trailer): a text field, the name of `symbols[i]`, then
    each field's value of row i. Rows of one layout come out together, in their order; COPY
    does not care about the order of rows."""
    if not len(symbols):
        return b""
    layout = names.lengths[symbols]
    nullable = [i for i, f in enumerate(fields) if f.nulls is not None]
    for bit, i in enumerate(nullable, start=1):
        layout = layout | (np.asarray(fields[i].nulls, dtype=np.int64) << (32 + bit))
    out = []
    for key in np.unique(layout):
        rows = np.flatnonzero(layout == key)
        length = int(key) & 0xFFFFFFFF
        null_here = {i for bit, i in enumerate(nullable, start=1) if int(key) >> (32 + bit) & 1}
        columns: list[tuple[str, np.dtype | str]] = [("count", ">i2"), ("symbol_length", ">i4"),
                                                     ("symbol", f"S{length}")]
        for i, f in enumerate(fields):
            columns.append((f"length{i}", ">i4"))
            if f.values is not None and i not in null_here:
                columns.append((f"value{i}", f.kind))  # type: ignore[arg-type]
        block = np.empty(len(rows), dtype=np.dtype(columns))
        block["count"] = 1 + len(fields)
        block["symbol_length"] = length
        block["symbol"] = names.array[symbols[rows]]
        for i, f in enumerate(fields):
            if f.values is None or i in null_here:
                block[f"length{i}"] = NULL
                continue
            assert f.kind is not None
            block[f"length{i}"] = f.kind.itemsize
            block[f"value{i}"] = f.values if isinstance(f.values, bytes) else f.values[rows]
        out.append(block.tobytes())
    return b"".join(out)
