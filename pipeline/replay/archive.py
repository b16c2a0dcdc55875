"""Telemetry archives for replay and backtest: JSONL, JSONL.gz and Parquet files.

`open_archives` turns a list of files, folders and globs into ONE stream of
`Batch`es: per batch, the accepted events as a polars frame (`frame.SCHEMA`)
and the rejected messages as dead letters, both keyed by `row`, the message's
0-based position in its archive.  `write_parquet` writes the Parquet layout
(`parquet.py`); `canary-gate generate --format parquet` uses it.

JSONL (plain or gzip)
---------------------
One message per line, read exactly as the stream's file source reads it
(`pipeline/io/files.py`): lines end at b"\\n", trailing CR/LF are cut, a blank
line is not a message but keeps its number, and every line is decoded as
`codec.decode` decodes it (`decode.batch.decode_frame`: the native decoder,
with `codec.decode` for every line it leaves), so aliases, dead-letter
reasons and details are the stream's.
`row` is the 0-based line index, so a dead letter's source is
`f"{file name}:{row + 1}"` as the stream writes it (`Batch.locate`).  The
cost is mostly reading and splitting the lines: decoding a batch costs
about 1 us an event (`decode_frame`), against 11 us for `codec.decode` plus
`frame.from_events`; Parquet is still the format for large backtests.

Parquet
-------
Read and written by `pipeline/replay/parquet.py` (its docstring describes the
layout); this module checks the paths and hands Parquet files to it, which
imports this module's `Batch` and `ArchiveError` (so this module imports it
where it is used, not at the top).  The layouts
(`LAYOUT`, `NESTED_LAYOUT`, `BLOCKS`) and the checks of typed rows come from
the decoding rules (`pipeline/decode/rules.py`, column by column in
`pipeline/decode/columns.py`).
"""

from __future__ import annotations

import glob
import gzip
import io
import os
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import polars as pl

from pipeline.decode import columns
from pipeline.decode.batch import decode_frame
from pipeline.model import DecodeError

if TYPE_CHECKING:
    from pipeline.replay.parquet import ParquetPlan

__all__ = [
    "BLOCKS",
    "LAYOUT",
    "NESTED_LAYOUT",
    "SUFFIXES",
    "ArchiveError",
    "Archives",
    "Batch",
    "open_archives",
    "write_parquet",
]

SUFFIXES = (".jsonl", ".jsonl.gz", ".parquet")

# The layouts of Parquet archives, from the decoding rules.
BLOCKS = columns.BLOCKS  # the message's objects; all but latency_ms are optional
NESTED_LAYOUT = columns.NESTED_LAYOUT  # read, no longer written; canonical order, raw columns last
LAYOUT = columns.LAYOUT  # as written, in serialization order (raw columns last)


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
    parquet: ParquetPlan | None = None


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
        from pipeline.replay.parquet import ParquetPlan  # it builds on this module's Batch

        return _Archive(path, "parquet", size, ParquetPlan.open(path, size))
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
                    frame, dead = _decode_lines(lines, row, max_bytes)
                    at = archive.size if last else min(f.tell(), archive.size)
                    yield Batch(path, frame, dead, at - done,
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


def _decode_lines(lines: list[bytes], first: int,
                  max_bytes: int) -> tuple[pl.DataFrame, list[tuple[int, DecodeError]]]:
    """The frame and dead letters of a batch's lines (`row` = first + line index); blank lines are skipped."""
    # Blank lines are not messages (their number still counts).
    kept = [i for i, line in enumerate(lines) if line and not (line[0] in _BLANK_START and not line.strip())]
    if len(kept) == len(lines):
        frame, dead = decode_frame(lines, max_bytes)
        if first:
            frame = frame.with_columns(pl.col("row") + first)
        return frame, [(first + i, error) for i, error in dead]
    frame, dead = decode_frame([lines[i] for i in kept], max_bytes)
    line_of = pl.Series("row", kept, dtype=pl.Int64())
    frame = frame.with_columns(line_of.gather(frame["row"]) + first)
    return frame, [(first + kept[i], error) for i, error in dead]


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def write_parquet(lines: Iterable[bytes], path: str | os.PathLike[str], row_group_rows: int = 131_072,
                  compression: Literal["lz4", "zstd", "snappy", "uncompressed"] = "lz4") -> int:
    """Write messages (JSONL lines) as a Parquet archive; see `parquet.write_parquet`."""
    from pipeline.replay import parquet  # it builds on this module's Batch

    return parquet.write_parquet(lines, path, row_group_rows, compression)
