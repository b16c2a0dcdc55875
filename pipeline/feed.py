"""How a decoded batch reaches the judge: in pieces, summarised where that pays (pure core).

The stream's decoding workers and replay hand the `Engine` their batches the
same way, in two halves:

* where the batch was decoded, `split` cuts its frame of accepted events
  (`frame.SCHEMA`, from `decode.batch.decode_frame` or an archive reader) at
  the dead letters into runs; a run of at least SMALL events becomes a
  `Summary` (`partial.summarize_frame`, the one summariser), a shorter one a
  `Run` of events to take one by one (feeding it costs the judge less than
  checking and merging a summary), and each dead letter stays where it was;
  the runs of a batch are summarised in one pass (`summarize_runs`).  A batch with one bad line is thus two
  summaries and a dead letter, not a batch taken event by event.
* on the judge, `Feeder.feed` takes the pieces in order: a summary is merged
  whole (`Engine.feed_partial`) when `Engine.fits` finds none of its events
  late, future or a repeat of a request id its windows hold; otherwise, and for
  runs and dead letters, the events go through `Engine.feed`, in order, with
  the dead letters in their place.  Verdicts are those of `Engine.feed` over
  every event either way.  Where the events of a misfit come from is the
  caller's `Events`: the stream decodes the chunk's lines again
  (`ChunkEvents`: only that piece's), replay reads them from its frame and
  also re-summarises the halves of a long misfit (`replay.run`).

The feeder keeps nothing across batches that the judge's state does not: the
request ids of merged summaries are in the engine (`SeenIds`, hashes plus
text settled into the snapshot), so a snapshot of the `Engine` is the whole
state to resume from.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt
import polars as pl

from pipeline.aggregate.partial import Partial, summarize_runs
from pipeline.config import Config
from pipeline.decode import codec
from pipeline.decode.batch import Dead, decode_frame
from pipeline.engine import Engine, Output, Report
from pipeline.fleet import AMBIGUOUS, UNMATCHED, Router, UnmatchedCounts, ambiguity
from pipeline.io.chunk import Chunk
from pipeline.model import DeadLetter, DeadLetterReason, DecodeError, Event

SMALL = 64  # runs shorter than this go event by event: checking and merging a summary costs the judge more
SUMMARY_MIN = 500  # a batch with fewer events to summarise goes one by one: a summary's fixed cost
SPLIT_MIN = 4096  # a misfit summary is halved (where its source can) down to this size, then taken exactly


@dataclass(frozen=True, slots=True)
class Summary:
    """A run of accepted events, summarised: frame positions [start, stop), `row` that of the first."""

    start: int
    stop: int
    row: int
    partial: Partial


@dataclass(frozen=True, slots=True)
class Run:
    """A short run of accepted events, to be taken one by one: frame positions [start, stop).

    (A stream chunk too small to summarise is one `Run` of all its lines, bad ones included.)
    """

    start: int
    stop: int
    row: int


Piece = Summary | Run | tuple[int, DecodeError]  # the last: a dead letter and its row


def split(events: pl.DataFrame, dead: Dead, size: float, variants: tuple[str, ...],
          small: int = SMALL) -> list[Piece]:
    """A decoded batch as pieces in arrival order: runs of accepted events between the dead letters.

    `events` holds the accepted events (`row` ascending), `dead` the rejected
    ones by row.  Runs of `small` events or more are summarised, all in one
    pass (`summarize_runs`): a bad line costs the batch one cut, not a summary.
    """
    rows = events["row"].to_numpy()
    cuts, long = _cut(rows, dead, small)
    if sum(stop - start for start, stop in long) < SUMMARY_MIN:
        long = []  # a summary costs a few milliseconds whatever its size: more than feeding these
    summaries = summarize_runs(events, long, size, variants) if long else []
    return _assemble(cuts, long, rows, summaries)


# each run [start, stop) of a frame, and the dead letter after it
Cuts = list[tuple[int, int, tuple[int, DecodeError] | None]]


def _cut(rows: npt.NDArray[np.int64], dead: Dead, small: int) -> tuple[Cuts, list[tuple[int, int]]]:
    """The runs of accepted events between the dead letters, and those of `small` events or more."""
    cuts: Cuts = []
    start = 0
    for row, error in dead:
        end = int(np.searchsorted(rows, row))
        cuts.append((start, end, (row, error)))
        start = end
    cuts.append((start, len(rows), None))
    return cuts, [(start, stop) for start, stop, _ in cuts if stop - start >= small]


def _assemble(cuts: Cuts, long: list[tuple[int, int]], rows: npt.NDArray[np.int64],
              summaries: Sequence[Partial]) -> list[Piece]:
    """The pieces in order: the `long` runs as their summaries, the others as runs, dead letters between."""
    summarized = dict(zip(long, summaries, strict=True))
    pieces: list[Piece] = []
    for start, stop, after in cuts:
        partial = summarized.get((start, stop))
        if partial is not None:
            pieces.append(Summary(start, stop, int(rows[start]), partial))
        elif stop > start:
            pieces.append(Run(start, stop, int(rows[start])))
        if after is not None:
            pieces.append(after)
    return pieces


def decode_chunk(lines: list[bytes], max_bytes: int, size: float, variants: tuple[str, ...]) -> list[Piece]:
    """A stream chunk's messages as pieces for the judge (`row` = index in `lines`).

    A chunk too small to summarise (SUMMARY_MIN) is not decoded here at all: it
    is one `Run` of all its lines, which the judge decodes one by one
    (`ChunkEvents`), its decode errors dead-lettered in their place.
    """
    if len(lines) < SUMMARY_MIN:
        return [Run(0, len(lines), 0)] if lines else []
    events, dead = decode_frame(lines, max_bytes)
    return split(events, dead, size, variants)


@dataclass(frozen=True, slots=True)
class Routed:
    """A chunk routed over a fleet (`route_chunk`).

    `mine`: per rollout, its messages (a picked chunk) and their pieces, as
    `decode_chunk` would cut a chunk of only those messages; `dead`: messages
    no single rollout can take (a broken one whose x_exp, route and variant
    match none, or any message matching two rollouts), for the dead-letter
    output; `unmatched`: accepted events of no rollout, by x_exp.
    """

    mine: dict[str, tuple[Chunk, list[Piece]]]
    dead: list[DeadLetter]
    unmatched: UnmatchedCounts


def route_chunk(chunk: Chunk, router: Router, rollouts: Sequence[Config], max_bytes: int) -> Routed:
    """Decode a chunk once and hand each rollout of the fleet its own messages, cut into pieces.

    `rollouts[i]` is the config of `router.names[i]`: its window size and
    variants cut its summaries.  A broken message goes to the rollout that its
    readable x_exp, route and variant match (its gates count it, as a run of
    that rollout alone would).  Every rollout hears a chunk that ends its
    partition or says its broker is down, with its own messages or none.
    """
    events, dead = decode_frame(chunk.lines, max_bytes)
    rows = events["row"].to_numpy()
    routes = router.route(events)
    target = np.full(len(chunk.lines), UNMATCHED, dtype=np.int64)
    target[rows] = routes
    for (row, _), to in zip(dead, router.route_dead(dead), strict=True):
        target[row] = to
    unmatched = UnmatchedCounts()
    if (routes == UNMATCHED).any():
        counts = events.filter(pl.Series(routes == UNMATCHED)).group_by("x_exp").len()
        unmatched.add_all((None if v is None else str(v), int(n)) for v, n in counts.iter_rows())
    placed = [(row, _letter(chunk, row, error)) for row, error in dead if target[row] == UNMATCHED]
    placed += [(row, _ambiguous(chunk, row, router, max_bytes))
               for row in np.flatnonzero(target == AMBIGUOUS).tolist()]
    letters = [letter for _, letter in sorted(placed, key=lambda x: x[0])]
    mine: dict[str, tuple[Chunk, list[Piece]]] = {}
    # Each rollout's messages, in order, renumbered as a chunk of its own (`row` = index in its chunk).
    order = np.argsort(target, kind="stable")
    starts = np.searchsorted(target[order], np.arange(len(router.names) + 1))
    rank = np.empty(len(target), dtype=np.int64)
    rank[order] = np.arange(len(target)) - starts[np.clip(target[order], 0, None)]
    by_rollout = np.argsort(routes, kind="stable")
    grouped = events[by_rollout] if len(by_rollout) else events
    grouped = grouped.with_columns(row=pl.Series(rank[rows[by_rollout]], dtype=pl.Int64))
    bounds = np.searchsorted(routes[by_rollout], np.arange(len(router.names) + 1))
    dead_of: dict[int, Dead] = {}
    for row, error in dead:
        if target[row] >= 0:
            dead_of.setdefault(int(target[row]), []).append((int(rank[row]), error))
    # Every rollout's long runs are summarised in one pass (its own window size and variants).
    plans: list[tuple[int, npt.NDArray[np.int64], Cuts, list[tuple[int, int]]]] = []
    runs: list[tuple[int, int]] = []
    sizes: list[float] = []
    variants: list[tuple[str, ...]] = []
    all_rows = grouped["row"].to_numpy()
    for i in range(len(router.names)):
        lo, hi = int(bounds[i]), int(bounds[i + 1])
        if hi == lo and i not in dead_of:
            continue
        own_rows = all_rows[lo:hi]
        cuts, long = _cut(own_rows, dead_of.get(i, []), SMALL)
        plans.append((i, own_rows, cuts, long))
        runs += [(lo + start, lo + stop) for start, stop in long]
        sizes += [rollouts[i].windows.size_s] * len(long)
        variants += [(rollouts[i].control, rollouts[i].canary)] * len(long)
    if sum(stop - start for start, stop in runs) < SUMMARY_MIN:
        runs = []
        plans = [(i, own_rows, cuts, []) for i, own_rows, cuts, _ in plans]
    summaries = iter(summarize_runs(grouped, runs, sizes, variants) if runs else [])
    picks = chunk.pick_many([order[int(starts[i]):int(starts[i + 1])] for i, *_ in plans])
    for (i, own_rows, cuts, long), own in zip(plans, picks, strict=True):
        mine[router.names[i]] = (own, _assemble(cuts, long, own_rows, [next(summaries) for _ in long]))
    if chunk.last or chunk.down:  # every rollout hears that its partition ended or is down
        for name in router.names:
            mine.setdefault(name, (chunk.pick([]), []))
    return Routed(mine, letters, unmatched)


def _letter(chunk: Chunk, row: int, error: DecodeError, reason: DeadLetterReason | None = None,
            detail: str | None = None) -> DeadLetter:
    """The dead letter of message `row` of a chunk, with its Kafka origin."""
    headers = chunk.headers[row] if chunk.headers is not None else None
    return DeadLetter(error.raw, reason or error.reason, detail or error.detail, error.variant,
                      chunk.locate(row), key=chunk.keys[row] if chunk.keys is not None else None,
                      timestamp_ms=chunk.timestamps[row] if chunk.timestamps is not None else None,
                      headers=tuple(headers or ()))


def _ambiguous(chunk: Chunk, row: int, router: Router, max_bytes: int) -> DeadLetter:
    """The dead letter of a message that two rollouts or more match (decoded again: a rare path)."""
    raw = chunk.lines[row]
    decoded = codec.decode(raw, max_bytes)
    values: tuple[str | None, str | None, str | None]
    if isinstance(decoded, Event):
        values = (decoded.x_exp, decoded.route, decoded.variant)
        error = DecodeError(raw, DeadLetterReason.AMBIGUOUS_ROLLOUT, "", decoded.variant, decoded.ts)
        also = ""
    else:
        values = codec.readable_routing(raw)
        error = decoded
        also = f"; and {decoded.reason}: {decoded.detail}"
    return _letter(chunk, row, error, DeadLetterReason.AMBIGUOUS_ROLLOUT,
                   ambiguity(router.claimants(*values), also))


class Events(Protocol):
    """Where the judge gets a piece's events back when they must go one by one."""

    def events(self, piece: Summary | Run) -> tuple[list[Event | DecodeError], Sequence[int]]:
        """The piece's decoded events in order, and the row of each."""
        ...

    def locate(self, row: int) -> str:
        """The dead letter's `source` for the message at `row`."""
        ...

    def halves(self, piece: Summary) -> tuple[Summary, Summary] | None:
        """The piece's two halves, each summarised; None if this source cannot summarise again."""
        ...


@dataclass(frozen=True, slots=True)
class ChunkEvents:
    """The stream's `Events`: a chunk's lines, decoded again by `codec.decode` (rows = line indices)."""

    lines: list[bytes]
    where: Callable[[int], str]  # Chunk.locate
    max_bytes: int

    def events(self, piece: Summary | Run) -> tuple[list[Event | DecodeError], Sequence[int]]:
        decode, max_bytes = codec.decode, self.max_bytes
        # a run of the frame holds no dead letter, so its lines are consecutive
        rows = range(piece.row, piece.row + piece.stop - piece.start)
        return [decode(self.lines[i], max_bytes) for i in rows], rows

    def locate(self, row: int) -> str:
        return self.where(row)

    def halves(self, piece: Summary) -> None:
        return None  # the frame stayed on the decoding worker: the lines go through the codec


class Feeder:
    """Feeds a batch's pieces to an `Engine` in order (see the module docstring); counts the two paths."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.summarized = 0  # events merged as summaries
        self.one_by_one = 0  # events fed one by one (short runs, or a late/future/repeated one inside)

    def feed(self, pieces: Sequence[Piece], source: Events, partition: str,
             now: float | None = None) -> list[Output]:
        """One batch's pieces, from one partition (at wall time `now`, live runs); what closed."""
        engine = self.engine
        engine.heard(partition, now)
        before = engine.totals.get("events_in")  # None: no event yet
        out: list[Output] = []
        exact: list[Summary | Run | tuple[int, DecodeError]] = []  # taken together by one `feed`

        def flush() -> None:
            if not exact:
                return
            items: list[Event | DecodeError] = []
            rows: list[int] = []
            for piece in exact:
                if isinstance(piece, tuple):
                    rows.append(piece[0])
                    items.append(piece[1])
                    continue
                got, at = source.events(piece)
                self.one_by_one += len(got)
                items += got
                rows += at
            exact.clear()
            out.extend(engine.feed(items, partition, lambda i: source.locate(rows[i]), now))

        def merge(piece: Summary) -> None:
            if engine.fits(piece.partial, partition, now):
                self.summarized += piece.stop - piece.start
                out.extend(engine.feed_partial(piece.partial, partition, list, None, now, fits=True))
                return
            halves = source.halves(piece) if piece.stop - piece.start > SPLIT_MIN else None
            if halves is None:
                engine.totals["chunks_replayed"] += 1
                exact.append(piece)
                return
            for half in halves:
                flush()
                merge(half)

        for piece in pieces:
            if isinstance(piece, Summary):
                flush()  # what came before moves the clock first
                merge(piece)
            else:
                exact.append(piece)
        flush()
        for item in out:
            if type(item) is Report:
                # as one `Engine.feed` of the whole batch says: the events of the batches before
                if before is None:
                    item.totals.pop("events_in", None)
                else:
                    item.totals["events_in"] = before
        return out


__all__ = ["SMALL", "SPLIT_MIN", "SUMMARY_MIN", "ChunkEvents", "Events", "Feeder", "Piece", "Routed", "Run",
           "Summary", "decode_chunk", "route_chunk", "split"]
