"""Replay and backtest: judge archived telemetry with the stream's own gates.

An archive (JSONL, JSONL.gz, Parquet; see archive.py) is read in large
batches of decoded events, a polars frame each.  Per batch, polars builds the
same per-window aggregates the stream builds per micro-batch (`Partial`:
counters keyed by raw label values, latency sketches, request ids and sticky
keys per window) with a handful of group-bys, and the stream's `Engine` merges
them under its event-time clock, label caps and horizon and judges every
window with `gates.judge`.  So a replay says what the stream would have said:

* a batch is merged whole only when the engine finds no event in it late,
  future or a duplicate under its clock (`Engine.fits`, as for the stream's
  partial aggregates); otherwise it is split in halves down to small pieces,
  and a small piece goes through `Engine.feed` event by event;
* dead letters are fed in their place in the stream, between the segments of
  valid events around them, so each counts in the window the stream counts it.

`rejudge` re-runs the gates and decisions over the kept closed windows under
other thresholds (what-if), without reading the archive again.
"""


from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

import numpy as np
import numpy.typing as npt
import orjson
import polars as pl

from pipeline import frame as frames
from pipeline.aggregate.stats import (
    ClosedWindow,
)
from pipeline.clock import windows_of
from pipeline.config import Config
from pipeline.engine import Engine, Output, Report
from pipeline.gates import Context
from pipeline.model import DecodeError, Event, Verdict, format_time
from pipeline.replay.summarize import RequestIds, summarize_frame

PARTITION = "0"  # an archive is one stream, as a file source is
SMALL = 512  # segments shorter than this are fed event by event (a summary costs more)
SPLIT_MIN = 4096  # a misfitting batch is halved down to this size, then fed event by event


class Replayer:
    """Feeds decoded batches to an `Engine` in stream order; returns what closes.

    Request ids of open windows are kept here as hashes (to check a batch for
    duplicates of earlier ones) and as text, handed to the engine only when a
    piece has to go through `Engine.feed`, which checks them one by one.
    """

    def __init__(self, cfg: Config, keep: bool = True) -> None:
        self.cfg = cfg
        self.engine = Engine(cfg, (PARTITION,))
        if keep:
            self.engine.kept = []
        self.variants = (cfg.control, cfg.canary)
        self.hashes: dict[int, list[npt.NDArray[np.uint64]]] = {}  # open window -> request id hashes
        self.pending: dict[int, list[RequestIds]] = {}  # ... -> request ids the engine has not got
        self.summarized = 0  # events merged as batch summaries
        self.one_by_one = 0  # events fed one by one (small pieces, or a late/future/duplicate inside)

    def feed(self, events: pl.DataFrame, dead: Sequence[tuple[int, DecodeError]],
             name: str, raws: Callable[[Sequence[int]], list[bytes]]) -> list[Output]:
        """One batch: accepted events (frame.SCHEMA, `row` ascending) and dead letters by row.

        `name` prefixes the dead letters' `source` ("name:line", 1-based as the
        file source counts); `raws(rows)` gives the original messages of rows.
        Runs of valid events between dead letters are summarised when long;
        short ones go to the engine together with the dead letters around them.
        """
        out: list[Output] = []
        rows = events["row"].to_numpy()
        start = 0
        mixed: list[pl.DataFrame | tuple[int, DecodeError]] = []
        for row, error in dead:
            end = int(np.searchsorted(rows, row))
            if end - start >= SMALL:
                out.extend(self._one_by_one(mixed, name, raws))
                mixed = []
                out.extend(self._segment(events.slice(start, end - start), name, raws))
            elif end > start:
                mixed.append(events.slice(start, end - start))
            mixed.append((row, error))
            start = end
        out.extend(self._one_by_one(mixed, name, raws))
        out.extend(self._segment(events.slice(start), name, raws))
        self._forget_closed()
        return out

    def close(self) -> list[Output]:
        """End of the archives: every open window closes."""
        return self.engine.close()

    def _segment(self, events: pl.DataFrame, name: str,
                 raws: Callable[[Sequence[int]], list[bytes]]) -> list[Output]:
        n = len(events)
        if n == 0:
            return []
        if self.engine.watermark == -math.inf and n > SMALL:
            # The first events start the clock; until then the engine judges staleness one by one.
            return (self._segment(events.slice(0, SMALL), name, raws)
                    + self._segment(events.slice(SMALL), name, raws))
        if n >= SMALL:
            part, ids = summarize_frame(events, self.engine.window_size, self.variants, self.engine.caps)
            if self._ids_fit(ids) and self.engine.fits(part, PARTITION):
                self.summarized += n
                for wid, hashes in ids.hashes.items():
                    self.hashes.setdefault(wid, []).append(hashes)
                    self.pending.setdefault(wid, []).append(ids)
                return self.engine.feed_partial(part, PARTITION, list, fits=True)
            if n > SPLIT_MIN:
                half = n // 2
                return (self._segment(events.slice(0, half), name, raws)
                        + self._segment(events.slice(half), name, raws))
        return self._one_by_one([events], name, raws)

    def _one_by_one(self, pieces: Sequence[pl.DataFrame | tuple[int, DecodeError]], name: str,
                    raws: Callable[[Sequence[int]], list[bytes]]) -> list[Output]:
        """Feed events and dead letters in order through `Engine.feed`, as the stream does."""
        if not pieces:
            return []
        seen_ids = self.engine.seen_ids  # the engine checks duplicates against every id of the window
        for wid, batches in self.pending.items():
            if self.engine.is_open(wid):
                for batch in batches:
                    seen_ids.remember(wid, batch.values(wid))
        self.pending.clear()
        items: list[Event | DecodeError] = []
        sources: list[int] = []
        for piece in pieces:
            if isinstance(piece, tuple):
                sources.append(piece[0])
                items.append(piece[1])
                continue
            self.one_by_one += len(piece)
            wids = windows_of(piece["ts"].to_numpy(), self.engine.window_size)
            hashes = piece["request_id"].hash().to_numpy()
            present = piece["request_id"].is_not_null().to_numpy()
            for wid in np.unique(wids[present]).tolist():  # a superset of what the engine keeps: safe
                self.hashes.setdefault(wid, []).append(hashes[present & (wids == wid)])
            rows = piece["row"].to_list()
            sources.extend(rows)
            items.extend(frames.to_events(piece, raws(rows)))
        return self.engine.feed(items, PARTITION, locate=lambda i: f"{name}:{sources[i] + 1}")

    def _ids_fit(self, ids: RequestIds) -> bool:
        """No request id of the batch came before in its window, and the windows keep them all.

        `SeenIds.fits` on hashes: the ids merged but not yet handed to the engine count as its own.
        """
        for wid, new in ids.hashes.items():
            waiting = sum(len(batch.rows[wid]) for batch in self.pending.get(wid, []))
            if not self.engine.seen_ids.keeps_all(wid, waiting + len(new)):
                return False
            old = self.hashes.get(wid)
            if old is not None and np.isin(new, np.concatenate(old) if len(old) > 1 else old[0]).any():
                return False  # a repeat, or a hash collision: either way `feed` decides exactly
        return True

    def _forget_closed(self) -> None:
        for table in (self.hashes, self.pending):
            for wid in [w for w in table if not self.engine.is_open(w)]:
                del table[wid]


# -- a whole replay ----------------------------------------------------------------------------------

class ArchiveBatch(Protocol):
    """What `replay` reads: one decoded batch of an archive (archive.Batch)."""

    @property
    def source(self) -> str: ...
    @property
    def frame(self) -> pl.DataFrame: ...
    @property
    def dead(self) -> list[tuple[int, DecodeError]]: ...
    @property
    def done_bytes(self) -> int: ...
    def raws(self, rows: Sequence[int]) -> list[bytes]: ...


@dataclass
class Outcome:
    """What a replay found: the verdicts with their window statistics, and counts."""

    verdicts: list[Verdict] = field(default_factory=list)
    windows: list[dict[str, Any]] = field(default_factory=list)  # report.window_record per verdict
    kept: list[tuple[int, ClosedWindow, Context]] = field(default_factory=list)
    events: int = 0
    dead_letters: int = 0
    totals: dict[str, int] = field(default_factory=dict)


def replay(cfg: Config, batches: Iterable[ArchiveBatch], *, verdicts: IO[bytes], dead_letters: IO[bytes],
           windows: IO[bytes], on_batch: Callable[[ArchiveBatch], None] | None = None) -> Outcome:
    """Judge decoded batches in order; write verdicts, dead letters and window statistics as JSONL.

    Lines are written as windows close, so what was judged before a failure
    (an archive that turns out corrupt half-way) stays on disk.
    """
    replayer = Replayer(cfg)
    outcome = Outcome()

    def emit(items: list[Output]) -> None:
        for item in items:
            if isinstance(item, Report):
                outcome.verdicts.append(item.verdict)
                record = window_record(item, cfg)
                outcome.windows.append(record)
                verdicts.write(orjson.dumps(item.verdict.to_record()) + b"\n")
                windows.write(orjson.dumps(record) + b"\n")
            else:
                outcome.dead_letters += 1
                dead_letters.write(orjson.dumps(item.to_record()) + b"\n")

    for batch in batches:
        outcome.events += len(batch.frame) + len(batch.dead)
        emit(replayer.feed(batch.frame, batch.dead, Path(batch.source).name, batch.raws))
        if on_batch is not None:
            on_batch(batch)
    emit(replayer.close())
    outcome.kept = replayer.engine.kept or []
    outcome.totals = {**replayer.engine.totals, "summarized": replayer.summarized,
                      "one_by_one": replayer.one_by_one}
    return outcome

# -- per-window record -----------------------------------------------------------------------------

P95 = 0.95  # the quantile of the latency record (Engine keeps 0.5, 0.95 and 0.99)


def window_record(rep: Report, cfg: Config) -> dict[str, Any]:
    """The statistics behind one verdict, JSON-able: this window's counts and the horizon's views.

    Per-variant fields hold the control and the canary only; counts of a
    variant absent from the window are 0, horizon statistics a variant has
    none of (no probes, no cache blocks) are left out.  Lists are sorted.
    """
    judged = (cfg.control, cfg.canary)
    c: Mapping[str, Counter[Any]] = rep.window.c if rep.window is not None else {}
    empty: Counter[Any] = Counter()

    def per_variant(family: str) -> dict[str, int]:
        out = dict.fromkeys(judged, 0)
        for (variant, _region), n in c.get(family, empty).items():
            if variant in out:
                out[variant] += n
        return out

    dead: Counter[str] = Counter()
    for (_variant, reason), n in c.get("dead", empty).items():
        dead[str(reason)] += n
    medians = rep.horizon_stats.get("probe_median", {})
    hits = rep.horizon_stats.get("cache_hit", {})
    field = cfg.thresholds.latency_field
    return {
        "window_end": format_time(rep.verdict.window_end),
        "users": per_variant("user"),
        "errors": per_variant("errors"),
        "classes": [{"variant": v, "status": s, "phase": ph, "n": n}
                    for (v, s, ph), n in sorted(c.get("classes", empty).items()) if v in judged],
        "dead": dict(sorted(dead.items())),
        "p95_warm_ms": [{"variant": v, "region": r, "ms": ms}
                        for (v, r, temp, phase, q), ms in sorted(rep.quantiles.items())
                        if v in judged and temp == "warm" and phase == field and q == P95],
        "delta_s_median": {v: medians[(v, "delta_s", "")] for v in judged if (v, "delta_s", "") in medians},
        "coverage_median": [{"variant": v, "topic": topic, "value": value}
                            for (v, kind, topic), value in sorted(medians.items())
                            if v in judged and kind == "coverage"],
        "cache_hit_rate": {v: hits[(v,)] for v in judged if (v,) in hits},
        "index": [{"variant": v, "region": r, "index_hash": ih, "metric": m, "analyzer": a, "n": int(n)}
                  for (v, r, ih, m, a), n in sorted(rep.horizon_stats.get("index", {}).items())
                  if v in judged],
        "prefix": [{"variant": v, "prefix": p, "n": int(n)}
                   for (v, p), n in sorted(rep.horizon_stats.get("prefix", {}).items()) if v in judged],
    }


__all__ = ["ArchiveBatch", "Outcome", "Replayer", "replay", "window_record"]
