"""Decoded events as a polars frame: the columnar form the replay aggregates.

One row per accepted message, the columns of `Event` (aliases resolved, as
the codec returns them) plus `row`, the message's position in its archive
(0-based, for the dead-letter `source`).  Both archive readers produce this
frame: JSONL through the stream's codec, Parquet column by column.

Label columns (few distinct values: variant, region, route, INDEX_HASH, ...)
are Categorical: grouping and filtering on their integer codes is several
times faster than on text, and Parquet's dictionary pages decode straight
into them.  Request ids and sticky keys, unique per request or user, stay text.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import polars as pl

from pipeline.decode import rules
from pipeline.model import Event

# Column -> dtype, in Event's field order (raw aside), then `row`; each dtype from the field's rule.
SCHEMA: dict[str, pl.DataType] = {
    **{name: rules.FRAME_DTYPES[name] for name in Event.__struct_fields__ if name != "raw"},
    "row": pl.Int64(),
}
EVENT_COLUMNS = tuple(SCHEMA)[:-1]  # Event's fields without raw


def empty() -> pl.DataFrame:
    """A frame with no events."""
    return pl.DataFrame(schema=SCHEMA)


def from_events(events: Sequence[Event], rows: Sequence[int]) -> pl.DataFrame:
    """The frame of decoded events; `rows[i]` is where events[i] sits in its archive."""
    if not events:
        return empty()
    columns = {name: [getattr(e, name) for e in events] for name in EVENT_COLUMNS}
    columns["row"] = list(rows)
    return pl.DataFrame(columns, schema=SCHEMA)


def to_events(frame: pl.DataFrame, raws: Sequence[bytes] | None = None) -> list[Event]:
    """Events of a frame, in row order; `raws[i]` is row i's original message (else b"")."""
    picked = frame.select(EVENT_COLUMNS)
    if raws is None:
        return [Event(*values) for values in picked.iter_rows()]
    make: Any = Event  # positional with raw last: mypy cannot count a row tuple's length
    return [make(*values, raw) for values, raw in zip(picked.iter_rows(), raws, strict=True)]


__all__ = ["EVENT_COLUMNS", "SCHEMA", "empty", "from_events", "to_events"]
