"""Replay and backtest: judge archived telemetry with the stream's own gates.

An archive (JSONL, JSONL.gz, Parquet; see archive.py) is read in large
batches of decoded events, a polars frame each.  Per batch, polars builds the
same per-window aggregates the stream builds per micro-batch (`Partial`:
counters keyed by raw label values, latency sketches, request ids and sticky
keys per window) with a handful of group-bys, and the stream's `Engine` merges
them under its event-time clock, label caps and horizon and judges every
window with `gates.judge`.  So a replay says what the stream would have said:

* a batch is cut and fed exactly as the stream's judge feeds a chunk
  (pipeline/feed.py: the same pieces, the same `Feeder`): a run of valid
  events is merged whole only when the engine finds no event in it late,
  future or a duplicate under its clock (`Engine.fits`); otherwise it is
  summarised again in halves down to small pieces, and a small piece goes
  through `Engine.feed` event by event;
* dead letters are fed in their place in the stream, between the runs of
  valid events around them, so each counts in the window the stream counts it.

`rejudge` re-runs the gates and decisions over the kept closed windows under
other thresholds (what-if), without reading the archive again.
"""


from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

import orjson
import polars as pl

from pipeline import frame as frames
from pipeline.aggregate.partial import summarize_frame
from pipeline.aggregate.stats import ClosedWindow
from pipeline.config import Config
from pipeline.engine import Engine, Output, Report
from pipeline.feed import Feeder, Run, Summary, split
from pipeline.gates import Context
from pipeline.model import DecodeError, Event, Verdict, format_time

PARTITION = "0"  # an archive is one stream, as a file source is


@dataclass(frozen=True, slots=True)
class _FrameEvents:
    """Replay's `feed.Events`: a batch's frame, and its lines for the dead letters' `line`."""

    frame: pl.DataFrame
    name: str
    raws: Callable[[Sequence[int]], list[bytes]]
    size: float
    variants: tuple[str, ...]

    def events_of(self, start: int, stop: int) -> pl.DataFrame:
        return self.frame.slice(start, stop - start)

    def events(self, piece: Summary | Run) -> tuple[list[Event | DecodeError], Sequence[int]]:
        piece_frame = self.events_of(piece.start, piece.stop)
        rows = piece_frame["row"].to_list()
        return list(frames.to_events(piece_frame, self.raws(rows))), rows

    def locate(self, row: int) -> str:
        return f"{self.name}:{row + 1}"  # 1-based, as the file source counts

    def halves(self, piece: Summary) -> tuple[Summary, Summary]:
        mid = (piece.start + piece.stop) // 2
        first, second = self.events_of(piece.start, mid), self.events_of(mid, piece.stop)
        return (Summary(piece.start, mid, piece.row, summarize_frame(first, self.size, self.variants)),
                Summary(mid, piece.stop, int(second["row"][0]),
                        summarize_frame(second, self.size, self.variants)))


class Replayer:
    """Feeds decoded batches to an `Engine` in stream order, as the stream's judge does; returns what closes.

    Each batch is cut into pieces (`feed.split`: summaries of long runs, short
    runs, dead letters in their place) and fed by the stream's `feed.Feeder`;
    a long summary that does not fit is summarised again in halves, since the
    frame is at hand.
    """

    def __init__(self, cfg: Config, keep: bool = True) -> None:
        self.cfg = cfg
        self.engine = Engine(cfg, (PARTITION,))
        if keep:
            self.engine.kept = []
        self.variants = (cfg.control, cfg.canary)
        self.feeder = Feeder(self.engine)

    @property
    def summarized(self) -> int:
        """Events merged as batch summaries."""
        return self.feeder.summarized

    @property
    def one_by_one(self) -> int:
        """Events fed one by one (short runs, or a late/future/duplicate inside)."""
        return self.feeder.one_by_one

    def feed(self, events: pl.DataFrame, dead: Sequence[tuple[int, DecodeError]],
             name: str, raws: Callable[[Sequence[int]], list[bytes]]) -> list[Output]:
        """One batch: accepted events (frame.SCHEMA, `row` ascending) and dead letters by row.

        `name` prefixes the dead letters' `source` ("name:line", 1-based as the
        file source counts); `raws(rows)` gives the original messages of rows.
        """
        size = self.engine.window_size
        pieces = split(events, list(dead), size, self.variants)
        return self.feeder.feed(pieces, _FrameEvents(events, name, raws, size, self.variants), PARTITION)

    def close(self) -> list[Output]:
        """End of the archives: every open window closes."""
        return self.engine.close()


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
