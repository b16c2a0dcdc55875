"""The Bytewax dataflow: source -> decode + summarise -> judge (clock, windows, gates) -> sinks.

Sources emit `Chunk`s (micro-batches of raw messages) so that Bytewax moves a
few large items instead of one item per event; decoding (column-wise, into a
frame) and the per-window summaries of its runs (`pipeline.feed`) run on the
worker that read the chunk, so more processes mean more decoding capacity.  Judging needs one stream-wide
watermark, so every chunk is keyed to a single key, routed to worker 0, and
the `Engine` lives in one `stateful` step; its state pickles for recovery.
Outputs leave keyed so file sinks stay on one worker.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.operators import StatefulLogic
from bytewax.outputs import Sink

from pipeline.config import Config
from pipeline.engine import Engine, Output, Report, fixed_changes
from pipeline.feed import ChunkEvents, Feeder, Piece, Run, decode_chunk, route_chunk
from pipeline.fleet import Progress, Retired, Unmatched
from pipeline.io.chunk import Chunk
from pipeline.io.health import SourceHealth
from pipeline.io.journal import VerdictJournal
from pipeline.io.lifecycle import STOP, failpoint, snapshot_taken
from pipeline.io.rollouts import FleetControl
from pipeline.model import DeadLetter

Flow = Dataflow  # what build_flow returns, for modules that must not import Bytewax themselves
MAX_WORKERS = 32  # processes x threads per process a run may have in total
_JUDGE_KEY_PREFIX = "judge-"
_MASK64 = (1 << 64) - 1


def _rotl(x: int, bits: int) -> int:
    return ((x << bits) | (x >> (64 - bits))) & _MASK64


def _siphash13(data: bytes) -> int:
    """SipHash-1-3 with the zero key: Rust's `std::collections::hash_map::DefaultHasher::new()`."""
    v0, v1, v2, v3 = 0x736F6D6570736575, 0x646F72616E646F6D, 0x6C7967656E657261, 0x7465646279746573

    def sip_round() -> None:
        nonlocal v0, v1, v2, v3
        v0 = (v0 + v1) & _MASK64
        v1 = _rotl(v1, 13) ^ v0
        v0 = _rotl(v0, 32)
        v2 = (v2 + v3) & _MASK64
        v3 = _rotl(v3, 16) ^ v2
        v0 = (v0 + v3) & _MASK64
        v3 = _rotl(v3, 21) ^ v0
        v2 = (v2 + v1) & _MASK64
        v1 = _rotl(v1, 17) ^ v2
        v2 = _rotl(v2, 32)

    whole = len(data) - len(data) % 8
    for i in range(0, whole, 8):
        m = int.from_bytes(data[i:i + 8], "little")
        v3 ^= m
        sip_round()
        v0 ^= m
    last = ((len(data) & 0xFF) << 56) | int.from_bytes(data[whole:], "little")
    v3 ^= last
    sip_round()
    v0 ^= last
    v2 ^= 0xFF
    for _ in range(3):
        sip_round()
    return v0 ^ v1 ^ v2 ^ v3


def worker_of(key: str, workers: int) -> int:
    """The worker (0-based, over all processes) Bytewax 0.21 gives a stateful step's `key`.

    Bytewax's `stateful_batch` (src/operators.rs, `partition` in src/timely.rs)
    hashes the key, a Rust `String`, with `BuildHasherDefault<DefaultHasher>`
    and takes the hash modulo the worker count as an index into the sorted
    worker indices.  `DefaultHasher` is SipHash-1-3 with a zero key, and a
    `str` is hashed as its UTF-8 bytes followed by one 0xFF byte, so the
    placement is the same in every process and every run.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    return _siphash13(key.encode() + b"\xff") % workers


def judge_key(workers: int) -> str:
    """The judge's key for `workers` in total: the first `judge-<i>` Bytewax places on worker 0.

    Worker 0 is in process 0, so the judge and everything it publishes
    (metrics, board, verdict files) live there.  About one key in `workers`
    qualifies, so the search is short; tests/test_cluster.py checks every
    count 1..MAX_WORKERS against the running engine.
    """
    if not 1 <= workers <= MAX_WORKERS:
        raise ValueError(f"workers must be 1..{MAX_WORKERS} in total, got {workers}")
    i = 0
    while worker_of(f"{_JUDGE_KEY_PREFIX}{i}", workers) != 0:
        i += 1
    return f"{_JUDGE_KEY_PREFIX}{i}"


TICK_S = 1.0  # how often a live run checks the idle rule


@dataclass
class Sinks:
    """Where outputs go; each list may hold several sinks (fan-out)."""

    verdicts: list[Sink[Any]] = field(default_factory=list)
    dead_letters: list[Sink[Any]] = field(default_factory=list)
    # Sinks that see every output (metrics, live board), unkeyed.
    observers: list[Sink[Any]] = field(default_factory=list)
    # Fleet mode: sinks of what the fleet says besides verdicts and dead letters (Retired,
    # Unmatched, Progress), in process 0.
    notes: list[Sink[Any]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Decoded:
    """A decoded chunk on its way to the judge: its pieces (`feed.split`) and the chunk itself.

    The raw lines travel with the pieces so the judge can decode again, with
    `codec.decode`, just the piece it must take event by event.
    """

    pieces: list[Piece]
    chunk: Chunk
    max_bytes: int
    size: float | None = None  # fleet mode: the window size the pieces were cut with
    rollout: str = ""  # fleet mode: whose messages these are


@dataclass
class StageControl:
    """The stage the operator wants now (changed on SIGHUP); read by the judge."""

    stage: str
    base: dict[str, Any] = field(default_factory=dict)  # settings at start-up, to name what SIGHUP ignores


class _JudgeLogic(StatefulLogic[Decoded, Output, Engine]):
    """Feeds decoded chunks to the Engine; closes every window at end of input."""

    def __init__(self, engine: Engine, control: StageControl | None,
                 clock: Callable[[], float] | None, health: SourceHealth | None,
                 journal: VerdictJournal | None = None) -> None:
        self.engine = engine
        self.feeder = Feeder(engine)  # keeps nothing the engine's snapshot does not
        self.control = control
        self.clock = clock  # set only for live sources: wall time drives the idle rule
        self.health = health
        self.journal = journal
        if journal is not None:
            engine.judged = []

    def _journaled(self, out: list[Output]) -> list[Output]:
        """Record the windows just judged in the journal, before their verdicts leave."""
        judged = self.engine.judged
        if judged and self.journal is not None:
            self.journal.append(judged)
            judged.clear()
        return out

    def on_item(self, value: Decoded) -> tuple[Iterable[Output], bool]:
        if self.control is not None and self.control.stage != self.engine.cfg.stage:
            self.engine.set_stage(self.control.stage)
        now = self.clock() if self.clock is not None else None
        chunk = value.chunk
        failpoint("chunk")
        if chunk.offsets is not None:
            self.engine.source_state(chunk.partition, chunk.down, now)
            if self.health is not None:
                self.health.note(chunk.partition, len(chunk.lines), chunk.lag)
        if not chunk.lines and not chunk.last:
            return [], False  # a lag reading only: no data, so no sign of life for the idle rule
        out = self.feeder.feed(value.pieces, ChunkEvents(chunk.lines, chunk.locate, value.max_bytes),
                               chunk.partition, now)
        if chunk.timestamps is not None:
            _keep_origin(out, chunk)
        if chunk.last:
            out.extend(self.engine.end_partition(chunk.partition))
        self._journaled(out)
        if any(type(x) is Report for x in out):
            failpoint("window_close")  # crash tests: a window closed, its verdict not yet out
        return out, False

    def on_eof(self) -> tuple[Iterable[Output], bool]:
        if STOP.is_set():
            return [], False  # a stop, not the end: open windows wait in the snapshot
        return self._journaled(self.engine.close()), False

    def notify_at(self) -> datetime | None:
        if self.clock is None:
            return None
        return datetime.fromtimestamp(self.clock() + TICK_S, tz=UTC)

    def on_notify(self) -> tuple[Iterable[Output], bool]:
        assert self.clock is not None
        return self._journaled(self.engine.tick(self.clock())), False

    def snapshot(self) -> Engine:
        failpoint("snapshot")
        snapshot_taken()
        if self.journal is not None:
            self.journal.snapshot(self.engine.closed_through())
        return self.engine


def _keep_origin(out: list[Output], chunk: Chunk) -> None:
    """Give the chunk's dead letters their Kafka message's key, timestamp and headers (in place)."""
    for j, item in enumerate(out):
        if type(item) is DeadLetter:
            i = chunk.index_of(item.source)
            if i is None:
                continue
            assert chunk.timestamps is not None
            headers = chunk.headers[i] if chunk.headers is not None else None
            out[j] = replace(item, key=chunk.keys[i] if chunk.keys is not None else None,
                             timestamp_ms=chunk.timestamps[i], headers=tuple(headers or ()))


def _decoder(cfg: Config) -> Callable[[Chunk], Decoded]:
    """Decode a chunk column-wise and summarise its runs per window, on the worker that read it."""
    max_bytes = cfg.limits.max_event_bytes
    size = cfg.windows.size_s
    variants = (cfg.control, cfg.canary)

    def decode(chunk: Chunk) -> Decoded:
        return Decoded(decode_chunk(chunk.lines, max_bytes, size, variants), chunk, max_bytes)

    return decode


def _judge_builder(cfg: Config, parts: tuple[str, ...], *, control: StageControl | None,
                   clock: Callable[[], float] | None, health: SourceHealth | None,
                   on_resume: Callable[[list[str]], None] | None,
                   journal: VerdictJournal | None) -> Callable[[Engine | None], _JudgeLogic]:
    """The judge's state builder: a new Engine, or the snapshot's adopting `cfg` (see `build_flow`)."""
    def build(resume: Engine | None) -> _JudgeLogic:
        engine = resume if resume is not None else Engine(cfg, parts)
        emitted = (journal.emitted_after(engine.closed_through(), cfg.windows.size_s)
                   if journal is not None else [])
        if resume is not None or emitted:
            stage = control.stage if control is not None else cfg.stage
            notes = engine.reconfigure(cfg.with_stage(stage), parts, emitted)
            if resume is None:
                notes.insert(0, "no snapshot yet: reading from the start")
            if on_resume is not None:
                on_resume(notes)
        return _JudgeLogic(engine, control, clock, health, journal)

    return build


def build_flow(cfg: Config, source: Source[Chunk], sinks: Sinks, *,
               partitions: Iterable[str] = ("0",), control: StageControl | None = None,
               clock: Callable[[], float] | None = None, health: SourceHealth | None = None,
               workers: int = 1, on_resume: Callable[[list[str]], None] | None = None,
               journal: VerdictJournal | None = None) -> Dataflow:
    """The canary-gate dataflow over any chunk source and any sinks.

    `workers` is the total over all processes: the judge is placed on worker 0.
    When the judge resumes from a recovery snapshot, its engine adopts `cfg`'s
    stage and thresholds and `on_resume` hears what changed.  With a
    `journal` (recovery runs), windows an earlier run emitted after that
    snapshot are made again under the config they were first judged under.
    """
    key = judge_key(workers)
    build = _judge_builder(cfg, tuple(partitions), control=control, clock=clock, health=health,
                           on_resume=on_resume, journal=journal)
    flow = Dataflow("canary_gate")
    chunks = op.input("source", flow, source)
    decoded = op.map("decode", chunks, _decoder(cfg))
    keyed = op.key_on("one_clock", decoded, lambda _: key)
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


# -- fleet mode: one run judges every rollout of a directory ------------------------------------

_ROLLOUT_KEY_PREFIX = "rollout:"  # judges' keys; the publisher's is judge_key(workers)


FleetOutput = Report | DeadLetter | Retired | Unmatched | Progress


def _router(control: FleetControl) -> Callable[[Chunk], list[tuple[str, Any]]]:
    """The decode step of a fleet: each rollout's messages of a chunk, keyed by rollout, and notes."""
    def route(chunk: Chunk) -> list[tuple[str, Any]]:
        fleet, router = control.current()
        cfgs = fleet.configs
        max_bytes = max((c.limits.max_event_bytes for c in cfgs), default=1 << 20)
        out: list[tuple[str, Any]] = []
        if chunk.offsets is not None:
            out.append(("", Progress(chunk.partition, len(chunk.lines), chunk.lag)))
        if not chunk.lines and not chunk.last and not chunk.down:
            return out
        routed = route_chunk(chunk, router, cfgs, max_bytes)
        for name, (own, pieces) in routed.mine.items():
            size = fleet.files[name].cfg.windows.size_s
            out.append((_ROLLOUT_KEY_PREFIX + name, Decoded(pieces, own, max_bytes, size, name)))
        out += [("", letter) for letter in routed.dead]
        if routed.unmatched.counts:
            out.append(("", Unmatched(dict(routed.unmatched.counts))))
        return out

    return route


class _RolloutJudge(StatefulLogic[Decoded, FleetOutput, Engine]):
    """One rollout's judge: `_JudgeLogic` over its own Engine, made on its first item.

    It follows the rollout's file: a change of stage, thresholds, variant specs
    or promotion applies at the next item; a change of names, windows or
    limits starts the rollout afresh (the old judgement publishes its last
    verdicts first); a removed file closes its open windows, publishes their
    verdicts and frees the state.  With `journals` (recovery runs), each
    rollout keeps its own verdict journal in `journals/<rollout>`, so windows
    judged after the last snapshot are made again after a crash under the
    config they were first judged under, as in a one-rollout run.
    """

    def __init__(self, resume: Engine | None, control: FleetControl, parts: tuple[str, ...],
                 clock: Callable[[], float] | None, *, say: Callable[[str], None],
                 journals: Path | None = None) -> None:
        self.control = control
        self.parts = parts
        self.clock = clock
        self.say = say
        self.journals = journals
        self.inner: _JudgeLogic | None = None
        self.generation: int | None = None  # the fleet load that took the rollout this judge judges
        if resume is not None:
            self._start(resume.cfg.name, resume, resumed=True)

    def _journal(self, name: str, fresh: bool) -> VerdictJournal | None:
        """The rollout's journal (emptied when its judgement starts afresh), None without recovery."""
        if self.journals is None:
            return None
        directory = self.journals / _file_name(name)
        if fresh:
            shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True, exist_ok=True)
        return VerdictJournal(directory)

    def _start(self, name: str, engine: Engine, *, resumed: bool = False, fresh: bool = False) -> None:
        """Judge with `engine`; a resumed one (or a first one, after a crash before any snapshot) makes
        the windows its journal says were emitted after it again, under their own config."""
        journal = self._journal(name, fresh)
        if journal is not None and not fresh:
            emitted = journal.emitted_after(engine.closed_through(), engine.cfg.windows.size_s)
            cfg = self.control.config(name)
            if emitted or resumed:
                adopt = cfg if cfg is not None and not fixed_changes(engine.cfg, cfg) else engine.cfg
                notes = engine.reconfigure(adopt, self.parts, emitted)
                if notes:
                    self.say(f"rollouts: {name}: resumed: {'; '.join(notes)}")
        elif resumed:
            engine.clock.resumed(self.parts)
        self.inner = _JudgeLogic(engine, None, self.clock, None, journal)

    def _retire(self, name: str) -> list[FleetOutput]:
        """The rollout is gone: close its open windows (their verdicts go out) and drop its journal."""
        assert self.inner is not None
        out: list[FleetOutput] = [*self.inner.engine.close(), Retired(name)]
        if self.inner.journal is not None:
            self.inner.journal.close()
            shutil.rmtree(self.inner.journal.path.parent, ignore_errors=True)
        self.inner = None
        return out

    def _engine_for(self, name: str) -> tuple[list[FleetOutput], bool]:
        """Bring the judge in line with the rollout's file; (outputs, whether the rollout is gone)."""
        cfg = self.control.config(name)
        generation = self.control.generation(name)
        if cfg is None:
            return (self._retire(name) if self.inner is not None else []), True
        if self.inner is not None and self.generation is None:
            self.generation = generation  # resumed from a snapshot: the rollout as loaded now
        if self.inner is not None and generation != self.generation:
            # removed and added again since this judge last ran (a file run has no tick to see
            # the removal): the old rollout ends, the new one starts afresh
            out = self._retire(name)
            self._start(name, Engine(cfg, self.parts), fresh=True)
            self.generation = generation
            return out, False
        if self.inner is None:
            self._start(name, Engine(cfg, self.parts))
            self.generation = generation
            return [], False
        engine = self.inner.engine
        if cfg == engine.cfg:
            return [], False
        fixed = fixed_changes(engine.cfg, cfg)
        if fixed:
            self.say(f"rollouts: {name}: {', '.join(fixed)} changed: judged afresh from its next event")
            out = [*self.inner._journaled(engine.close())]
            self._start(name, Engine(cfg, self.parts), fresh=True)
            return out, False
        notes = engine.adopt(cfg)
        if notes:
            self.say(f"rollouts: {name}: {'; '.join(notes)}")
        return [], False

    def on_item(self, value: Decoded) -> tuple[Iterable[FleetOutput], bool]:
        name = self._name(value)
        out, gone = self._engine_for(name)
        if gone:
            return out, True
        assert self.inner is not None
        if value.size != self.inner.engine.window_size:  # cut under another config: take it exactly
            lines = value.chunk.lines
            value = replace(value, pieces=[Run(0, len(lines), 0)] if lines else [])
        judged, _ = self.inner.on_item(value)
        out.extend(judged)
        return out, False

    def _name(self, value: Decoded) -> str:
        if self.inner is not None:
            return self.inner.engine.cfg.name
        return value.rollout

    def on_eof(self) -> tuple[Iterable[FleetOutput], bool]:
        if self.inner is None:
            return [], True
        out, _ = self.inner.on_eof()
        return out, False

    def notify_at(self) -> datetime | None:
        return None if self.inner is None else self.inner.notify_at()

    def on_notify(self) -> tuple[Iterable[FleetOutput], bool]:
        if self.inner is None:
            return [], True
        out, gone = self._engine_for(self.inner.engine.cfg.name)
        if gone:
            return out, True
        assert self.inner is not None
        ticked, _ = self.inner.on_notify()
        return [*out, *ticked], False

    def snapshot(self) -> Engine:
        assert self.inner is not None
        return self.inner.snapshot()


def _pass(state: None, item: FleetOutput) -> tuple[None, list[FleetOutput]]:
    return None, [item]


def build_fleet_flow(control: FleetControl, source: Source[Chunk], sinks: Sinks, *,
                     partitions: Iterable[str] = ("0",), clock: Callable[[], float] | None = None,
                     workers: int = 1, say: Callable[[str], None] = lambda _: None,
                     journals: Path | None = None) -> Dataflow:
    """The fleet dataflow: every rollout of `control`'s directory judged from one source.

    Decoding workers route each chunk (`feed.route_chunk`); each rollout's
    messages go to its own key, so the judges of different rollouts run on
    different workers, each with its own Engine (clock, windows, verdicts) and
    its own recovery snapshot.  Verdicts and dead letters leave through the
    sinks; everything, fleet notes included, reaches process 0 (worker 0,
    `judge_key`), where metrics, `/verdicts` and the board live.  `journals`:
    the directory of the rollouts' verdict journals (recovery runs).
    """
    parts = tuple(partitions)
    publish = judge_key(workers)
    flow = Dataflow("canary_gate_fleet")
    chunks = op.input("source", flow, source)
    routed = op.flat_map("route", chunks, _router(control))
    kinds = op.branch("kind", routed, lambda kv: kv[0].startswith(_ROLLOUT_KEY_PREFIX))
    judged = op.stateful("judge", kinds.trues,
                         lambda resume: _RolloutJudge(resume, control, parts, clock, say=say,
                                                      journals=journals))
    outputs = op.merge("outputs", judged, kinds.falses)
    for i, sink in enumerate(sinks.verdicts):
        op.output(f"verdicts_{i}", op.filter(f"reports_{i}", outputs, lambda kv: type(kv[1]) is Report), sink)
    for i, sink in enumerate(sinks.dead_letters):
        op.output(f"dead_letters_{i}",
                  op.filter(f"letters_{i}", outputs, lambda kv: type(kv[1]) is DeadLetter), sink)
    if sinks.observers or sinks.notes:
        here = op.stateful_flat_map("to_worker_0", op.key_on("publish", op.map("drop_keys", outputs,
                                                                                 lambda kv: kv[1]),
                                                              lambda _: publish), _pass)
        unkeyed = op.map("unkey", here, lambda kv: kv[1])
        main = op.filter("verdicts_and_letters", unkeyed, lambda x: type(x) in (Report, DeadLetter))
        for i, sink in enumerate(sinks.observers):
            op.output(f"observer_{i}", main, sink)
        said = op.filter("fleet_notes", unkeyed, lambda x: type(x) not in (Report, DeadLetter))
        for i, sink in enumerate(sinks.notes):
            op.output(f"notes_{i}", said, sink)
    return flow


def _file_name(rollout: str) -> str:
    """A rollout name as one path component (names may hold '/')."""
    return rollout.replace("/", "_").replace("\\", "_") or "_"
