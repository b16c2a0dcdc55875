"""Telemetry archives for replay and backtest: JSONL, JSONL.gz and Parquet files.

`open_archives` turns a list of files, folders and globs into ONE stream of
`Batch`es: per batch, the accepted events as a polars frame (`frame.SCHEMA`)
and the rejected messages as dead letters, both keyed by `row`, the message's
0-based position in its archive.  `write_parquet` writes the Parquet layout
below; `canary-gate generate --format parquet` uses it.

JSONL (plain or gzip)
---------------------
One message per line, read exactly as the stream's file source reads it
(`pipeline/io/files.py`): lines end at b"\\n", trailing CR/LF are cut, a blank
line is not a message but keeps its number, and every line goes through
`codec.decode`, so aliases, dead-letter reasons and details are the stream's.
`row` is the 0-based line index, so a dead letter's source is
`f"{file name}:{row + 1}"` as the stream writes it (`Batch.locate`).  The
cost is `codec.decode` plus `frame.from_events`, about 11 us an event on the
reference machine (90k events/s, 70k gzip); Parquet is the format for large
backtests.

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
typed row cannot hold exactly (an integer beyond Int64, an event time outside
the years 1698..2242 where float seconds -> microseconds is exact), are kept
in `raw`.  Lines are typed in chunks of 65,536 and streamed to one file through
a polars sink (an IO-plugin source), so memory stays flat: 5M events in 75-90 s
and 0.32 GB peak, 163 MB with lz4 (the default; zstd: 104 MB).

Reading Parquet is column-wise: one lazy polars query per batch reads only
the needed columns, checks every typed row against the codec's rules (required
fields, non-empty labels, latency >= 0 and finite, status 100..599, failure
phase, ΔS and coverage in [0, 1], λ, complete probe and cache blocks, RFC 3339
text) and maps it to `frame.SCHEMA` as `codec._to_event` does (ts = epoch
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
rows; a typed row has no message size and is not checked against it.  An
event whose probe paraphrase or seed does not fit Int64 (frame.SCHEMA) is a
`schema` dead letter in a replay although the stream accepts it.
"""

from __future__ import annotations

import contextlib
import glob
import gzip
import io
import math
import os
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import islice
from pathlib import Path
from typing import Any, Literal

import msgspec
import numpy as np
import orjson
import polars as pl
from polars.datatypes import DataTypeClass

from pipeline import frame as frames
from pipeline.decode import codec
from pipeline.model import LAMBDA_STATES, DeadLetterReason, DecodeError, Event

__all__ = [
    "BLOCKS",
    "LAYOUT",
    "NESTED_LAYOUT",
    "ArchiveError",
    "Archives",
    "Batch",
    "open_archives",
    "write_parquet",
]

SUFFIXES = (".jsonl", ".jsonl.gz", ".parquet")

LABEL = pl.Categorical()  # low-cardinality text: a dictionary-encoded UTF-8 column in Parquet
LATENCY = pl.Struct({"tffb": pl.Float64(), "tusable": pl.Float64(), "tfinal": pl.Float64()})
RETRIEVAL = pl.Struct({
    "k": pl.Int64(), "metric": LABEL, "analyzer": LABEL, "INDEX_HASH": LABEL,
    "ΔS_q_r": pl.Float64(), "coverage": pl.Float64(), "λ_state": LABEL,
})
PROBE = pl.Struct({"question_id": LABEL, "topic": LABEL, "paraphrase": pl.Int64(), "seed": pl.Int64()})
CACHE = pl.Struct({"prefix": LABEL, "hit": pl.Boolean()})
EGRESS = pl.Struct({"webhook": LABEL, "tries": pl.Int64(), "dedupe_key": pl.String()})

# The message's objects ("blocks"); all but latency_ms are optional.
BLOCKS: dict[str, pl.Struct] = {
    "latency_ms": LATENCY, "retrieval": RETRIEVAL, "probe": PROBE, "cache": CACHE, "egress": EGRESS,
}

# The nested layout (read, no longer written), in the message's canonical order (raw columns last).
NESTED_LAYOUT: dict[str, pl.DataType] = {
    "ts": pl.Datetime("us", "UTC"),
    "route": LABEL,
    "variant": LABEL,
    "sticky": pl.String(),
    "region": LABEL,
    "edge_pop": LABEL,
    "x_exp": LABEL,
    "request_id": pl.String(),
    "cold_start": pl.Boolean(),
    "x_warm": pl.Boolean(),
    "latency_ms": LATENCY,
    "status": pl.Int64(),
    "failure_phase": LABEL,
    "retrieval": RETRIEVAL,
    "probe": PROBE,
    "cache": CACHE,
    "egress": EGRESS,
    "raw": pl.String(),
    "raw_bytes": pl.Binary(),
}


def _flattened(nested: dict[str, pl.DataType]) -> dict[str, pl.DataType]:
    """The flat layout: each block's fields as "<block>.<field>" columns after its presence column."""
    flat: dict[str, pl.DataType] = {}
    for name, dtype in nested.items():
        if isinstance(dtype, pl.Struct):
            if name != "latency_ms":  # required: its presence goes without saying
                flat[name] = pl.Boolean()
            for f in dtype.fields:
                inner = f.dtype
                flat[f"{name}.{f.name}"] = inner if isinstance(inner, pl.DataType) else inner()
        else:
            flat[name] = dtype
    return flat


# The Parquet layout as written, in serialization order (raw columns last).
LAYOUT: dict[str, pl.DataType] = _flattened(NESTED_LAYOUT)
_TYPED = tuple(LAYOUT)[:-2]  # the writer's typed columns
_MESSAGE = tuple(NESTED_LAYOUT)[:-2]  # a typed row's JSON keys, in order
_REQUIRED = ("ts", "route", "variant", "sticky", "region", "cold_start", "status")
_REQUIRED_FIELDS = {"latency_ms": ("tffb", "tusable", "tfinal"),
                    "probe": ("question_id", "topic", "paraphrase", "seed"),
                    "cache": ("prefix", "hit")}
# Fields of optional blocks the frame takes as they are: an absent block's must be null for the
# column-wise mapping (Parquet makes a null struct's fields null; in the flat layout, `tidy` checks).
_FRAME_FIELDS = {"retrieval": ("metric", "analyzer", "INDEX_HASH", "ΔS_q_r", "coverage", "λ_state"),
                 "probe": ("question_id", "topic", "paraphrase", "seed"), "cache": ("prefix", "hit")}
_FAILURE_PHASES = ("headers", "body")
_LAMBDA_INDEX = codec._LAMBDA_INDEX  # symbols and words -> index into LAMBDA_STATES

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
# Event times the writer types: |ts| < 2**33 s (years 1698..2242), where
# round(ts * 1e6) is the exact microsecond (the float's error stays < 0.5 us).
_TYPED_TS_LIMIT = 2.0**33
# Readers map microseconds to float seconds column-wise only below 2**53 us
# (exact Int64 -> Float64, then one correctly rounded division, as Python's
# int / int in datetime.timestamp()); other times take the codec's path.
_EXACT_US = 2**53
_MIN_US = -62_135_596_800_000_000  # 0001-01-01T00:00:00Z
_MAX_US = 253_402_300_799_999_999  # 9999-12-31T23:59:59.999999Z

_WRITE_CHUNK = 65_536  # lines typed per frame by the writer
_RAW_BLOCK = 65_536  # Parquet rows re-read (and cached) at a time by Batch.raws
_RAW_CACHE = 4  # blocks kept by Batch.raws


class ArchiveError(ValueError):
    """An archive path that cannot be read; the message is one line naming the path."""


# --------------------------------------------------------------------------- batches


@dataclass(frozen=True)
class Batch:
    """Decoded messages of one archive: accepted events as a frame, rejected ones as dead letters.

    `frame` has exactly `frame.SCHEMA` with `row` ascending; `dead` holds
    (row, DecodeError) ascending.  `done_bytes` is the share of the input this
    batch accounts for (the sum over all batches is `Archives.total_bytes`).
    """

    source: str
    frame: pl.DataFrame
    dead: list[tuple[int, DecodeError]]
    done_bytes: int
    _lookup: Callable[[Sequence[int]], list[bytes]] = field(repr=False, compare=False)

    def raws(self, rows: Sequence[int]) -> list[bytes]:
        """The original message of each given row of this batch.

        JSONL: the line without its newline.  Parquet: a raw row's text; a
        typed row's canonical JSON (layout order, nulls omitted, ts in RFC 3339
        with Z), which `codec.decode` turns into the same Event as the frame row.
        """
        return self._lookup(rows)

    def locate(self, row: int) -> str:
        """Where a message came from, as the stream's file source says it: "name:line"."""
        return f"{Path(self.source).name}:{row + 1}"


@dataclass(frozen=True)
class _Archive:
    path: str
    kind: Literal["jsonl", "gzip", "parquet"]
    size: int
    parquet: _ParquetPlan | None = None


class Archives:
    """Archives read as one stream, in the given order; iterate it for `Batch`es."""

    def __init__(self, archives: Sequence[_Archive], batch_rows: int, max_bytes: int) -> None:
        self._archives = tuple(archives)
        self.batch_rows = batch_rows
        self.max_bytes = max_bytes
        self.files: list[str] = [a.path for a in self._archives]
        self.total_bytes: int = sum(a.size for a in self._archives)

    def __iter__(self) -> Iterator[Batch]:
        for archive in self._archives:
            if archive.parquet is not None:
                yield from archive.parquet.batches(self.batch_rows, self.max_bytes)
            else:
                yield from _jsonl_batches(archive, self.batch_rows, self.max_bytes)


def open_archives(paths: list[str], batch_rows: int = 1_000_000, max_bytes: int = 1_048_576) -> Archives:
    """Archives from files (.jsonl, .jsonl.gz, .parquet), folders (their archives, by name) and globs.

    Every path is expanded and checked before anything is read: a missing
    path, an empty folder or glob, another kind of file, an unreadable file, a
    file that is not gzip or Parquet, or a Parquet file whose columns do not
    fit the layout raises ArchiveError naming it.
    """
    if batch_rows < 1:
        raise ValueError(f"batch_rows must be >= 1, got {batch_rows}")
    if not paths:
        raise ArchiveError("no archive given")
    return Archives([_check(file) for path in paths for file in _expand(path)], batch_rows, max_bytes)


def _is_archive(name: str) -> bool:
    return name.endswith(SUFFIXES)


def _expand(path: str) -> list[str]:
    kinds = ", ".join(SUFFIXES)
    if os.path.isfile(path):
        if not _is_archive(path):
            raise ArchiveError(f"{path}: not an archive (expected {kinds})")
        return [path]
    if os.path.isdir(path):
        try:
            names = sorted(os.listdir(path))
        except OSError as exc:
            raise ArchiveError(f"{path}: cannot list the folder: {exc.strerror or exc}") from None
        found = [os.path.join(path, n) for n in names
                 if _is_archive(n) and os.path.isfile(os.path.join(path, n))]
        if not found:
            raise ArchiveError(f"{path}: folder holds no archive ({kinds})")
        return found
    if any(c in path for c in "*?["):
        found = sorted(p for p in glob.glob(path) if _is_archive(p) and os.path.isfile(p))
        if not found:
            raise ArchiveError(f"{path}: no archive ({kinds}) matches")
        return found
    if os.path.lexists(path):
        raise ArchiveError(f"{path}: not a file or folder")
    raise ArchiveError(f"{path}: no such file or directory")


def _check(path: str) -> _Archive:
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(2)
    except OSError as exc:
        raise ArchiveError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if path.endswith(".parquet"):
        return _Archive(path, "parquet", size, _ParquetPlan.open(path, size))
    if path.endswith(".gz"):
        if head not in (b"\x1f\x8b", b""):
            raise ArchiveError(f"{path}: not a gzip file")
        return _Archive(path, "gzip", size)
    return _Archive(path, "jsonl", size)


# --------------------------------------------------------------------------- JSONL

_BLANK_START = frozenset(b" \t\n\r\x0b\x0c")  # bytes.strip()'s whitespace


def _jsonl_batches(archive: _Archive, batch_rows: int, max_bytes: int) -> Iterator[Batch]:
    """Batches of a JSONL file, lines numbered and skipped exactly as JsonlSource does."""
    path = archive.path
    decode = codec.decode
    done = 0
    row = 0
    try:
        with open(path, "rb") as f:
            stream: gzip.GzipFile | io.BufferedReader = (
                gzip.GzipFile(fileobj=f, mode="rb") if archive.kind == "gzip" else f)
            with stream:
                while True:
                    chunk = list(islice(stream, batch_rows))
                    last = len(chunk) < batch_rows or not stream.peek(1)
                    lines = [line.rstrip(b"\r\n") for line in chunk]
                    events: list[Event] = []
                    rows: list[int] = []
                    dead: list[tuple[int, DecodeError]] = []
                    for i, line in enumerate(lines):
                        # Blank lines are not messages (their number still counts).
                        if not line or (line[0] in _BLANK_START and not line.strip()):
                            continue
                        decoded = decode(line, max_bytes)
                        if type(decoded) is Event:
                            events.append(decoded)
                            rows.append(row + i)
                        else:
                            dead.append((row + i, decoded))  # type: ignore[arg-type]
                    at = archive.size if last else min(f.tell(), archive.size)
                    yield Batch(path, _events_frame(events, rows, dead), dead, at - done,
                                _line_lookup(path, row, lines))
                    done = at
                    row += len(lines)
                    if last:
                        return
    except (OSError, EOFError, zlib.error) as exc:
        raise ArchiveError(f"{path}: unreadable after line {row}: {exc}") from None


def _line_lookup(path: str, first: int, lines: list[bytes]) -> Callable[[Sequence[int]], list[bytes]]:
    def lookup(rows: Sequence[int]) -> list[bytes]:
        out = []
        for r in rows:
            if not first <= r < first + len(lines):
                raise KeyError(f"{path}: row {r} is not in this batch "
                               f"(rows {first}..{first + len(lines) - 1})")
            out.append(lines[r - first])
        return out

    return lookup


def _events_frame(events: list[Event], rows: list[int], dead: list[tuple[int, DecodeError]]) -> pl.DataFrame:
    """frame.from_events, with events the frame cannot hold moved to `dead` (kept sorted)."""
    try:
        return frames.from_events(events, rows)
    except (TypeError, OverflowError):
        pass
    # Only probe paraphrase and seed are unbounded integers in an Event.
    kept_events: list[Event] = []
    kept_rows: list[int] = []
    for event, r in zip(events, rows, strict=True):
        problem = _int64_problem(event)
        if problem is None:
            kept_events.append(event)
            kept_rows.append(r)
        else:
            error = DecodeError(event.raw, DeadLetterReason.SCHEMA, problem, event.variant, event.ts)
            dead.append((r, error))
    dead.sort(key=lambda item: item[0])
    return frames.from_events(kept_events, kept_rows)


def _int64_problem(event: Event) -> str | None:
    for name, value in (("paraphrase", event.probe_paraphrase), ("seed", event.probe_seed)):
        if not _INT64_MIN <= value <= _INT64_MAX:
            return f"Expected `int` within 64 bits, got {value} - at `$.probe.{name}`"
    return None


# --------------------------------------------------------------------------- Parquet writer


class _Retrieval(msgspec.Struct, gc=False):
    k: int | float | None = None


class _Egress(msgspec.Struct, gc=False):
    webhook: str | None = None
    tries: int | float | None = None
    dedupe_key: str | None = None


class _Extras(msgspec.Struct, gc=False):
    """What an accepted message holds beyond its Event (types as the codec checked them)."""

    edge_pop: str | None = None
    x_exp: str | None = None
    retrieval: _Retrieval | None = None
    egress: _Egress | None = None


_extras_decoder = msgspec.json.Decoder(_Extras)


def _as_int64(value: int | float | None) -> int | None:
    """An integral JSON number as an int; ValueError when Int64 cannot hold it."""
    if value is None:
        return None
    number = int(value)
    if not _INT64_MIN <= number <= _INT64_MAX:
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
    extras: list[_Extras] = []
    ks: list[int | None] = []
    tries: list[int | None] = []
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
                if decoded.probe_question is not None:
                    _as_int64(decoded.probe_paraphrase)
                    _as_int64(decoded.probe_seed)
                k = _as_int64(extra.retrieval.k) if extra.retrieval is not None else None
                t = _as_int64(extra.egress.tries) if extra.egress is not None else None
            except (ValueError, msgspec.DecodeError):  # ValidationError is a DecodeError
                raw_at.append(i)
                continue
            events.append(decoded)
            extras.append(extra)
            ks.append(k)
            tries.append(t)
            typed_at.append(i)
        else:
            raw_at.append(i)
    typed = _typed_frame(events, extras, ks, tries).with_columns(
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


def _typed_frame(events: list[Event], extras: list[_Extras], ks: list[int | None],
                 tries: list[int | None]) -> pl.DataFrame:
    """Accepted messages as typed rows of the flat layout (an absent block: presence false, fields null)."""
    seconds = np.fromiter((e.ts for e in events), dtype=np.float64, count=len(events))
    micros = np.rint(seconds * 1e6).astype(np.int64)
    probe = [e.probe_question is not None for e in events]
    columns: dict[str, Any] = {
        "ts": pl.Series(micros, dtype=pl.Int64()),
        "route": [e.route for e in events],
        "variant": [e.variant for e in events],
        "sticky": [e.sticky for e in events],
        "region": [e.region for e in events],
        "edge_pop": [x.edge_pop for x in extras],
        "x_exp": [x.x_exp for x in extras],
        "request_id": [e.request_id for e in events],
        "cold_start": [e.cold_start for e in events],
        "x_warm": [e.x_warm for e in events],
        "latency_ms.tffb": [e.tffb for e in events],
        "latency_ms.tusable": [e.tusable for e in events],
        "latency_ms.tfinal": [e.tfinal for e in events],
        "status": [e.status for e in events],
        "failure_phase": [e.failure_phase for e in events],
        "retrieval": [e.has_retrieval for e in events],
        "retrieval.k": ks,
        "retrieval.metric": [e.metric for e in events],
        "retrieval.analyzer": [e.analyzer for e in events],
        "retrieval.INDEX_HASH": [e.index_hash for e in events],
        "retrieval.ΔS_q_r": [e.delta_s for e in events],
        "retrieval.coverage": [e.coverage for e in events],
        "retrieval.λ_state": [LAMBDA_STATES[e.lambda_state] if e.lambda_state >= 0 else None for e in events],
        "probe": probe,
        "probe.question_id": [e.probe_question for e in events],
        "probe.topic": [e.probe_topic for e in events],
        "probe.paraphrase": [e.probe_paraphrase if p else None for e, p in zip(events, probe, strict=True)],
        "probe.seed": [e.probe_seed if p else None for e, p in zip(events, probe, strict=True)],
        "cache": [e.cache_hit is not None for e in events],
        "cache.prefix": [e.cache_prefix for e in events],
        "cache.hit": [e.cache_hit for e in events],
        "egress": [x.egress is not None for x in extras],
        "egress.webhook": [x.egress.webhook if x.egress is not None else None for x in extras],
        "egress.tries": tries,
        "egress.dedupe_key": [x.egress.dedupe_key if x.egress is not None else None for x in extras],
    }
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


# RFC 3339 as codec._RFC3339, with the parts captured.
_TS_PARTS = (r"^([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]+))?"
             r"(?:[Zz]|([+-])([0-9]{2}):([0-9]{2}))$")


def _ts_from_text(text: pl.Expr) -> pl.Expr:
    """Epoch microseconds of RFC 3339 text, as datetime.fromisoformat reads it; null when not valid.

    Fractions beyond 6 digits are cut (as fromisoformat does); a calendar or
    range error gives null, and the row then takes the codec's path.
    """
    parts = text.str.extract_groups(_TS_PARTS)

    def num(i: int) -> pl.Expr:
        return parts.struct.field(str(i)).cast(pl.Int64)

    year, month, day, hour, minute, second = (num(i) for i in range(1, 7))
    fraction = (parts.struct.field("7").str.slice(0, 6).str.pad_end(6, "0").cast(pl.Int64)
                .fill_null(0))
    sign = pl.when(parts.struct.field("8") == "-").then(-1).otherwise(1)
    offset = (sign * (num(9) * 3600 + num(10) * 60)).fill_null(0)
    leap = ((year % 4 == 0) & ((year % 100 != 0) | (year % 400 == 0))).cast(pl.Int64)
    month_days = (pl.when(month == 2).then(28 + leap)
                  .when(month.is_in([4, 6, 9, 11])).then(30)
                  .otherwise(31))
    valid = ((year >= 1) & (month >= 1) & (month <= 12) & (day >= 1) & (day <= month_days)
             & (hour <= 23) & (minute <= 59) & (second <= 59)
             & (num(9).fill_null(0) <= 23) & (num(10).fill_null(0) <= 59))
    # days_from_civil (H. Hinnant), on years >= 1 so every division is of non-negatives
    y = year - (month <= 2).cast(pl.Int64)
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (month + pl.when(month > 2).then(-3).otherwise(9)) + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    days = era * 146_097 + doe - 719_468
    seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset
    return pl.when(valid).then(seconds * 1_000_000 + fraction)


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
    micros = _ts_from_text(column.cast(pl.String))
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
        if got is None and f.name in _REQUIRED_FIELDS.get(name, ()) and (seen or name == "latency_ms"):
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
class _ParquetPlan:
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
    def open(cls, path: str, size: int) -> _ParquetPlan:
        try:
            schema = pl.read_parquet_schema(path)
            rows = pl.scan_parquet(path).select(pl.len()).collect().item()
        except (pl.exceptions.PolarsError, OSError) as exc:
            raise ArchiveError(f"{path}: not a readable Parquet file: {_one_line(exc)}") from None
        flat = _is_flat(path, schema)
        for name in _REQUIRED if flat else (*_REQUIRED, "latency_ms"):
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
        """True for a typed row the codec accepts (checked column by column)."""
        leaf = self.leaves
        has_r, has_p, has_c = self.present["retrieval"], self.present["probe"], self.present["cache"]

        def label(name: str) -> pl.Expr:
            return leaf[name] != ""

        # Polars orders NaN above +inf, so one range test also rejects NaN and infinities
        # (half the cost of is_finite() & (x >= 0); NaN/inf rows in the tests keep this honest).
        def milliseconds(name: str) -> pl.Expr:
            return leaf[f"latency_ms.{name}"].is_between(0.0, math.inf, closed="left")

        def unit(name: str) -> pl.Expr:
            x = leaf[f"retrieval.{name}"]
            return x.is_null() | x.is_between(0.0, 1.0)

        checks = [
            self.raw.is_null() & self.raw_bytes.is_null(),
            _ts_micros(self.ts_dtype)[1],
            label("route"), label("variant"), label("sticky"), label("region"),
            leaf["cold_start"].is_not_null(),
            self.present["latency_ms"],
            milliseconds("tffb"), milliseconds("tusable"), milliseconds("tfinal"),
            leaf["status"].is_between(100, 599),
            leaf["failure_phase"].is_null() | leaf["failure_phase"].is_in(_FAILURE_PHASES),
            ~has_r | (unit("ΔS_q_r") & unit("coverage")
                      & (leaf["retrieval.λ_state"].is_null()
                         | leaf["retrieval.λ_state"].is_in(list(_LAMBDA_INDEX)))),
            ~has_p | pl.all_horizontal(leaf[f"probe.{f}"].is_not_null() for f in _REQUIRED_FIELDS["probe"]),
            ~has_c | pl.all_horizontal(leaf[f"cache.{f}"].is_not_null() for f in _REQUIRED_FIELDS["cache"]),
            *self.tidy,
        ]
        return pl.all_horizontal(check.fill_null(False) for check in checks)

    def _frame_columns(self) -> list[pl.Expr]:
        """frame.SCHEMA's columns of a valid typed row, as codec._to_event maps them."""
        leaf = self.leaves
        # A when/then chain of equality tests: on Categorical each compares integer codes, ten
        # times faster than replace_strict, which maps the text of every row.
        state = leaf["retrieval.λ_state"]
        lam: Any = pl
        for key, index in _LAMBDA_INDEX.items():
            lam = lam.when(state == key).then(pl.lit(index, pl.Int8))
        lam = lam.otherwise(pl.lit(-1, pl.Int8))  # null or unknown (the latter never valid)
        columns = {
            # microseconds here (exact below 2**53); divided in numpy by `_seconds`, because
            # polars multiplies by the reciprocal, which is not datetime.timestamp()'s rounding
            "ts": _ts_micros(self.ts_dtype)[0],
            "route": leaf["route"],
            "variant": leaf["variant"],
            "sticky": leaf["sticky"],
            "region": leaf["region"],
            "cold_start": leaf["cold_start"],
            "x_warm": leaf["x_warm"].fill_null(False),
            "request_id": leaf["request_id"],
            "tffb": leaf["latency_ms.tffb"],
            "tusable": leaf["latency_ms.tusable"],
            "tfinal": leaf["latency_ms.tfinal"],
            "status": leaf["status"],
            "failure_phase": leaf["failure_phase"],
            "has_retrieval": self.present["retrieval"],
            "index_hash": leaf["retrieval.INDEX_HASH"],
            "metric": leaf["retrieval.metric"],
            "analyzer": leaf["retrieval.analyzer"],
            "delta_s": leaf["retrieval.ΔS_q_r"],
            "coverage": leaf["retrieval.coverage"],
            "lambda_state": lam,
            "probe_question": leaf["probe.question_id"],
            "probe_topic": leaf["probe.topic"],
            # an accepted row has both with a probe, neither without one
            "probe_paraphrase": leaf["probe.paraphrase"].fill_null(0),
            "probe_seed": leaf["probe.seed"].fill_null(0),
            "cache_prefix": leaf["cache.prefix"],
            "cache_hit": leaf["cache.hit"],
            "row": pl.col("__archive_row").cast(pl.Int64),
        }
        return [expr.cast(frames.SCHEMA[name]).alias(name) for name, expr in columns.items()]

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
        extra = _events_frame(events, rows, dead)
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


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


# --------------------------------------------------------------------------- Parquet rows as JSON


class _RowLookup:
    """Original messages of Parquet rows: raw text, or a typed row's canonical JSON.

    Rows are re-read in blocks of _RAW_BLOCK rows (every layout column), the
    last few blocks cached, so a replay asking for rows segment by segment
    reads each block once.
    """

    def __init__(self, plan: _ParquetPlan) -> None:
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


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC).replace(tzinfo=None)  # naive: isoformat without an offset


def _rfc3339(micros: int) -> str:
    """Epoch microseconds as RFC 3339 text with Z, for any year (others than 1..9999 are not RFC 3339)."""
    if _MIN_US <= micros <= _MAX_US:
        text = (_EPOCH + timedelta(microseconds=micros)).isoformat()
        return (text.rstrip("0") if "." in text else text) + "Z"
    seconds, fraction = divmod(micros, 1_000_000)
    days, second_of_day = divmod(seconds, 86_400)
    # civil_from_days (H. Hinnant)
    z = days + 719_468
    era = z // 146_097
    doe = z - era * 146_097
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    year = yoe + era * 400 + (1 if month <= 2 else 0)
    hour, rest = divmod(second_of_day, 3600)
    minute, second = divmod(rest, 60)
    text = f"{year:04d}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:{second:02d}"
    if fraction:
        text += f".{fraction:06d}".rstrip("0")
    return text + "Z"


_NON_FINITE_CHECKED = {"latency_ms": ("tffb", "tusable", "tfinal"), "retrieval": ("ΔS_q_r", "coverage")}


def _to_json(record: tuple[Any, ...], ts_text: bool) -> tuple[bytes, dict[str, str]]:
    """A typed row as canonical JSON: layout order, nulls omitted, NaN/inf as null (and noted)."""
    odd: dict[str, str] = {}
    doc: dict[str, Any] = {}
    ts = record[2]
    if ts is not None:
        doc["ts"] = ts if ts_text else _rfc3339(ts)
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
