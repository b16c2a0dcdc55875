"""Orchestration of the pure core: from decoded items to dead letters and verdicts.

`Engine.feed` takes decoded items in delivery order and returns what became
due: dead letters at once, and one `Report` (verdict plus statistics) per
window that the watermark closed.  The rules it applies each have one home:

* the event clock (clock.py): which window an event goes in, which events are
  future, stale or late, the watermark over partitions and the idle rule;
* request-id de-duplication (dedupe.py);
* what each statistic counts (population.py, aggregate/stats.py), sticky keys
  over the horizon (aggregate/sticky.py);
* the stage's evidence, promotion clock and stop latch (judgement.py).

Window [start, end) closes when the watermark reaches end; every window from
the first to the last gets exactly one verdict, even an empty one.  Nothing
here reads the wall clock, so verdicts are a function of the events: a file,
a Kafka topic and a replay of the same events judge alike.  The idle rule of
live Kafka is `tick`, driven from outside with a wall time.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from pipeline.aggregate.partial import Partial
from pipeline.aggregate.stats import PHASES, ClosedWindow, LabelCaps, WindowStats
from pipeline.aggregate.sticky import STICKY_KEYS_MAX, StickyTracker
from pipeline.clock import EventClock, Misfit, end_of, start_of, window_of
from pipeline.config import Config
from pipeline.dedupe import Admit, SeenIds
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
from pipeline.population import sticky_keys, users_of

QUANTILES = (0.5, 0.95, 0.99)
INDEX_COMBOS_MAX = 50  # (variant, region, INDEX_HASH, metric, analyzer) series exported at most


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
    """Holds the event clock, open windows, request ids, horizon and judgement; turns events into verdicts."""

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
        self.n = cfg.windows.horizon_windows
        self.caps = LabelCaps.for_config(cfg)
        self.clock = EventClock(cfg.windows, partitions)
        self.seen_ids = SeenIds(cfg.limits.dedupe_max_ids)
        self.next_close: int | None = None
        self.open: dict[int, WindowStats] = {}
        self.pending: dict[int, list[Event]] = {}  # accepted events not yet folded in
        self.arrived: list[Event] = []  # the same events in arrival order, for label admission
        self.history: deque[tuple[int, ClosedWindow]] = deque()
        self.horizon = WindowStats.new()
        self.sticky = StickyTracker((cfg.control, cfg.canary), cap=cfg.limits.max_sticky_keys)
        self.pending_dead: Counter[tuple[str, str]] = Counter()
        self.judgement = Judgement(cfg.stage)  # evidence, promotion clock and stop latch of the stage
        self.totals: Counter[str] = Counter()

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Engines pickled before the stage's judgement had its own object kept only the promotion clock.
        if "judgement" not in state:
            judgement = Judgement(state["cfg"].stage)
            judgement.clean_since = state.pop("clean_since", None)
            state["judgement"] = judgement
        # Engines pickled before the clock and the request ids had their own objects kept them flat.
        if "clock" not in state:
            clock = EventClock(state["cfg"].windows)
            for key in ("partitions", "ended", "part_max", "max_seen", "watermark", "last_wall", "idle",
                        "started_wall", "holder", "down"):
                setattr(clock, key, state.pop(key))
            for key in ("size", "lateness", "max_future", "stale_s"):
                state.pop(key)
            state["clock"] = clock
            state["seen_ids"] = SeenIds.restore(state["cfg"].limits.dedupe_max_ids, state.pop("ids"))
        self.__dict__.update(state)

    # -- what callers read -------------------------------------------------------------------------
    @property
    def window_size(self) -> float:
        """Window length in seconds (windows.size_s)."""
        return self.clock.size

    @property
    def watermark(self) -> float:
        """The event clock's watermark (-inf until every live partition has spoken)."""
        return self.clock.watermark

    @property
    def max_seen(self) -> float | None:
        """The largest event time accepted so far."""
        return self.clock.max_seen

    def is_open(self, wid: int) -> bool:
        """Whether window `wid` has opened and not yet closed."""
        return wid in self.open

    # -- input -----------------------------------------------------------------
    def feed(self, items: Iterable[Event | DecodeError], partition: str = "0",
             locate: Callable[[int], str] | None = None, now: float | None = None) -> list[Output]:
        """Process decoded items in delivery order; return dead letters and closed windows.

        `locate(i)` names where the i-th item came from (file:line, topic/partition@offset)
        for the dead-letter output.
        """
        out: list[Output] = []
        clock = self.clock
        clock.heard(partition, now)
        self.seen_ids.settle()  # ids merged by hash: `admit` reads their text
        alone = clock.alone(partition)
        place = clock.place
        see = clock.see
        admit = self.seen_ids.admit
        new = Admit.NEW
        pending = self.pending
        arrived = self.arrived
        events_in = 0
        closes_at = self._closes_at()
        for i, item in enumerate(items):
            if type(item) is not Event:
                bad: DecodeError = item  # type: ignore[assignment]  # narrowed by the exact type test
                out.append(self._dead(bad.raw, bad.reason, bad.detail, bad.variant,
                                      source=locate(i) if locate else None, partition=partition, ts=bad.ts))
                closes_at = self._closes_at()  # the first window may just have opened
                continue
            events_in += 1
            ts = item.ts
            wid = place(ts, partition, now)
            if type(wid) is not int:
                misfit: Misfit = wid  # type: ignore[assignment]  # narrowed by the exact type test
                out.append(self._dead(item.raw, misfit.reason, clock.describe(misfit, ts, now), item.variant,
                                      source=locate(i) if locate else None, partition=partition, ts=ts))
                closes_at = self._closes_at()
                continue
            batch = pending.get(wid)
            if batch is None:
                batch = self._open(wid)
                closes_at = self._closes_at()
            rid = item.request_id
            if rid is not None:
                admitted = admit(wid, rid)
                if admitted is not new:
                    if admitted is Admit.DUPLICATE:
                        self.open[wid].c["duplicates"][self.caps.admit("variant", item.variant)] += 1
                        self.totals["duplicates"] += 1
                        continue
                    self.totals["dedupe_overflow"] += 1
            batch.append(item)
            arrived.append(item)
            # the watermark moves with most events; windows close once a minute or so
            if see(ts, partition, alone) and clock.watermark >= closes_at:
                out.extend(self._close_due())
                closes_at = self._closes_at()
        self.totals["events_in"] += events_in
        self._fold_pending()
        return out

    def feed_partial(self, part: Partial, partition: str, items: Callable[[], list[Event | DecodeError]],
                     locate: Callable[[int], str] | None = None, now: float | None = None, *,
                     fits: bool = False) -> list[Output]:
        """Process a batch summarised where it was decoded (see partial.py).

        The summary is merged when no event in it is late, future or a
        duplicate under this clock, as `feed` would have found event by event;
        otherwise the batch's events (`items()`) go through `feed`.  Either way
        the verdicts are those of `feed` over the same events.  `fits`: the
        caller has just checked `fits` under this clock (no second check).
        """
        self.clock.heard(partition, now)
        if not (fits or self.fits(part, partition, now)):
            self.totals["chunks_replayed"] += 1
            return self.feed(items(), partition, locate, now)
        caps = self.caps
        for (wid, variant), n in Counter(part.repeats).items():  # first appearances keep their order
            self._window(wid).c["duplicates"][caps.admit("variant", variant)] += n
            self.totals["duplicates"] += n
        caps.admit_values(part.labels)
        for w in part.windows:
            self._window(w.wid).merge_relabeled(w.stats, caps)
            for variant, keys in w.sticky.items():
                self.sticky.see_many(variant, keys, w.wid)
        ids = part.ids
        for wid, hashes in ids.hashes.items():
            self.seen_ids.remember(wid, hashes, ids.text[wid])
        ts = part.ts if part.repeated is None else part.ts[~part.repeated]
        out = self._close_due() if self.clock.see_top(float(ts.max()), partition) else []
        self.totals["events_in"] += part.events
        return out

    def fits(self, part: Partial, partition: str, now: float | None = None) -> bool:
        """Whether `feed` would accept every event of the batch as it is (none late, future or repeated).

        Call `heard` for the batch's partition first (`feed_partial` does).
        """
        seen_ids = self.seen_ids
        return (self.clock.fits(part.ts, partition, now=now, repeated=part.repeated, wids=part.wids)
                and all(seen_ids.fits(wid, hashes) for wid, hashes in part.ids.hashes.items()))

    def heard(self, partition: str, now: float | None = None) -> None:
        """A partition delivered data (at wall time `now`, live runs): before `fits`, as `feed` does."""
        self.clock.heard(partition, now)

    def _window(self, wid: int) -> WindowStats:
        """Window `wid`, opened if need be (it must not have closed)."""
        window = self.open.get(wid)
        if window is None:
            window = self.open[wid] = WindowStats.new()
            self.seen_ids.open(wid)
            if self.pending_dead:
                window.c["dead"].update(self.pending_dead)
                self.pending_dead.clear()
        if self.next_close is None or wid < self.next_close:
            self.next_close = wid
        return window

    def _closes_at(self) -> float:
        """The watermark at which the next window to close does (inf before the first opens)."""
        return math.inf if self.next_close is None else end_of(self.next_close, self.window_size)

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
        variants = tuple(self.sticky.last)
        for w in wids:
            batch = self.pending.pop(w)
            self.open[w].add_many(batch, self.caps)
            for variant, keys in sticky_keys(users_of(batch), variants).items():
                self.sticky.see_many(variant, keys, w)

    def source_state(self, partition: str, down: bool, now: float | None) -> None:
        """A live partition's broker became unreachable (`down`) or reachable again (see EventClock)."""
        self.clock.source_state(partition, down, now)

    def end_partition(self, partition: str) -> list[Output]:
        """A partition reached its end: it no longer holds the watermark back."""
        return self._close_due() if self.clock.end(partition) else []

    def tick(self, now: float) -> list[Output]:
        """Live Kafka only: apply the idle rule at wall time `now` (seconds since the epoch)."""
        return self._close_due() if self.clock.tick(now) else []

    def close(self) -> list[Output]:
        """End of input: close every open window, through the last event's."""
        if self.next_close is None or not self.clock.end_of_input():
            return []
        return self._close_due()

    def closed_through(self) -> float | None:
        """The end of the last window closed (judged), or None before the first."""
        return None if self.next_close is None else start_of(self.next_close, self.window_size)

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
        fixed = fixed_changes(old, cfg)
        if fixed:
            raise ValueError(f"the snapshot was taken under other {', '.join(fixed)}; "
                             "they cannot change on resume (use a new recovery directory)")
        since = (f" from the window ending {format_time(self.replaying[-1][0] + self.window_size)}"
                 if self.replaying else "")
        notes = _live_changes(old, cfg, since)
        if self.replaying:
            first, last = self.replaying[0][0], self.replaying[-1][0]
            notes.append(f"{len(self.replaying)} verdicts emitted after the snapshot (windows ending "
                         f"{format_time(first)}..{format_time(last)}) are made again as first emitted")
        self.cfg = cfg
        self.clock.resumed(partitions)
        return notes

    def adopt(self, cfg: Config) -> list[str]:
        """Take a changed config while running (fleet mode: its file changed); what changed, in words.

        Only what `reconfigure` lets change may (`fixed_changes(self.cfg, cfg)` must be empty).
        """
        fixed = fixed_changes(self.cfg, cfg)
        if fixed:
            raise ValueError(f"{', '.join(fixed)} cannot change while the rollout is judged")
        notes = _live_changes(self.cfg, cfg, "")
        self.cfg = cfg
        return notes

    def set_stage(self, stage: str) -> None:
        """Change the rollout stage; the next verdict starts the stage's judgement afresh."""
        if stage != self.cfg.stage:
            self.cfg = self.cfg.with_stage(stage)

    # -- closing windows ------------------------------------------------------------------------
    def _close_due(self) -> list[Output]:
        """Close every window whose end the watermark has reached."""
        out: list[Output] = []
        size, watermark = self.window_size, self.clock.watermark
        while self.next_close is not None and end_of(self.next_close, size) <= watermark:
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
        anchor = self.clock.reached(partition)
        if anchor is None:
            self.pending_dead[key] += 1
            return DeadLetter(raw, reason, detail, variant, source)
        # where its partition has got to: open, whatever the others did
        wid = window_of(anchor, self.window_size)
        if ts is not None and reason is not DeadLetterReason.LATE:
            # its own window, but never one past its partition's latest (that one may never
            # close); a late one's own window has closed: it counts where its partition is
            wid = min(window_of(ts, self.window_size), wid)
        if self.next_close is not None:
            wid = max(wid, self.next_close)  # never a closed window, nor one before the first event's
        self._window(wid).c["dead"][key] += 1
        return DeadLetter(raw, reason, detail, variant, source)

    def _close(self, wid: int) -> Report:
        self._fold_pending(wid)
        window = self.open.pop(wid, None)
        self.seen_ids.close(wid)
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
            watermark=self.clock.watermark,
            totals={**self.totals, **{f"labels_{k}": len(v) for k, v in self.caps.kinds.items()},
                    **{f"overflow_{k}": 1 for k in self.caps.folded}},
        )

    def _config_of(self, wid: int) -> Config:
        """The config window `wid` is judged under: its first emission's when it is re-made."""
        if self.replaying:
            end = end_of(wid, self.window_size)
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



def fixed_changes(old: Config, new: Config) -> list[str]:
    """The settings that shape an engine's state and differ between two configs (they cannot change).

    `limits.max_rollouts` bounds a fleet, not an engine's state: it may change.
    """
    return [key for key, a, b in (
        ("rollout.name", old.name, new.name), ("rollout.control", old.control, new.control),
        ("rollout.canary", old.canary, new.canary), ("windows", old.windows, new.windows),
        ("limits", dataclasses.replace(old.limits, max_rollouts=0),
         dataclasses.replace(new.limits, max_rollouts=0))) if a != b]


def _live_changes(old: Config, new: Config, since: str) -> list[str]:
    """What a change of the settings that may change says, in words."""
    notes = []
    if new.stage != old.stage:
        notes.append(f"stage {old.stage} -> {new.stage} (promotion clock restarts; "
                     f"evidence and any latched stop start afresh){since}")
    changed = [k for k in ("thresholds", "variants", "sustain_s") if getattr(new, k) != getattr(old, k)]
    if changed:
        notes.append(f"new {', '.join(changed)} apply" + (since or " from the next verdict"))
    return notes

__all__ = ["STICKY_KEYS_MAX", "Decision", "Engine", "Output", "Report", "StickyTracker", "fixed_changes"]
