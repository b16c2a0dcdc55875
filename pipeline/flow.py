"""The Bytewax dataflow: source -> decode -> judge (clock, windows, gates) -> sinks.

Sources emit `Chunk`s (micro-batches of raw messages) so that Bytewax moves a
few large items instead of one item per event; decoding runs on the worker
that read the chunk.  Judging needs one stream-wide watermark, so every chunk
is keyed to a single key and the `Engine` lives in one `stateful` step; its
state pickles for recovery.  Outputs leave keyed so file sinks stay on one
worker.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.operators import StatefulLogic
from bytewax.outputs import Sink

from pipeline.codec import decode_batch
from pipeline.config import Config
from pipeline.engine import Engine, Output, Report
from pipeline.io.chunk import Chunk
from pipeline.model import DecodeError, Event
from pipeline.partial import Partial, summarize

STREAM_KEY = "stream"
TICK_S = 1.0  # how often a live run checks the idle rule


@dataclass
class Sinks:
    """Where outputs go; each list may hold several sinks (fan-out)."""

    verdicts: list[Sink[Any]] = field(default_factory=list)
    dead_letters: list[Sink[Any]] = field(default_factory=list)
    # Sinks that see every output (metrics, live board), unkeyed.
    observers: list[Sink[Any]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Decoded:
    """A decoded chunk on its way to the judge.

    Usually only its per-window summary (`partial`) travels, with the raw lines
    in case the judge must take the events one by one; a chunk with a decode
    error travels as `items` (items[i] came from chunk.lines[i]).
    """

    items: list[Event | DecodeError] | None
    partial: Partial | None
    chunk: Chunk
    max_bytes: int

    def redecode(self) -> list[Event | DecodeError]:
        """The chunk's events, for the judge's event-by-event path."""
        return decode_batch(self.chunk.lines, self.max_bytes)


@dataclass
class StageControl:
    """The stage the operator wants now (changed on SIGHUP); read by the judge."""

    stage: str
    base: dict[str, Any] = field(default_factory=dict)  # settings at start-up, to name what SIGHUP ignores


class _JudgeLogic(StatefulLogic[Decoded, Output, Engine]):
    """Feeds decoded chunks to the Engine; closes every window at end of input."""

    def __init__(self, engine: Engine, control: StageControl | None,
                 clock: Callable[[], float] | None) -> None:
        self.engine = engine
        self.control = control
        self.clock = clock  # set only for live sources: wall time drives the idle rule

    def on_item(self, value: Decoded) -> tuple[Iterable[Output], bool]:
        if self.control is not None and self.control.stage != self.engine.cfg.stage:
            self.engine.set_stage(self.control.stage)
        now = self.clock() if self.clock is not None else None
        chunk = value.chunk
        if value.partial is not None:
            out = self.engine.feed_partial(value.partial, chunk.partition, value.redecode, chunk.locate, now)
        else:
            out = self.engine.feed(value.items or [], chunk.partition, chunk.locate, now)
        if chunk.last:
            out.extend(self.engine.end_partition(chunk.partition))
        return out, False

    def on_eof(self) -> tuple[Iterable[Output], bool]:
        return self.engine.close(), False

    def notify_at(self) -> datetime | None:
        if self.clock is None:
            return None
        return datetime.fromtimestamp(self.clock() + TICK_S, tz=UTC)

    def on_notify(self) -> tuple[Iterable[Output], bool]:
        assert self.clock is not None
        return self.engine.tick(self.clock()), False

    def snapshot(self) -> Engine:
        return self.engine


def build_flow(cfg: Config, source: Source[Chunk], sinks: Sinks, *,
               partitions: Iterable[str] = ("0",), control: StageControl | None = None,
               clock: Callable[[], float] | None = None) -> Dataflow:
    """The canary-gate dataflow over any chunk source and any sinks."""
    max_bytes = cfg.limits.max_event_bytes
    parts = tuple(partitions)

    size = cfg.windows.size_s
    variants = (cfg.control, cfg.canary)

    def decode(chunk: Chunk) -> Decoded:
        items = decode_batch(chunk.lines, max_bytes)
        partial = summarize(items, size, variants)
        if partial is None:
            return Decoded(items, None, chunk, max_bytes)
        return Decoded(None, partial, chunk, max_bytes)

    def build(resume: Engine | None) -> _JudgeLogic:
        return _JudgeLogic(resume if resume is not None else Engine(cfg, parts), control, clock)

    flow = Dataflow("canary_gate")
    chunks = op.input("source", flow, source)
    decoded = op.map("decode", chunks, decode)
    keyed = op.key_on("one_clock", decoded, lambda _: STREAM_KEY)
    judged = op.stateful("judge", keyed, build)
    split = op.branch("split", judged, lambda kv: isinstance(kv[1], Report))
    for i, sink in enumerate(sinks.verdicts):
        op.output(f"verdicts_{i}", split.trues, sink)
    for i, sink in enumerate(sinks.dead_letters):
        op.output(f"dead_letters_{i}", split.falses, sink)
    if sinks.observers:
        unkeyed = op.map("unkey", judged, lambda kv: kv[1])
        for i, sink in enumerate(sinks.observers):
            op.output(f"observer_{i}", unkeyed, sink)
    return flow
