"""The stream-wide event-time clock, windows, horizon and verdicts (pure core).

`Engine.feed` takes decoded items in delivery order and returns what became
due: dead letters at once, and one `Report` (verdict plus statistics) per
window that the watermark closed.  The clock (docs/events.md, "Event time"):

* watermark = min over live partitions of (largest event time seen there)
  - allowed_lateness_s; a partition that ended stops holding it back;
* an event more than max_future_s ahead of the largest event time seen is a
  `future` dead letter and moves no clock (live runs, which pass the wall
  time, also hold events to max_future_s past it, so a first event with a
  broken clock cannot poison the stream);
* an event whose window already closed is a `late` dead letter;
* window [start, end) closes when the watermark reaches end; every window
  from the first to the last gets exactly one verdict, even an empty one.

Nothing here reads the wall clock, so verdicts are a function of the events:
a file, a Kafka topic and a replay of the same events judge alike.  The idle
rule of live Kafka is `tick`, driven from outside with a wall time.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.aggregate.partial import Partial
from pipeline.aggregate.stats import PHASES, ClosedWindow, LabelCaps, WindowStats
from pipeline.config import Config
from pipeline.gates import Context, median
from pipeline.judgement import Judgement
from pipeline.model import (
    DeadLetter,
    DeadLetterReason,
    Decision,
    DecodeError,
    Event,
    Verdict,
    format_time,
)

# Sticky keys tracked per variant across the horizon and per open window (about
# 100 bytes each, so ~20 MB for control and canary together); keys past it are counted as
# untracked and named in the sticky_flip reason.
STICKY_KEYS_MAX = 100_000
QUANTILES = (0.5, 0.95, 0.99)
INDEX_COMBOS_MAX = 50  # (variant, region, INDEX_HASH, metric, analyzer) series exported at most
STALE_FIRST_S = 30 * 86400.0  # see Engine._stale_before


class StickyTracker:
    """Which sticky keys each variant saw, exactly and within a bound.

    Open windows collect keys in sets; when a window closes its keys fold into
    `last` (key -> last closed window seen).  A key is in the horizon [lo, hi]
    of the window being judged when its last closed window is >= lo, which is
    exact and independent of delivery order.
    """

    def __init__(self, variants: tuple[str, str], cap: int = STICKY_KEYS_MAX) -> None:
        self.cap = cap
        self.last: dict[str, dict[str, int]] = {v: {} for v in variants}
        self.open: dict[int, dict[str, set[str]]] = {}
        self.untracked = 0

    def see(self, variant: str, key: str, wid: int) -> None:
        """Note that `key` was routed to `variant` in (open) window `wid`."""
        self.see_many(variant, [key], wid)

    def see_many(self, variant: str, keys: list[str], wid: int) -> None:
        """`see` for a batch of keys (set operations, no per-key Python call)."""
        if not keys:
            return
        window = self.open.get(wid)
        if window is None:
            window = self.open[wid] = {}
        seen = window.get(variant)
        if seen is None:
            seen = window[variant] = set()
        room = self.cap - len(seen)
        new = set(keys) - seen
        if len(new) <= room:
            seen |= new
        else:
            kept = sorted(new)[:room]  # deterministic choice of which keys stay tracked
            seen.update(kept)
            self.untracked += len(new) - len(kept)

    def close(self, wid: int) -> None:
        """Fold a closing window's keys into the horizon record."""
        for variant, keys in self.open.pop(wid, {}).items():
            last = self.last[variant]
            # past the bound, which keys stay tracked must not depend on set order
            for key in keys if len(last) + len(keys) <= self.cap else sorted(keys):
                if key in last or len(last) < self.cap:
                    last[key] = wid
                else:
                    self.untracked += 1

    def both(self, lo: int) -> list[str]:
        """Keys seen on both variants in closed windows >= lo."""
        a, b = self.last.values()
        if len(a) > len(b):
            a, b = b, a
        return sorted(k for k, w in a.items() if w >= lo and b.get(k, lo - 1) >= lo)

    def evict(self, lo: int) -> None:
        """Forget keys last seen before window `lo`."""
        for last in self.last.values():
            for k in [k for k, w in last.items() if w < lo]:
                del last[k]


@dataclass(frozen=True)
class Report:
    """What a window close publishes: the verdict and the statistics behind it."""

    verdict: Verdict
    window: ClosedWindow | None
    # (variant, region, "warm"|"cold", phase, quantile) -> ms, over the horizon
    quantiles: dict[tuple[str, str, str, str, float], float]
    # Per-horizon views for dashboards: family -> label tuple -> value (see _horizon_stats).
    horizon_stats: dict[str, dict[tuple[str, ...], float]]
    watermark: float
    totals: dict[str, int] = field(default_factory=dict)


Output = Report | DeadLetter


class Engine:
    """Owns the clock, open windows, the horizon and the stage's judgement (judgement.py)."""

    # When a list: every closed window with its sticky context, in order, for re-judging
    # the same aggregates under other thresholds (replay --thresholds).
    kept: list[tuple[int, ClosedWindow, Context]] | None = None
    # When a list: (window end, config) of every window judged since the caller last emptied
    # it, for the journal of what was emitted (pipeline/io/journal.py).
    judged: list[tuple[float, Config]] | None = None
    # Windows a previous run judged and emitted after this engine's snapshot: (window end,
    # config it was judged under), in order.  They are judged again under that config, so a
    # re-emitted verdict is the same whatever the resumed run's config says.
    replaying: list[tuple[float, Config]] | None = None

    def __init__(self, cfg: Config, partitions: Iterable[str] = ("0",)) -> None:
        self.cfg = cfg
        self.size = cfg.windows.size_s
        self.lateness = cfg.windows.allowed_lateness_s
        self.max_future = cfg.windows.max_future_s
        self.n = cfg.windows.horizon_windows
        self.stale_s = float(cfg.windows.horizon_s + cfg.windows.allowed_lateness_s)
        self.caps = LabelCaps.for_config(cfg)
        self.partitions = set(partitions)
        self.ended: set[str] = set()
        self.part_max: dict[str, float] = {}
        self.max_seen: float | None = None
        self.watermark = -math.inf
        self.next_close: int | None = None
        self.open: dict[int, WindowStats] = {}
        self.pending: dict[int, list[Event]] = {}  # accepted events not yet folded in
        self.arrived: list[Event] = []  # the same events in arrival order, for label admission
        self.ids: dict[int, set[str]] = {}
        self.history: deque[tuple[int, ClosedWindow]] = deque()
        self.horizon = WindowStats.new()
        self.sticky = StickyTracker((cfg.control, cfg.canary), cap=cfg.limits.max_sticky_keys)
        self.pending_dead: Counter[tuple[str, str]] = Counter()
        self.judgement = Judgement(cfg.stage)  # evidence, promotion clock and stop latch of the stage
        self.totals: Counter[str] = Counter()
        # Live idle rule (tick): wall time of each partition's last data, and who is idle.
        self.last_wall: dict[str, float] = {}
        self.idle: set[str] = set()
        self.started_wall: float | None = None
        self.holder: str | None = None  # the live partition whose progress sets the watermark
        self.down: set[str] = set()  # live partitions whose broker is unreachable: never idle

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Engines pickled before the stage's judgement had its own object kept only the promotion clock.
        if "judgement" not in state:
            judgement = Judgement(state["cfg"].stage)
            judgement.clean_since = state.pop("clean_since", None)
            state["judgement"] = judgement
        self.__dict__.update(state)

    # -- input -----------------------------------------------------------------
    def feed(self, items: Iterable[Event | DecodeError], partition: str = "0",
             locate: Callable[[int], str] | None = None, now: float | None = None) -> list[Output]:
        """Process decoded items in delivery order; return dead letters and closed windows.

        `locate(i)` names where the i-th item came from (file:line, topic/partition@offset)
        for the dead-letter output.
        """
        out: list[Output] = []
        size = self.size
        lateness = self.lateness
        max_future = self.max_future
        dedupe_cap = self.cfg.limits.dedupe_max_ids
        pending = self.pending
        part_max = self.part_max
        ids_of = self.ids
        if partition not in self.partitions:
            self.partitions.add(partition)
        if now is not None:  # live: remember when each partition last delivered
            self.last_wall[partition] = now
            if partition in self.idle:
                self.idle.discard(partition)
                self.holder = None  # it may be the one furthest behind now
        alone = self.partitions - self.ended - self.idle == {partition}
        arrived = self.arrived
        events_in = 0
        for i, item in enumerate(items):
            if type(item) is not Event:
                bad: DecodeError = item  # type: ignore[assignment]  # narrowed by the exact type test
                out.append(self._dead(bad.raw, bad.reason, bad.detail, bad.variant,
                                      source=locate(i) if locate else None, partition=partition, ts=bad.ts))
                continue
            events_in += 1
            ts = item.ts
            top = self.max_seen
            if top is not None and ts > top + max_future:
                out.append(self._dead(
                    item.raw, DeadLetterReason.FUTURE,
                    f"ts {ts:.3f} is more than {max_future} s ahead of the largest event time "
                    "seen", item.variant, source=locate(i) if locate else None,
                    partition=partition, ts=ts))
                continue
            if now is not None and ts > now + max_future:
                # live: a clock far ahead of this machine's cannot be real, even as the first event
                out.append(self._dead(
                    item.raw, DeadLetterReason.FUTURE,
                    f"ts {ts:.3f} is more than {max_future} s ahead of the wall clock ({now:.3f})",
                    item.variant, source=locate(i) if locate else None, partition=partition, ts=ts))
                continue
            wid = int(ts // size)
            if self.watermark == -math.inf and top is not None and ts < self._stale_before(partition):
                # Before every partition has spoken the watermark is unknown; an event this far
                # behind would open windows by the million and close at once: late already.
                out.append(self._dead(
                    item.raw, DeadLetterReason.LATE,
                    f"ts {ts:.3f} is too far behind the event times seen to judge "
                    "(watermark not yet known)",
                    item.variant, source=locate(i) if locate else None, partition=partition, ts=ts))
                continue
            if (wid + 1) * size <= self.watermark:
                out.append(self._dead(
                    item.raw, DeadLetterReason.LATE,
                    f"window ending {(wid + 1) * size} already closed",
                    item.variant, source=locate(i) if locate else None, partition=partition, ts=ts))
                continue
            batch = pending.get(wid)
            if batch is None:
                batch = self._open(wid)
            rid = item.request_id
            if rid is not None:
                ids = ids_of[wid]
                if rid in ids:
                    self.open[wid].c["duplicates"][self.caps.admit("variant", item.variant)] += 1
                    self.totals["duplicates"] += 1
                    continue
                if len(ids) < dedupe_cap:
                    ids.add(rid)
                else:
                    self.totals["dedupe_overflow"] += 1
            batch.append(item)
            arrived.append(item)
            if top is None or ts > top:
                self.max_seen = ts
            prev = part_max.get(partition)
            if prev is None or ts > prev:
                part_max[partition] = ts
                if not alone:
                    # Only the partition furthest behind can move the minimum.
                    if self.holder is None or partition == self.holder:
                        out.extend(self._advance())
                elif ts - lateness > self.watermark:
                    # Inline of _advance for the common single-partition case.
                    self.watermark = ts - lateness
                    if (self.next_close + 1) * size <= self.watermark:  # type: ignore[operator]
                        out.extend(self._close_due())
        self.totals["events_in"] += events_in
        self._fold_pending()
        return out

    def feed_partial(self, part: Partial, partition: str, items: Callable[[], list[Event | DecodeError]],
                     locate: Callable[[int], str] | None = None, now: float | None = None, *,
                     fits: bool = False) -> list[Output]:
        """Process a chunk summarised where it was decoded (see partial.py).

        The summary is merged when no event in it is late, future or a
        duplicate under this clock, as `feed` would have found event by event;
        otherwise the chunk's events (`items()`) go through `feed`.  Either way
        the verdicts are those of `feed` over the same events.  `fits`: the
        caller has just checked `_fits` under this clock (no second check).
        """
        if now is not None:
            self.last_wall[partition] = now
            if partition in self.idle:
                self.idle.discard(partition)
                self.holder = None
        self.partitions.add(partition)
        ahead_of_clock = now is not None and part.ts.max() > now + self.max_future
        if not (fits or self._fits(part, partition)) or ahead_of_clock:
            self.totals["chunks_replayed"] += 1
            return self.feed(items(), partition, locate, now)
        caps = self.caps
        for (wid, variant), n in Counter(part.repeats).items():  # first appearances keep their order
            self._window(wid).c["duplicates"][caps.admit("variant", variant)] += n
            self.totals["duplicates"] += n
        caps.admit_values(part.labels)
        for w in part.windows:
            self._window(w.wid).merge_relabeled(w.stats, caps)
            if w.request_ids:
                self.ids[w.wid].update(w.request_ids)
            for variant, keys in w.sticky.items():
                self.sticky.see_many(variant, keys, w.wid)
        ts = part.ts if part.repeated is None else part.ts[~part.repeated]
        top = float(ts.max())
        if self.max_seen is None or top > self.max_seen:
            self.max_seen = top
        out: list[Output] = []
        prev = self.part_max.get(partition)
        if prev is None or top > prev:
            self.part_max[partition] = top
            out = self._advance()
        self.totals["events_in"] += part.events
        return out

    def _fits(self, part: Partial, partition: str) -> bool:
        """Whether `feed` would accept every event of the chunk (none late, future or repeated)."""
        ts = part.ts
        size = self.size
        # largest time seen in the chunk after each event (repeats move no clock)
        before = np.maximum.accumulate(ts if part.repeated is None else np.where(part.repeated, -np.inf, ts))
        # future: more than max_future_s ahead of the largest time seen before it
        top = self.max_seen
        seen = np.empty_like(ts)
        seen[0] = np.inf if top is None else top
        if len(ts) > 1:
            seen[1:] = before[:-1] if top is None else np.maximum(before[:-1], top)
        if bool((ts > seen + self.max_future).any()):
            return False
        if self.watermark == -math.inf:
            mine_top = self.part_max.get(partition)
            highest = float(ts.max()) if mine_top is None else max(float(ts.max()), mine_top)
            if float(ts.min()) < highest - self.stale_s or (top is not None and mine_top is None
                                                            and float(ts.min()) < top - STALE_FIRST_S):
                return False  # maybe stale before the clock started: `feed` decides event by event
        # late: its window closed under the watermark as it stood when the event arrived
        live = self.partitions - self.ended - self.idle
        others = live - {partition}
        if not others:
            hold = np.inf
        elif any(p not in self.part_max for p in others):
            hold = -np.inf  # a live partition that has sent nothing holds the clock
        else:
            hold = min(self.part_max[p] for p in others)
        mine = np.maximum(before, self.part_max.get(partition, -np.inf))
        mark = np.maximum(self.watermark, np.minimum(hold, mine) - self.lateness)
        marks = np.empty_like(ts)
        marks[0] = self.watermark
        marks[1:] = mark[:-1]
        windows = np.floor_divide(ts, size) if part.wids is None else part.wids
        if bool(((windows + 1) * size <= marks).any()):
            return False
        cap = self.cfg.limits.dedupe_max_ids
        for w in part.windows:
            if w.request_ids:
                ids = self.ids.get(w.wid)
                if ids is not None and (len(ids) + len(w.request_ids) > cap
                                        or not ids.isdisjoint(w.request_ids)):
                    return False
                if ids is None and len(w.request_ids) > cap:
                    return False
        return True

    def _stale_before(self, partition: str) -> float:
        """Before the watermark is known: event times below this are late already.

        Measured against the event's own partition (horizon + lateness behind its
        latest), so it does not depend on how partitions interleave; a partition's
        first event, which has nothing of its own to compare with, only against
        STALE_FIRST_S behind the largest time seen (a backfill's partitions may
        start far apart, a 1970 timestamp may not).
        """
        mine = self.part_max.get(partition)
        if mine is not None:
            return mine - self.stale_s
        return (self.max_seen if self.max_seen is not None else math.inf) - STALE_FIRST_S

    def _window(self, wid: int) -> WindowStats:
        """Window `wid`, opened if need be (it must not have closed)."""
        window = self.open.get(wid)
        if window is None:
            window = self.open[wid] = WindowStats.new()
            self.ids[wid] = set()
            if self.pending_dead:
                window.c["dead"].update(self.pending_dead)
                self.pending_dead.clear()
        if self.next_close is None or wid < self.next_close:
            self.next_close = wid
        return window

    def _open(self, wid: int) -> list[Event]:
        """Start buffering events of window `wid` (folded in once per batch)."""
        self._window(wid)
        batch: list[Event] = []
        self.pending[wid] = batch
        return batch

    def _fold_pending(self, wid: int | None = None) -> None:
        """Aggregate buffered events into their windows (all, or one about to close).

        Label values are admitted to the caps first, over everything that has
        arrived, in arrival order, so which values keep their own label does
        not depend on batch sizes or on which window folds first.
        """
        if self.arrived:
            self.caps.admit_all(self.arrived)
            self.arrived.clear()
        wids = list(self.pending) if wid is None else [wid] if wid in self.pending else []
        for w in wids:
            batch = self.pending.pop(w)
            self.open[w].add_many(batch, self.caps)
            for variant in self.sticky.last:
                self.sticky.see_many(variant, [e.sticky for e in batch if e.variant == variant
                                               and not e.x_warm and e.probe_question is None], w)

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

    def end_partition(self, partition: str) -> list[Output]:
        """A partition reached its end: it no longer holds the watermark back."""
        self.ended.add(partition)
        return self._advance()

    def tick(self, now: float) -> list[Output]:
        """Live Kafka only: apply the idle rule at wall time `now` (seconds since the epoch).

        A partition silent for `idle_close_s` stops holding the watermark back;
        when every partition is silent that long, event time follows the wall
        clock from the last event on, so windows keep closing.
        """
        if self.started_wall is None:
            self.started_wall = now
        if self.down:
            return []  # silence because the broker is unreachable is not idleness
        idle_s = self.cfg.windows.idle_close_s
        live = self.partitions - self.ended
        self.idle = {p for p in live if now - self.last_wall.get(p, self.started_wall) >= idle_s}
        if not live:
            return []
        if live <= self.idle:
            if self.max_seen is None:
                return []
            last = max(self.last_wall.values(), default=self.started_wall)
            return self._close_through(self.max_seen - self.lateness + (now - last))
        return self._advance()

    def close(self) -> list[Output]:
        """End of input: close every open window, through the last event's."""
        if self.max_seen is None or self.next_close is None:
            return []
        last = int(self.max_seen // self.size)
        return self._close_through((last + 1) * self.size)

    def closed_through(self) -> float | None:
        """The end of the last window closed (judged), or None before the first."""
        return None if self.next_close is None else float(self.next_close * self.size)

    def reconfigure(self, cfg: Config, partitions: Iterable[str] = (),
                    emitted: Iterable[tuple[float, Config]] = ()) -> list[str]:
        """Adopt the config of a run resumed from this engine's snapshot; what changed, in words.

        The stage, thresholds, promotion and variant specs may change between
        runs (a stage change restarts the promotion clock, as on SIGHUP); the
        rollout's names, windows and limits shape the state itself and may not.
        `emitted` is what earlier runs judged, window by window (end, config):
        the windows among them that this snapshot has not seen close were
        already published, so they are judged again under their own config and
        the new one applies from the first window not yet emitted.
        """
        done = self.closed_through()
        self.replaying = [(end, c) for end, c in emitted if done is None or end > done] or None
        old = self.replaying[-1][1] if self.replaying else self.cfg
        fixed = [key for key, a, b in (
            ("rollout.name", old.name, cfg.name), ("rollout.control", old.control, cfg.control),
            ("rollout.canary", old.canary, cfg.canary), ("windows", old.windows, cfg.windows),
            ("limits", old.limits, cfg.limits)) if a != b]
        if fixed:
            raise ValueError(f"the snapshot was taken under other {', '.join(fixed)}; "
                             "they cannot change on resume (use a new recovery directory)")
        notes = []
        since = (f" from the window ending {format_time(self.replaying[-1][0] + self.size)}"
                 if self.replaying else "")
        if cfg.stage != old.stage:
            notes.append(f"stage {old.stage} -> {cfg.stage} (promotion clock restarts; "
                         f"evidence and any latched stop start afresh){since}")
        changed = [k for k in ("thresholds", "variants", "sustain_s")
                   if getattr(cfg, k) != getattr(old, k)]
        if changed:
            notes.append(f"new {', '.join(changed)} apply" + (since or " from the next verdict"))
        if self.replaying:
            first, last = self.replaying[0][0], self.replaying[-1][0]
            notes.append(f"{len(self.replaying)} verdicts emitted after the snapshot (windows ending "
                         f"{format_time(first)}..{format_time(last)}) are made again as first emitted")
        self.cfg = cfg
        self.partitions.update(partitions)  # a partition added to the topic since holds the clock too
        self.down.clear()  # what the source reports after the restart counts
        return notes

    def set_stage(self, stage: str) -> None:
        """Change the rollout stage; the next verdict starts the stage's judgement afresh."""
        if stage != self.cfg.stage:
            self.cfg = self.cfg.with_stage(stage)

    # -- clock -----------------------------------------------------------------
    def _advance(self) -> list[Output]:
        live = self.partitions - self.ended - self.idle
        if not live:
            return []  # all ended: close() decides what is left
        if len(live) == 1:
            (only,) = live
            top = self.part_max.get(only)
            if top is None:
                return []
            return self._close_through(top - self.lateness)
        if any(p not in self.part_max for p in live):
            self.holder = None
            return []  # a live partition that has sent nothing holds the clock
        self.holder = min(live, key=self.part_max.__getitem__)
        return self._close_through(self.part_max[self.holder] - self.lateness)

    def _close_through(self, wm: float) -> list[Output]:
        if wm <= self.watermark:
            return []
        self.watermark = wm
        return self._close_due()

    def _close_due(self) -> list[Output]:
        """Close every window whose end the watermark has reached."""
        out: list[Output] = []
        while self.next_close is not None and (self.next_close + 1) * self.size <= self.watermark:
            out.append(self._close(self.next_close))
            self.next_close += 1
        return out

    def _dead(self, raw: bytes, reason: DeadLetterReason, detail: str, variant: str | None, *,
              source: str | None, partition: str, ts: float | None = None) -> DeadLetter:
        """Count a dead letter in a window and return it for the dead-letter output.

        It counts in the window of its own event time when that can be read and
        is not past its partition's latest event, else (late, or no readable
        time) in the window its partition has reached.  Both depend on that
        partition's messages alone, not on how partitions interleave, so a run
        resumed from a snapshot attributes every dead letter as before.
        """
        label = self.caps.admit("variant", variant) if variant else ""
        key = (label or "", str(reason))
        self.totals[f"dead_{reason}"] += 1
        anchor = self.part_max.get(partition, self.max_seen)
        if anchor is None:
            self.pending_dead[key] += 1
            return DeadLetter(raw, reason, detail, variant, source)
        wid = int(anchor // self.size)  # where its partition has got to: open, whatever the others did
        if ts is not None and reason is not DeadLetterReason.LATE:
            # its own window, but never one past its partition's latest (that one may never
            # close); a late one's own window has closed: it counts where its partition is
            wid = min(int(ts // self.size), wid)
        if self.next_close is not None:
            wid = max(wid, self.next_close)  # never a closed window, nor one before the first event's
        self._window(wid).c["dead"][key] += 1
        return DeadLetter(raw, reason, detail, variant, source)

    def _close(self, wid: int) -> Report:
        self._fold_pending(wid)
        window = self.open.pop(wid, None)
        self.ids.pop(wid, None)
        closed = (window or WindowStats.new()).close()
        self.horizon.merge(closed)
        self.history.append((wid, closed))
        if len(self.history) > self.n:
            _, expired = self.history.popleft()
            self.horizon.subtract(expired)
        lo = wid - self.n + 1
        self.sticky.close(wid)
        self.sticky.evict(lo)
        both = self.sticky.both(lo)
        ctx = Context(tuple(both[:10]), len(both), self.sticky.untracked)
        if self.kept is not None:
            self.kept.append((wid, closed, ctx))
        cfg = self._config_of(wid)
        verdict = self.judgement.verdict(cfg, wid, closed, self.horizon, ctx)
        if self.judged is not None:
            self.judged.append((verdict.window_end, cfg))
        decision = verdict.decision
        self.totals["verdicts"] += 1
        self.totals[f"decision_{decision}"] += 1
        return Report(
            verdict=verdict,
            window=closed,
            quantiles=self._quantiles(),
            horizon_stats=self._horizon_stats(),
            watermark=self.watermark,
            totals={**self.totals, **{f"labels_{k}": len(v) for k, v in self.caps.kinds.items()},
                    **{f"overflow_{k}": 1 for k in self.caps.folded}},
        )

    def _config_of(self, wid: int) -> Config:
        """The config window `wid` is judged under: its first emission's when it is re-made."""
        if self.replaying:
            end = float((wid + 1) * self.size)
            while self.replaying and self.replaying[0][0] < end:
                self.replaying.pop(0)
            if self.replaying and self.replaying[0][0] == end:
                cfg = self.replaying.pop(0)[1]
                if not self.replaying:
                    self.replaying = None
                return cfg
        return self.cfg

    def _horizon_stats(self) -> dict[str, dict[tuple[str, ...], float]]:
        """RAG-quality medians, index and cache observations over the horizon, for dashboards.

        Label values were capped on the way in; index combinations are also
        limited to the INDEX_COMBOS_MAX most seen so their series stay few.
        """
        c = self.horizon.c
        medians: dict[tuple[str, ...], float] = {}
        by_variant: dict[str, Counter[float]] = {}
        for (variant, value), n in c["delta_s"].items():
            by_variant.setdefault(variant, Counter())[value] += n
        for variant, values in by_variant.items():
            medians[(variant, "delta_s", "")] = median(values)
        by_topic: dict[tuple[str, str], Counter[float]] = {}
        for (variant, topic, value), n in c["coverage"].items():
            by_topic.setdefault((variant, topic), Counter())[value] += n
        for (variant, topic), values in by_topic.items():
            medians[(variant, "coverage", topic)] = median(values)
        combos = sorted(c["index_obs"].items(), key=lambda kv: -kv[1])[:INDEX_COMBOS_MAX]
        index = {tuple(str(x) for x in key): float(n) for key, n in combos}
        prefixes: dict[tuple[str, ...], float] = {(str(v), str(p)): float(n)
                                                  for (v, p), n in c["prefixes"].items()}
        hits: dict[tuple[str, ...], float] = {(str(v),): c["cache"].get((v, "hit"), 0) / n
                                              for (v, kind), n in c["cache"].items() if kind == "n" and n}
        return {"probe_median": medians, "index": index, "prefix": prefixes, "cache_hit": hits}

    def _quantiles(self) -> dict[tuple[str, str, str, str, float], float]:
        out: dict[tuple[str, str, str, str, float], float] = {}
        for (variant, region, cold), sketches in self.horizon.latency.items():
            for phase, sketch in zip(PHASES, sketches, strict=True):
                for q, value in zip(QUANTILES, sketch.quantiles(QUANTILES), strict=True):
                    if value is not None:
                        out[(variant, region, "cold" if cold else "warm", phase, q)] = value
        return out


__all__ = ["Decision", "Engine", "Output", "Report", "StickyTracker"]
