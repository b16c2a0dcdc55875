"""Parquet telemetry archives: the writer, and the column-wise reader behind `archive.open_archives`.

Parquet layout
--------------
One row per message, in message order; `row` is the Parquet row index.  The
columns mirror the telemetry JSON schema with the canonical field names, each
object ("block") of the message flattened into top-level "<block>.<field>"
columns, beside a Boolean presence column named like the block::

    ts             Datetime(us, UTC)   written so; read: any Datetime unit (naive = UTC),
                                       or String holding RFC 3339 text (checked as the codec does)
    route variant sticky region        String (required, non-empty)
    edge_pop x_exp request_id          String
    cold_start                         Boolean (required)
    x_warm                             Boolean (null = false)
    latency_ms.tffb .tusable .tfinal   Float64 (required; each >= 0, finite)
    status                             Int64 (required, 100..599)
    failure_phase                      String ("headers", "body" or null)
    retrieval                          Boolean: the message has a retrieval block
    retrieval.k                        Int64
    retrieval.metric .analyzer .INDEX_HASH .λ_state           String
    retrieval.ΔS_q_r .coverage                                Float64
    probe          Boolean;  probe.question_id .topic: String, probe.paraphrase .seed: Int64
    cache          Boolean;  cache.prefix: String, cache.hit: Boolean
    egress         Boolean;  egress.webhook: String, egress.tries: Int64, egress.dedupe_key: String
    raw            String: when non-null, a message the archiver could not type, verbatim
    raw_bytes      Binary: the same for a message that is not UTF-8 (`raw` is then null)

(`LAYOUT` holds the exact names, types and order.)  The flat form is what lake
flatteners produce (struct fields unnested into "<parent>.<field>" columns),
and polars 2.1 reads it much faster than struct columns: on the reference
machine, one thread, the same 5M events read in 0.93 s flat against 3.44 s
nested (`pl.read_parquet`, every column: 3.7x), and are read and validated
(`open_archives`) in 0.9-1.0 s against 2.4-3.0 s, see below.

A presence column is true when the message had the block, even an empty `{}`
(whose fields are then all null), so a typed row keeps every message exactly.
latency_ms is required and has none (a Boolean `latency_ms` column is read as
one if present).  A raw row has every typed column null, presence included.

The label strings (all but sticky, request_id, dedupe_key and raw) are written
dictionary-typed (polars Categorical; in Parquet still UTF-8 string columns,
dictionary-encoded), as the frame holds them.  `λ_state` holds a symbol
(→ ← <> ×) or one of the words convergent, divergent, recursive, chaotic.

Readers accept this flat layout and the earlier NESTED one (`NESTED_LAYOUT`:
each block one Struct column, null when the message lacks the block; a null
field inside a present struct is an absent field), decided per file from the
schema: a block column of Struct type makes the file nested; a Boolean block
column, or an absent (or Null-typed) one with "<block>.<field>" columns, makes
it flat.  A file mixing both (a struct block beside a presence column or a
dotted column) is an `ArchiveError` naming the column; a file with no block
column at all is read as flat.  In the flat layout a block is present when its
presence column is true (false or null: absent, and its fields are ignored);
a file without the presence column infers it: the block is present when any
of its fields is non-null, so an empty `{}` block then reads as absent (and a
latency_ms with every field null as a missing latency_ms).  Readers accept
String or Categorical/Enum for text, any integer type up to Int64/UInt32 for
Int64, Float32 or integers for Float64, the Null type anywhere, and ignore
extra columns and fields; a missing optional column is null.  A missing
required column or field (latency_ms.*; probe.* and cache.* when the file has
any column of the block), or a column of another type, is an `ArchiveError`
naming it, dotted in either layout ("column `latency_ms.tffb` is missing").

`write_parquet` decodes every line with `codec.decode`: accepted lines become
typed rows (aliases resolved to the canonical names, λ as its symbol, status
and integral floats as Int64); rejected lines, and the few accepted ones a
typed row cannot hold exactly (`retrieval.k` or `egress.tries` beyond Int64, an event time outside
the years 1698..2242 where float seconds -> microseconds is exact), are kept
in `raw`.  Lines are typed in chunks of 65,536 and streamed to one file through
a polars sink (an IO-plugin source), so memory stays flat: 5M events in 75-90 s
and 0.32 GB peak, 163 MB with lz4 (the default; zstd: 104 MB).

Reading Parquet is column-wise: one lazy polars query per batch reads only
the needed columns, checks every typed row against the decoding rules the
codec applies (`pipeline/decode/rules.py`, as polars expressions by
`pipeline/decode/columns.py`: required fields, non-empty labels, latency >= 0
and finite, status 100..599, failure phase, ΔS and coverage in [0, 1], λ,
complete probe and cache blocks; RFC 3339 text by `decode/timestamps.py`)
and maps it to `frame.SCHEMA` as `codec._to_event` does (ts = epoch
microseconds / 1e6, equal to `datetime.timestamp()`; has_retrieval = retrieval
present; λ index or -1; probe paraphrase and seed 0 without a probe).  Only
the rows that fail a check, and `raw` rows, take the slow path: a typed row is
serialized to canonical JSON (`Batch.raws`: the message's nested form whatever
the file's layout) and decoded by `codec.decode`, so its dead letter (reason,
detail with the first failing `$.path`, variant, ts) is the one the stream
would give that JSON; a NaN or infinite number, which JSON cannot hold, is
written as null and its detail says `got NaN` / `got inf`.  A raw row is
decoded exactly as the stream decodes it.  Speed on one core
(POLARS_MAX_THREADS=1, pinned), 5M events, lz4, batches of 1M rows: flat
0.9-1.0 s, 5.0-5.6M events/s (1.3 s, 3.9M/s for the first pass of a fresh
process); nested 2.4-3.0 s, 1.6-2.0M events/s, two thirds of it polars
decoding the struct columns.  zstd: flat 1.35-1.5 s, 3.3-3.6M events/s.
About four fifths of the flat time is Parquet decoding, the rest the checks
and mapping.  `Batch.raws` writes typed rows' JSON column-wise too (about
120k rows/s).

Limits: `max_bytes` (limits.max_event_bytes) applies to JSONL lines and raw
rows; a typed row has no message size and is not checked against it.  Probe
paraphrase and seed are signed 64-bit by the rules (`rules.INT64_MIN`..
`INT64_MAX`), so every accepted event fits frame.SCHEMA's Int64 columns.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, Literal

import msgspec
import numpy as np
import orjson
import polars as pl
from polars.datatypes import DataTypeClass

from pipeline import frame as frames
from pipeline.decode import codec, columns, rules, timestamps
from pipeline.decode.rules import Block, Rule
from pipeline.model import DecodeError, Event
from pipeline.replay.archive import (
    BLOCKS,
    LAYOUT,
    NESTED_LAYOUT,
    ArchiveError,
    Batch,
    _one_line,
)

__all__ = ["BLOCKS", "LAYOUT", "NESTED_LAYOUT", "ParquetPlan", "write_parquet"]

_TYPED = tuple(LAYOUT)[:-2]  # the writer's typed columns
_MESSAGE = tuple(NESTED_LAYOUT)[:-2]  # a typed row's JSON keys, in order
_REQUIRED = columns.REQUIRED_COLUMNS
_REQUIRED_FIELDS = columns.REQUIRED_FIELDS
_FRAME_FIELDS = columns.FRAME_FIELDS

# Event times the writer types: |ts| < 2**33 s (years 1698..2242), where
# round(ts * 1e6) is the exact microsecond (the float's error stays < 0.5 us).
_TYPED_TS_LIMIT = 2.0**33
# Readers map microseconds to float seconds column-wise only below 2**53 us
# (exact Int64 -> Float64, then one correctly rounded division, as Python's
# int / int in datetime.timestamp()); other times take the codec's path.
_EXACT_US = 2**53
_MIN_US, _MAX_US = timestamps.MIN_US, timestamps.MAX_US  # years 1..9999

_WRITE_CHUNK = 65_536  # lines typed per frame by the writer
_RAW_BLOCK = 65_536  # Parquet rows re-read (and cached) at a time by Batch.raws
_RAW_CACHE = 4  # blocks kept by Batch.raws


# --------------------------------------------------------------------------- Parquet writer


def _presence(block: Block) -> str:
    """How the writer knows a message had the block: an Event field, or "" (the extras' block)."""
    if block.presence:
        return block.presence
    return next((r.event for r in block.fields if r.required and r.event), "")


def _extras_struct() -> type[msgspec.Struct]:
    """What an accepted message holds beyond its Event: the fields no Event field takes.

    Any type: the codec has checked them.  A block whose presence no Event
    field tells comes whole (its struct, or None).
    """
    fields: list[tuple[str, Any, Any]] = []
    for item in rules.MESSAGE:
        if isinstance(item, Block):
            kept = [r for r in item.fields if not r.event]
            if kept or not _presence(item):
                kept_fields = [(r.key, Any, msgspec.field(default=None, name=r.name)) for r in kept]
                inner = msgspec.defstruct(f"_{item.name}", kept_fields, gc=False)
                fields.append((item.name, inner | None, None))
        elif not item.event:
            fields.append((item.key, Any, msgspec.field(default=None, name=item.name)))
    return msgspec.defstruct("_Extras", fields, gc=False)


_Extras: Any = _extras_struct()
# Integer fields a typed row holds as Int64 that the rules do not bound (an Event's are: signed 64-bit).
_EXTRA_INTS = tuple((block, r.key) for path, r in rules.LEAVES.items() if r.kind == "int" and not r.event
                    for block in [path.rpartition(".")[0]])
_extras_decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(_Extras)


def _int64_or_none(value: int | float | None) -> int | None:
    return None if value is None else int(value)


def _as_int64(value: int | float | None) -> int | None:
    """An integral JSON number as an int; ValueError when Int64 cannot hold it."""
    if value is None:
        return None
    number = int(value)
    if not rules.INT64_MIN <= number <= rules.INT64_MAX:
        raise ValueError(number)
    return number


def write_parquet(lines: Iterable[bytes], path: str | os.PathLike[str], row_group_rows: int = 131_072,
                  compression: Literal["lz4", "zstd", "snappy", "uncompressed"] = "lz4") -> int:
    """Write messages (JSONL lines) as a Parquet archive in the layout above; return the rows written.

    Each line is decoded with `codec.decode`; accepted lines become typed rows,
    the others are kept verbatim in `raw`.  Trailing CR/LF are cut and blank
    lines skipped (they are not messages).  The file appears whole or not at
    all: it is written beside `path` and renamed.  lz4 reads about a third
    faster than zstd (whose files are 40% smaller); see the module docstring.
    """
    if row_group_rows < 1:
        raise ValueError(f"row_group_rows must be >= 1, got {row_group_rows}")
    target = Path(path)
    partial = target.with_name(f".{target.name}.partial")
    written = 0
    failure: list[BaseException] = []

    def chunks(with_columns: list[str] | None, predicate: pl.Expr | None,
               n_rows: int | None, batch_size: int | None) -> Iterator[pl.DataFrame]:
        nonlocal written
        # Only the sink below reads this source; it takes every row and column.
        if predicate is not None or n_rows is not None or with_columns is not None:
            raise RuntimeError("the archive writer's source is read whole")
        it = iter(lines)
        try:
            while True:
                chunk = [line.rstrip(b"\r\n") for line in islice(it, _WRITE_CHUNK)]
                if not chunk:
                    return
                df = _typed_chunk([line for line in chunk if line and not line.isspace()])
                written += len(df)
                yield df
        except Exception as exc:  # re-raised below with its own type, not polars' wrapper
            failure.append(exc)
            raise

    from polars.io.plugins import register_io_source

    source = register_io_source(chunks, schema=LAYOUT)
    try:
        source.sink_parquet(partial, row_group_size=row_group_rows, compression=compression)
    except BaseException:
        with contextlib.suppress(OSError):
            partial.unlink()
        if failure:
            raise failure[0] from None
        raise
    if failure:  # an error polars did not pass on
        with contextlib.suppress(OSError):
            partial.unlink()
        raise failure[0]
    os.replace(partial, target)
    return written


def _typed_chunk(lines: list[bytes]) -> pl.DataFrame:
    """One chunk of messages in the layout, in order."""
    decode = codec.decode
    events: list[Event] = []
    extras: list[Any] = []
    typed_at: list[int] = []
    raw_at: list[int] = []
    for i, line in enumerate(lines):
        decoded = decode(line)
        if type(decoded) is Event:
            try:
                extra = _extras_decoder.decode(line)
                # What a typed row cannot hold exactly stays raw.
                if not -_TYPED_TS_LIMIT < decoded.ts < _TYPED_TS_LIMIT:
                    raise ValueError(decoded.ts)
                for block, name in _EXTRA_INTS:
                    holder = getattr(extra, block) if block else extra
                    if holder is not None:
                        _as_int64(getattr(holder, name))
            except (ValueError, msgspec.DecodeError):  # ValidationError is a DecodeError
                raw_at.append(i)
                continue
            events.append(decoded)
            extras.append(extra)
            typed_at.append(i)
        else:
            raw_at.append(i)
    typed = _typed_frame(events, extras).with_columns(
        raw=pl.lit(None, pl.String()), raw_bytes=pl.lit(None, pl.Binary()))
    if not raw_at:
        return typed
    texts: list[str | None] = []
    blobs: list[bytes | None] = []
    for i in raw_at:
        try:
            texts.append(lines[i].decode("utf-8"))
            blobs.append(None)
        except UnicodeDecodeError:
            texts.append(None)
            blobs.append(lines[i])
    raws = pl.DataFrame({"raw": texts, "raw_bytes": blobs},
                        schema={"raw": pl.String(), "raw_bytes": pl.Binary()})
    raws = raws.select(*(pl.lit(None, LAYOUT[c]).alias(c) for c in _TYPED), "raw", "raw_bytes")
    if not events:
        return raws
    order = pl.Series("_i", typed_at + raw_at, dtype=pl.Int64())
    both = pl.concat([typed, raws]).with_columns(order)
    return both.sort("_i").drop("_i")


def _typed_frame(events: list[Event], extras: list[Any]) -> pl.DataFrame:
    """Accepted messages as typed rows of the flat layout (an absent block: presence false, fields null).

    Each column from the rule of its field: the Event field it maps to (a code
    back to its canonical value), else the message's own value (`extras`).
    """
    seconds = np.fromiter((e.ts for e in events), dtype=np.float64, count=len(events))
    micros = np.rint(seconds * 1e6).astype(np.int64)
    columns: dict[str, Any] = {}

    def values(rule: Rule, block: str, present: list[bool] | None) -> list[Any]:
        if rule.event is None:
            holders = [getattr(x, block) for x in extras] if block else extras
            return [None if h is None else _int64_or_none(getattr(h, rule.key)) if rule.kind == "int"
                    else getattr(h, rule.key) for h in holders]
        found = [getattr(e, rule.event) for e in events]
        if rule.codes is not None:
            canonical = {code: key for key, code in reversed(list(rule.codes.items()))}  # first key wins
            found = [canonical.get(code) for code in found]
        if present is not None:  # in an optional block: nothing when the message lacks it
            found = [v if p else None for v, p in zip(found, present, strict=True)]
        return found

    for item in rules.MESSAGE:
        if isinstance(item, Rule):
            columns[item.name] = (pl.Series(micros, dtype=pl.Int64()) if item.kind == "ts"
                                  else values(item, "", None))
            continue
        present: list[bool] | None = None
        if not item.required:
            flag = _presence(item)
            present = ([bool(getattr(e, flag)) if item.presence else getattr(e, flag) is not None
                        for e in events] if flag else [getattr(x, item.name) is not None for x in extras])
            columns[item.name] = present
        for rule in item.fields:
            columns[f"{item.name}.{rule.name}"] = values(rule, item.name, present)
    # Text is built as String and made Categorical in one cast (as the layout has it).
    built = {name: pl.String() if isinstance(dtype, pl.Categorical) else dtype
             for name, dtype in LAYOUT.items() if name in columns}
    built["ts"] = pl.Int64()
    flat = pl.DataFrame(columns, schema=built)
    return flat.with_columns(pl.col("ts").cast(pl.Datetime("us", "UTC"))).cast(
        {name: LAYOUT[name] for name in _TYPED})


# --------------------------------------------------------------------------- Parquet reader

_INTS = (pl.Int8, pl.Int16, pl.Int32, pl.Int64, pl.UInt8, pl.UInt16, pl.UInt32)
_FLOATS = (pl.Float32, pl.Float64, *_INTS)
_STRINGS = (pl.String, pl.Categorical, pl.Enum)
_KIND_TYPES: dict[str, tuple[Any, ...]] = {
    "str": _STRINGS, "bool": (pl.Boolean,), "int": _INTS, "float": _FLOATS, "binary": (pl.Binary,),
}
_KIND_NAMES = {"str": "String", "bool": "Boolean", "int": "an integer type (Int64)",
               "float": "Float64", "binary": "Binary"}
_CANONICAL: dict[str, pl.DataType] = {"str": pl.String(), "bool": pl.Boolean(), "int": pl.Int64(),
                                      "float": pl.Float64(), "binary": pl.Binary()}


def _struct(fields: dict[str, pl.Expr]) -> pl.Expr:
    return pl.struct([expr.alias(name) for name, expr in fields.items()])


def _dtype(dtype: pl.DataType | DataTypeClass | None) -> pl.DataType | None:
    """A dtype instance (polars may give classes for simple types inside structs)."""
    if dtype is None or isinstance(dtype, pl.DataType):
        return dtype
    instance: pl.DataType = dtype()
    return instance


def _kind(dtype: pl.DataType | None) -> str:
    if dtype == pl.String or isinstance(dtype, pl.Categorical):
        return "str"
    if dtype == pl.Boolean:
        return "bool"
    if dtype == pl.Int64:
        return "int"
    if dtype == pl.Float64:
        return "float"
    return "binary"


def _ts_micros(dtype: pl.DataType) -> tuple[pl.Expr, pl.Expr]:
    """(epoch microseconds, whether they are valid and mapped exactly) for the ts column."""
    column = pl.col("ts")
    if isinstance(dtype, pl.Datetime):
        physical = column.cast(pl.Int64)
        if dtype.time_unit == "ns":
            micros = physical // 1000  # floor: fromisoformat cuts the digits of a positive fraction
        elif dtype.time_unit == "ms":
            micros = pl.when(physical.is_between(_MIN_US // 1000, _MAX_US // 1000)).then(physical * 1000)
        else:
            micros = physical
        fast = micros.is_between(_MIN_US, _MAX_US) & (micros.abs() < _EXACT_US)
        return micros, fast.fill_null(False)
    if dtype == pl.Null:
        return pl.lit(None, pl.Int64()), pl.lit(False)
    micros = timestamps.micros_of_text(column.cast(pl.String))
    return micros, (micros.abs() < _EXACT_US).fill_null(False)


def _leaf(expr: pl.Expr, dtype: pl.DataType | None, kind: str) -> pl.Expr:
    """A layout leaf in its canonical type (null when the column or field is missing).

    Categorical text stays Categorical: the frame wants most labels so, and a
    cast to String and back would cost more than reading them.
    """
    if dtype is None or dtype == pl.Null:
        return pl.lit(None, _CANONICAL[kind])
    if kind == "str" and isinstance(dtype, pl.Categorical):
        return expr
    return expr.cast(_CANONICAL[kind])


def _fits(dtype: pl.DataType, kind: str) -> bool:
    if dtype == pl.Null:
        return True
    return any(dtype == t or isinstance(dtype, t) for t in _KIND_TYPES[kind])


def _is_flat(path: str, schema: Mapping[str, pl.DataType]) -> bool:
    """Whether a file holds the flat layout (else the nested one), from its block columns.

    A block is nested when its column is a Struct, flat when its column is
    Boolean (its presence) or, absent or Null-typed, the file has any of its
    "<block>.<field>" columns.  One file holds one layout: a struct block
    beside dotted columns of any block is an ArchiveError naming the column.
    A file with no block column at all is taken as flat (its missing
    latency_ms fields are then named).
    """
    nested: str | None = None  # a column of each form, for the error
    flat: str | None = None
    for block, struct in BLOCKS.items():
        found = schema.get(block)
        dotted = [f"{block}.{f.name}" for f in struct.fields if f"{block}.{f.name}" in schema]
        if isinstance(found, pl.Struct):
            if dotted:
                nested, flat = block, dotted[0]
            nested = nested or block
        elif found == pl.Boolean:
            flat = flat or block
        elif found is None or found == pl.Null:
            if dotted:
                flat = flat or dotted[0]
        else:
            raise ArchiveError(f"{path}: column `{block}` has type {found}, expected a struct "
                               f"{{{', '.join(f.name for f in struct.fields)}}} (nested layout) "
                               "or Boolean (flat layout: whether the message has the block)")
        if nested is not None and flat is not None:
            raise ArchiveError(f"{path}: column `{flat}` is in the flat layout but column `{nested}` is a "
                               "struct (nested layout): a file holds one layout")
    return nested is None


def _nested_block(path: str, schema: Mapping[str, pl.DataType], name: str, struct: pl.Struct,
                  leaves: dict[str, pl.Expr]) -> tuple[pl.Expr, pl.Expr | None]:
    """A struct column's fields into `leaves`; (presence, None): the struct's own nulls."""
    found = schema.get(name)
    inner = {f.name: f.dtype for f in found.fields} if isinstance(found, pl.Struct) else {}
    has = isinstance(found, pl.Struct)
    for f in struct.fields:
        where = f"{name}.{f.name}"
        got = _dtype(inner.get(f.name))
        if has and got is None and f.name in _REQUIRED_FIELDS.get(name, ()):
            raise ArchiveError(f"{path}: column `{where}` is missing (required by the layout)")
        kind = _kind(_dtype(f.dtype))
        if got is not None and not _fits(got, kind):
            raise ArchiveError(f"{path}: column `{where}` has type {got}, expected {_KIND_NAMES[kind]}")
        leaves[where] = _leaf(pl.col(name).struct.field(f.name), got, kind)  # a null struct has null fields
    return (pl.col(name).is_not_null() if has else pl.lit(False)), None


def _flat_block(path: str, schema: Mapping[str, pl.DataType], name: str, struct: pl.Struct,
                leaves: dict[str, pl.Expr]) -> tuple[pl.Expr, pl.Expr | None]:
    """A block's "<name>.<field>" columns into `leaves`; (presence, its fields are null | None).

    Presence is the block's Boolean column (null = absent) when the file has
    one, else whether any field is non-null.
    """
    flag = schema.get(name)
    has_flag = flag == pl.Boolean
    found = {f.name: schema.get(f"{name}.{f.name}") for f in struct.fields}
    seen = has_flag or any(dtype is not None for dtype in found.values())
    values: list[pl.Expr] = []  # the fields in the file
    for f in struct.fields:
        where = f"{name}.{f.name}"
        got = found[f.name]
        if got is None and f.name in _REQUIRED_FIELDS.get(name, ()) and (seen or rules.BLOCKS[name].required):
            raise ArchiveError(f"{path}: column `{where}` is missing (required by the archive layout)")
        kind = _kind(_dtype(f.dtype))
        if got is not None and not _fits(got, kind):
            raise ArchiveError(f"{path}: column `{where}` has type {got}, expected {_KIND_NAMES[kind]}")
        leaves[where] = _leaf(pl.col(where), got, kind)
        if got is not None and got != pl.Null:
            values.append(pl.col(where))
    if has_flag:
        taken = [pl.col(f"{name}.{f}") for f in _FRAME_FIELDS.get(name, ())
                 if found[f] is not None and found[f] != pl.Null]
        tidy = pl.all_horizontal(v.is_null() for v in taken) if taken else None
        return pl.col(name).fill_null(False), tidy
    if not values:
        return pl.lit(False), None
    return pl.any_horizontal(v.is_not_null() for v in values), None


@dataclass(frozen=True)
class ParquetPlan:
    """A checked Parquet archive: how to read its columns in the canonical layout."""

    path: str
    size: int
    rows: int
    flat: bool  # the flat layout ("<block>.<field>" columns), else the nested one (struct columns)
    leaves: dict[str, pl.Expr]  # "route", "latency_ms.tffb", ...: canonical typed expressions
    present: dict[str, pl.Expr]  # block -> whether the message has it (never null)
    # Checks a typed row must pass besides the codec's rules: in the flat layout, a block its
    # presence column calls absent has no values (else the row's JSON, without them, is decoded).
    tidy: list[pl.Expr]
    ts_dtype: pl.DataType  # Datetime (any unit), String (RFC 3339) or Null
    raw: pl.Expr
    raw_bytes: pl.Expr

    @classmethod
    def open(cls, path: str, size: int) -> ParquetPlan:
        try:
            schema = pl.read_parquet_schema(path)
            rows = pl.scan_parquet(path).select(pl.len()).collect().item()
        except (pl.exceptions.PolarsError, OSError) as exc:
            raise ArchiveError(f"{path}: not a readable Parquet file: {_one_line(exc)}") from None
        flat = _is_flat(path, schema)
        for name in _REQUIRED if flat else (*_REQUIRED, *columns.REQUIRED_BLOCKS):
            if name not in schema:
                raise ArchiveError(f"{path}: column `{name}` is missing (required by the archive layout)")
        leaves: dict[str, pl.Expr] = {}
        present: dict[str, pl.Expr] = {}
        tidy: list[pl.Expr] = []
        ts_dtype = schema["ts"]
        if not (isinstance(ts_dtype, pl.Datetime) or ts_dtype in (pl.String, pl.Null)):
            raise ArchiveError(f"{path}: column `ts` has type {ts_dtype}, "
                               "expected Datetime or String (RFC 3339)")
        for name, dtype in NESTED_LAYOUT.items():
            if name in ("ts", "raw", "raw_bytes"):
                continue
            if isinstance(dtype, pl.Struct):
                block = (_flat_block if flat else _nested_block)(path, schema, name, dtype, leaves)
                present[name], fields_null = block
                if fields_null is not None:
                    tidy.append(present[name] | fields_null)
            else:
                found = schema.get(name)
                kind = _kind(dtype)
                if found is not None and not _fits(found, kind):
                    raise ArchiveError(f"{path}: column `{name}` has type {found}, "
                                       f"expected {_KIND_NAMES[kind]}")
                leaves[name] = _leaf(pl.col(name), found, kind)
        raw_dtype = schema.get("raw")
        if raw_dtype is not None and not _fits(raw_dtype, "str") and not _fits(raw_dtype, "binary"):
            raise ArchiveError(f"{path}: column `raw` has type {raw_dtype}, expected String")
        raw_bytes_dtype = schema.get("raw_bytes")
        if raw_bytes_dtype is not None and not _fits(raw_bytes_dtype, "binary"):
            raise ArchiveError(f"{path}: column `raw_bytes` has type {raw_bytes_dtype}, expected Binary")
        if raw_dtype is not None and _fits(raw_dtype, "binary") and raw_dtype != pl.Null:
            raw = pl.lit(None, pl.String())
            raw_bytes = pl.col("raw")  # a Binary `raw` is bytes already
            if raw_bytes_dtype is not None and raw_bytes_dtype != pl.Null:
                raw_bytes = pl.coalesce(pl.col("raw"), pl.col("raw_bytes"))
        else:
            raw = _leaf(pl.col("raw"), raw_dtype, "str")
            raw_bytes = _leaf(pl.col("raw_bytes"), raw_bytes_dtype, "binary")
        return cls(path, size, rows, flat, leaves, present, tidy, ts_dtype, raw, raw_bytes)

    # ---- the fast path: typed rows checked and mapped column-wise

    def _ok(self) -> pl.Expr:
        """True for a typed row the codec accepts (checked column by column, by the rules)."""
        checks = [
            self.raw.is_null() & self.raw_bytes.is_null(),
            _ts_micros(self.ts_dtype)[1],
            *columns.checks(self.leaves, self.present),
            *self.tidy,
        ]
        return pl.all_horizontal(check.fill_null(False) for check in checks)

    def _frame_columns(self) -> list[pl.Expr]:
        """frame.SCHEMA's columns of a valid typed row, as codec._to_event maps them."""
        # microseconds here (exact below 2**53); divided in numpy by `_seconds`, because
        # polars multiplies by the reciprocal, which is not datetime.timestamp()'s rounding
        ts = _ts_micros(self.ts_dtype)[0]
        return [*columns.frame_columns(self.leaves, self.present, ts),
                pl.col("__archive_row").cast(pl.Int64).alias("row")]

    def _scan(self, offset: int, length: int) -> pl.LazyFrame:
        return pl.scan_parquet(self.path, row_index_name="__archive_row").slice(offset, length)

    def batches(self, batch_rows: int, max_bytes: int) -> Iterator[Batch]:
        """The archive in batches of at most batch_rows rows."""
        done = 0
        columns = [*self._frame_columns(), self._ok().alias("_ok"),
                   self.raw.alias("_raw"), self.raw_bytes.alias("_raw_bytes")]
        lookup = _RowLookup(self)
        for offset in range(0, max(self.rows, 1), batch_rows):
            length = min(batch_rows, self.rows - offset)
            try:
                df = self._scan(offset, length).select(columns).collect()
            except (pl.exceptions.PolarsError, OSError) as exc:
                raise ArchiveError(f"{self.path}: unreadable at rows {offset}..{offset + length - 1}: "
                                   f"{_one_line(exc)}") from None
            df = _seconds(df)
            if df.get_column("_ok").all():
                good = df.select(list(frames.SCHEMA))
                dead: list[tuple[int, DecodeError]] = []
            else:
                good = df.filter(pl.col("_ok")).select(list(frames.SCHEMA))
                bad = df.filter(~pl.col("_ok")).select("row", "_raw", "_raw_bytes")
                good, dead = self._slow(good, bad, lookup, max_bytes)
            end = offset + length
            at = self.size if end >= self.rows else self.size * end // self.rows
            yield Batch(self.path, good, dead, at - done, lookup)
            done = at

    def _slow(self, good: pl.DataFrame, bad: pl.DataFrame, lookup: _RowLookup,
              max_bytes: int) -> tuple[pl.DataFrame, list[tuple[int, DecodeError]]]:
        """Rows the column checks did not accept: raw rows and broken typed rows, through the codec."""
        events: list[Event] = []
        rows: list[int] = []
        dead: list[tuple[int, DecodeError]] = []
        typed = [r for r, text, blob in bad.iter_rows() if text is None and blob is None]
        serialized = dict(zip(typed, lookup.typed(typed), strict=True))
        for r, text, blob in bad.iter_rows():
            odd: dict[str, str] = {}
            if blob is not None:
                message = blob
            elif text is not None:
                message = text.encode("utf-8")
            else:
                message, odd = serialized[r]
            decoded = codec.decode(message, max_bytes)
            if isinstance(decoded, Event):
                events.append(decoded)
                rows.append(r)
            else:
                dead.append((r, _explain_non_finite(decoded, odd)))
        extra = frames.from_events(events, rows)
        if len(extra):
            good = pl.concat([good, extra]).sort("row")
        return good, dead


def _seconds(df: pl.DataFrame) -> pl.DataFrame:
    """ts microseconds -> float seconds, correctly rounded as Python's int / int."""
    micros = df.get_column("ts").to_numpy()
    return df.with_columns(pl.Series("ts", np.divide(micros, 1e6), dtype=pl.Float64))


def _explain_non_finite(error: DecodeError, odd: dict[str, str]) -> DecodeError:
    """A NaN or infinity written as null: say so in the detail."""
    for path, token in odd.items():
        if error.detail == f"Expected `float`, got `null` - at `{path}`":
            detail = f"Expected `float`, got `{token}` - at `{path}`"
            return DecodeError(error.raw, error.reason, detail, error.variant, error.ts)
    return error


# --------------------------------------------------------------------------- Parquet rows as JSON


class _RowLookup:
    """Original messages of Parquet rows: raw text, or a typed row's canonical JSON.

    Rows are re-read in blocks of _RAW_BLOCK rows (every layout column), the
    last few blocks cached, so a replay asking for rows segment by segment
    reads each block once.
    """

    def __init__(self, plan: ParquetPlan) -> None:
        self.plan = plan
        self.blocks: OrderedDict[int, pl.DataFrame] = OrderedDict()
        self.ts_text = plan.ts_dtype == pl.String
        leaf = plan.leaves
        columns: list[pl.Expr] = [
            plan.raw.alias("raw"), plan.raw_bytes.alias("raw_bytes"),
            (pl.col("ts").cast(pl.String) if self.ts_text else _any_micros(plan.ts_dtype)).alias("ts"),
        ]
        for name, dtype in NESTED_LAYOUT.items():  # the message's form, whatever the file's layout
            if name in ("ts", "raw", "raw_bytes"):
                continue
            if isinstance(dtype, pl.Struct):
                fields = {f.name: leaf[f"{name}.{f.name}"] for f in dtype.fields}
                columns.append(pl.when(plan.present[name]).then(_struct(fields)).alias(name))
            else:
                columns.append(leaf[name].alias(name))
        self.columns = columns

    def _picked(self, rows: Sequence[int]) -> pl.DataFrame:
        """The rows' layout columns (raw, raw_bytes, then the typed columns), in the order asked."""
        for r in rows:
            if not 0 <= r < self.plan.rows:
                raise KeyError(f"{self.plan.path}: no row {r} (rows 0..{self.plan.rows - 1})")
        parts: list[pl.DataFrame] = []
        i = 0
        while i < len(rows):  # runs of rows in one block, in the order asked
            index = rows[i] // _RAW_BLOCK
            j = i
            while j < len(rows) and rows[j] // _RAW_BLOCK == index:
                j += 1
            block = self._block(index)
            parts.append(block[[r - index * _RAW_BLOCK for r in rows[i:j]]])
            i = j
        return pl.concat(parts) if parts else self._block(0).clear()

    def _block(self, index: int) -> pl.DataFrame:
        block = self.blocks.get(index)
        if block is not None:
            self.blocks.move_to_end(index)
            return block
        try:
            block = self.plan._scan(index * _RAW_BLOCK, _RAW_BLOCK).select(self.columns).collect()
        except (pl.exceptions.PolarsError, OSError) as exc:
            raise ArchiveError(f"{self.plan.path}: unreadable: {_one_line(exc)}") from None
        self.blocks[index] = block
        while len(self.blocks) > _RAW_CACHE:
            self.blocks.popitem(last=False)
        return block

    def typed(self, rows: Sequence[int]) -> list[tuple[bytes, dict[str, str]]]:
        """Canonical JSON of typed rows, with {json path: token} of numbers JSON cannot hold."""
        return [_to_json(record, self.ts_text) for record in self._picked(rows).iter_rows()]

    def __call__(self, rows: Sequence[int]) -> list[bytes]:
        picked = self._picked(rows)
        texts = picked.select(_json_expr(self.ts_text)).to_series().to_list()
        out: list[bytes] = []
        for i, (raw, blob, text) in enumerate(zip(picked["raw"], picked["raw_bytes"], texts, strict=True)):
            if blob is not None:
                out.append(blob)
            elif raw is not None:
                out.append(raw.encode("utf-8"))
            elif text is not None:
                out.append(text.encode("utf-8"))
            else:  # NaN, infinity or a year JSON text cannot say: Python writes these
                out.append(_to_json(picked.row(i), self.ts_text)[0])
        return out


_LAYOUT_KEYS = "|".join([*_MESSAGE, *(f.name for dtype in BLOCKS.values() for f in dtype.fields)])
_NULL_AFTER = f',"(?:{_LAYOUT_KEYS})":null'  # json_encode writes every null; canonical JSON omits them
_NULL_FIRST = f'\\{{"(?:{_LAYOUT_KEYS})":null,'
_NULL_ONLY = f'\\{{"(?:{_LAYOUT_KEYS})":null\\}}'


def _json_expr(ts_text: bool) -> pl.Expr:
    """Canonical JSON of typed rows, column-wise, byte for byte what `_to_json` writes.

    Null for raw rows and for rows whose numbers or year JSON cannot hold
    (those go through `_to_json`).  A key can only match the null patterns as
    structure: inside a JSON string every quote is escaped.
    """
    ts = pl.col("ts")
    if ts_text:
        text, ts_ok = ts, pl.lit(True)
    else:
        clock = (ts.cast(pl.Datetime("us")).dt.to_string("%Y-%m-%dT%H:%M:%S%.6f")
                 .str.replace(r"\.?0+$", ""))  # as isoformat: no fraction when 0, no trailing zeros
        text, ts_ok = clock + "Z", ts.is_null() | ts.is_between(_MIN_US, _MAX_US)
    finite = [pl.col(block).struct.field(name)
              for block, names in _NON_FINITE_CHECKED.items() for name in names]
    eligible = (pl.col("raw").is_null() & pl.col("raw_bytes").is_null() & ts_ok
                & pl.all_horizontal(x.is_null() | x.is_finite() for x in finite)).fill_null(False)
    body = pl.struct(text.alias("ts"), *(pl.col(name) for name in _MESSAGE[1:])).struct.json_encode()
    body = (body.str.replace_all(_NULL_AFTER, "").str.replace_all(_NULL_FIRST, "{")
            .str.replace_all(_NULL_ONLY, "{}"))
    return pl.when(eligible).then(body)


def _any_micros(dtype: pl.DataType) -> pl.Expr:
    """Epoch microseconds of a Datetime ts for serialization (any instant that fits)."""
    if not isinstance(dtype, pl.Datetime):
        return pl.lit(None, pl.Int64())
    physical = pl.col("ts").cast(pl.Int64)
    if dtype.time_unit == "ns":
        return physical // 1000
    if dtype.time_unit == "ms":
        return pl.when(physical.abs() < 2**63 // 1000).then(physical * 1000)
    return physical


_NON_FINITE_CHECKED = columns.FLOAT_FIELDS


def _to_json(record: tuple[Any, ...], ts_text: bool) -> tuple[bytes, dict[str, str]]:
    """A typed row as canonical JSON: layout order, nulls omitted, NaN/inf as null (and noted)."""
    odd: dict[str, str] = {}
    doc: dict[str, Any] = {}
    ts = record[2]
    if ts is not None:
        doc["ts"] = ts if ts_text else timestamps.rfc3339(ts)
    for name, value in zip(_MESSAGE[1:], record[3:], strict=True):
        if value is None:
            continue
        if type(value) is dict:
            inner = {key: item for key, item in value.items() if item is not None}
            for key in _NON_FINITE_CHECKED.get(name, ()):
                item = inner.get(key)
                if item is not None and not math.isfinite(item):
                    odd[f"$.{name}.{key}"] = "NaN" if math.isnan(item) else ("inf" if item > 0 else "-inf")
                    inner[key] = None
            doc[name] = inner
        else:
            doc[name] = value
    return orjson.dumps(doc), odd
