"""Event time: the window spec and the stream-wide event clock (pure core).

Windows are tumbling, `size` seconds long, aligned to the Unix epoch: window
`wid` covers event times [wid * size, (wid + 1) * size).  Every path that
places an event in a window (the engine, the chunk summaries, replay's
column-wise summaries) calls these functions, so they cannot disagree on an
event near a window edge: the scalar and the column forms are both Python's
floor division of floats.

The event clock (docs/events.md, "Event time") is the state every window
close is decided from:

* watermark = min over live partitions of (largest event time seen there)
  - allowed_lateness_s; a partition that ended, or (live runs) fell idle,
  stops holding it back;
* an event more than max_future_s ahead of the largest event time seen is
  `future` and moves no clock; live runs, which pass the wall time, also hold
  events to max_future_s past it, so a first event with a broken clock cannot
  poison the stream;
* before the watermark is known, an event far behind the times seen is `stale`
  (counted late): it would open windows by the million and close them at once;
* an event whose window the watermark has passed is `late`.

Each rule has a scalar form (`EventClock.place`, one event as it arrives) and
a column form (`EventClock.fits`, a chunk's event times in arrival order,
for the summaries that are merged whole), side by side in `EventClock`;
tests/test_clock.py checks that they agree.  Nothing here reads the wall
clock: live runs pass it in (`now`), and the idle rule is `tick`.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable

import numpy as np
import numpy.typing as npt

from pipeline.config import Windows
from pipeline.model import DeadLetterReason

# Before the watermark is known, a partition's first event is stale this far behind the
# largest time seen (a backfill's partitions may start days apart, a 1970 timestamp may not).
STALE_FIRST_S = 30 * 86400.0
_UNKNOWN = -math.inf  # the watermark before every live partition has spoken


def window_of(ts: float, size: float) -> int:
    """The window holding event time `ts` (seconds since the epoch)."""
    return int(ts // size)


def windows_of(ts: npt.NDArray[np.float64], size: float) -> npt.NDArray[np.int64]:
    """`window_of` for a column of event times."""
    return np.floor_divide(ts, size).astype(np.int64)


def start_of(wid: int, size: float) -> float:
    """Where window `wid` starts (its first event time)."""
    return float(wid * size)


def end_of(wid: int, size: float) -> float:
    """Where window `wid` ends (exclusive): the verdict's `window_end`."""
    return float((wid + 1) * size)


class Misfit(enum.Enum):
    """Why the clock turns an event away."""

    FUTURE = "future"  # too far ahead of the largest event time seen
    AHEAD_OF_WALL = "ahead_of_wall"  # live: too far ahead of the wall clock
    STALE = "stale"  # far behind the times seen, before the watermark is known
    LATE = "late"  # its window has closed

    @property
    def reason(self) -> DeadLetterReason:
        """The dead-letter reason it is published under."""
        ahead = self in (Misfit.FUTURE, Misfit.AHEAD_OF_WALL)
        return DeadLetterReason.FUTURE if ahead else DeadLetterReason.LATE


class EventClock:
    """The stream-wide event clock: each partition's progress, the watermark and the idle rule."""

    def __init__(self, windows: Windows, partitions: Iterable[str] = ("0",)) -> None:
        # floats: float-with-float arithmetic is the fast path of the per-event rules
        self.size = float(windows.size_s)
        self.lateness = float(windows.allowed_lateness_s)
        self.max_future = float(windows.max_future_s)
        self.idle_close_s = windows.idle_close_s
        self.stale_s = float(windows.horizon_s + windows.allowed_lateness_s)
        self.partitions = set(partitions)
        self.ended: set[str] = set()
        self.part_max: dict[str, float] = {}
        self.max_seen: float | None = None
        self.watermark = -math.inf
        # Live idle rule (tick): wall time of each partition's last data, and who is idle.
        self.last_wall: dict[str, float] = {}
        self.idle: set[str] = set()
        self.started_wall: float | None = None
        self.holder: str | None = None  # the live partition whose progress sets the watermark
        self.down: set[str] = set()  # live partitions whose broker is unreachable: never idle

    # -- arrivals --------------------------------------------------------------------------------
    def heard(self, partition: str, now: float | None) -> None:
        """A partition delivered data (at wall time `now`, live): it holds the clock, and is not idle."""
        self.partitions.add(partition)
        if now is not None:
            self.last_wall[partition] = now
            if partition in self.idle:
                self.idle.discard(partition)
                self.holder = None  # it may be the one furthest behind now

    def resumed(self, partitions: Iterable[str]) -> None:
        """A run resumed from a snapshot: partitions added since hold the clock too; outages start afresh."""
        self.partitions.update(partitions)
        self.down.clear()  # what the source reports after the restart counts

    def reached(self, partition: str) -> float | None:
        """The latest event time of `partition`, or of the stream before it has any (None: nothing yet)."""
        return self.part_max.get(partition, self.max_seen)

    def alone(self, partition: str) -> bool:
        """Whether `partition` is the only one holding the watermark (its events alone move it)."""
        return self.partitions - self.ended - self.idle == {partition}

    def place(self, ts: float, partition: str, now: float | None = None) -> int | Misfit:
        """The window event time `ts` of `partition` goes in, or why the clock turns it away (scalar form)."""
        top = self.max_seen
        if top is not None and ts > top + self.max_future:
            return Misfit.FUTURE
        if now is not None and ts > now + self.max_future:
            return Misfit.AHEAD_OF_WALL
        size = self.size
        wid = int(ts // size)  # window_of, inlined: this runs per event
        watermark = self.watermark
        if watermark == _UNKNOWN:
            if top is not None and ts < self.stale_before(partition):
                return Misfit.STALE
        elif (wid + 1) * size <= watermark:  # end_of, inlined
            return Misfit.LATE
        return wid

    def stale_before(self, partition: str) -> float:
        """Before the watermark is known: event times of `partition` below this are late already.

        Measured against the event's own partition (horizon + lateness behind its
        latest), so it does not depend on how partitions interleave; a partition's
        first event, which has nothing of its own to compare with, only against
        STALE_FIRST_S behind the largest time seen.
        """
        mine = self.part_max.get(partition)
        if mine is not None:
            return mine - self.stale_s
        return (self.max_seen if self.max_seen is not None else math.inf) - STALE_FIRST_S

    def describe(self, misfit: Misfit, ts: float, now: float | None = None) -> str:
        """The dead letter's detail for an event the clock turned away."""
        if misfit is Misfit.FUTURE:
            return f"ts {ts:.3f} is more than {self.max_future:.0f} s ahead of the largest event time seen"
        if misfit is Misfit.AHEAD_OF_WALL:
            return f"ts {ts:.3f} is more than {self.max_future:.0f} s ahead of the wall clock ({now:.3f})"
        if misfit is Misfit.STALE:
            return f"ts {ts:.3f} is too far behind the event times seen to judge (watermark not yet known)"
        return f"window ending {end_of(window_of(ts, self.size), self.size):.0f} already closed"

    def see(self, ts: float, partition: str, alone: bool) -> bool:
        """Move the clock by an accepted event of `partition`; whether the watermark moved.

        `alone`: `self.alone(partition)`, asked once per batch.
        """
        top = self.max_seen
        if top is None or ts > top:
            self.max_seen = ts
        part_max = self.part_max
        prev = part_max.get(partition)
        if prev is not None and ts <= prev:
            return False
        part_max[partition] = ts
        if alone:  # `advance` inlined for the common single-partition case
            mark = ts - self.lateness
            if mark > self.watermark:
                self.watermark = mark
                return True
            return False
        # Only the partition furthest behind can move the minimum.
        return (self.holder is None or partition == self.holder) and self.advance()

    def see_top(self, top: float, partition: str) -> bool:
        """Move the clock by a merged chunk whose largest accepted event time is `top`."""
        if self.max_seen is None or top > self.max_seen:
            self.max_seen = top
        prev = self.part_max.get(partition)
        if prev is None or top > prev:
            self.part_max[partition] = top
            return self.advance()
        return False

    def fits(self, ts: npt.NDArray[np.float64], partition: str, *, now: float | None = None,
             repeated: npt.NDArray[np.bool_] | None = None,
             wids: npt.NDArray[np.int64] | None = None) -> bool:
        """Whether `place` would take every event of a chunk (arrival order, column form).

        `repeated` marks events that pass the clock but move nothing (repeated
        request ids); `wids` are the events' windows when known.  Up to the
        first misfit every event is accepted, so the clock as it stood when
        each arrived is a running maximum over the events before it.
        """
        if len(ts) == 0:
            return True
        if now is not None and float(ts.max()) > now + self.max_future:
            return False
        moves = ts if repeated is None else np.where(repeated, -np.inf, ts)
        before = np.empty_like(ts)  # largest accepted time of the chunk before each event
        before[0] = -np.inf
        np.maximum.accumulate(moves[:-1], out=before[1:])
        top = np.maximum(before, -np.inf if self.max_seen is None else self.max_seen)
        limit = np.where(top > -np.inf, top + self.max_future, np.inf)  # nothing seen yet: no limit
        if bool((ts > limit).any()):
            return False
        mine = np.maximum(before, self.part_max.get(partition, -np.inf))  # the partition's own, before
        marks = self._marks(mine, partition)
        unknown = marks == -np.inf
        if bool(unknown.any()):
            stale_before = np.where(mine > -np.inf, mine - self.stale_s, top - STALE_FIRST_S)
            if bool((unknown & (top > -np.inf) & (ts < stale_before)).any()):
                return False
        windows = windows_of(ts, self.size) if wids is None else wids
        return not bool(((windows + 1) * self.size <= marks).any())  # end_of, column form

    def _marks(self, mine: npt.NDArray[np.float64], partition: str) -> npt.NDArray[np.float64]:
        """The watermark as each event of a chunk arrived, from `mine` (the partition's progress then)."""
        live = self.partitions - self.ended - self.idle
        if partition not in live or any(p not in self.part_max for p in live - {partition}):
            # a live partition that has sent nothing holds the clock; so do all the others
            # when this one no longer counts
            return np.full_like(mine, self.watermark)
        others = [self.part_max[p] for p in live - {partition}]
        hold = min(others) if others else np.inf
        marks: npt.NDArray[np.float64] = np.maximum(self.watermark, np.minimum(hold, mine) - self.lateness)
        return marks

    # -- the watermark ---------------------------------------------------------------------------
    def advance(self) -> bool:
        """Recompute the watermark from the live partitions; whether it moved."""
        live = self.partitions - self.ended - self.idle
        if not live:
            return False  # all ended: the end of input decides what is left
        if len(live) == 1:
            (only,) = live
            top = self.part_max.get(only)
            return top is not None and self.move_to(top - self.lateness)
        if any(p not in self.part_max for p in live):
            self.holder = None
            return False  # a live partition that has sent nothing holds the clock
        self.holder = min(live, key=self.part_max.__getitem__)
        return self.move_to(self.part_max[self.holder] - self.lateness)

    def move_to(self, watermark: float) -> bool:
        """Raise the watermark to `watermark` (never lower it); whether it moved."""
        if watermark <= self.watermark:
            return False
        self.watermark = watermark
        return True

    def end(self, partition: str) -> bool:
        """A partition reached its end: it no longer holds the watermark back; whether it moved."""
        self.ended.add(partition)
        return self.advance()

    def end_of_input(self) -> bool:
        """Every partition ended: the watermark passes the window of the last event; whether it moved."""
        if self.max_seen is None:
            return False
        return self.move_to(end_of(window_of(self.max_seen, self.size), self.size))

    def source_state(self, partition: str, down: bool, now: float | None) -> None:
        """A live partition's broker became unreachable (`down`) or reachable again.

        While any partition is down the idle rule waits: its events are delayed,
        not absent.  Reconnecting counts as a sign of life, so idleness is
        measured afresh from then.
        """
        if down:
            self.down.add(partition)
            self.idle.discard(partition)
        elif partition in self.down:
            self.down.discard(partition)
            if now is not None:
                self.last_wall[partition] = now

    def tick(self, now: float) -> bool:
        """Live only: apply the idle rule at wall time `now`; whether the watermark moved.

        A partition silent for `idle_close_s` stops holding the watermark back;
        when every partition is silent that long, event time follows the wall
        clock from the last event on, so windows keep closing.
        """
        if self.started_wall is None:
            self.started_wall = now
        if self.down:
            return False  # silence because the broker is unreachable is not idleness
        live = self.partitions - self.ended
        self.idle = {p for p in live if now - self.last_wall.get(p, self.started_wall) >= self.idle_close_s}
        if not live:
            return False
        if live <= self.idle:
            if self.max_seen is None:
                return False
            last = max(self.last_wall.values(), default=self.started_wall)
            return self.move_to(self.max_seen - self.lateness + (now - last))
        return self.advance()


__all__ = ["STALE_FIRST_S", "EventClock", "Misfit", "end_of", "start_of", "window_of", "windows_of"]
