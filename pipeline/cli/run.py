"""`canary-gate run`: check the options, open the inputs and outputs, run the dataflow, report.

Bytewax and the Kafka client are never imported here: the dataflow comes from
`pipeline.flow`, Bytewax's runtime from `pipeline.io.runner`, and
`pipeline.io.kafka` is imported only when a Kafka source, output or client
config is asked for, so a file run loads no Kafka client.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline import config as config_mod
from pipeline.cli.cluster import cluster_of, start_followers, stop_followers
from pipeline.cli.common import UsageError, is_kafka, say, writable
from pipeline.cli.signals import install_reload, restore, signal_followers, stop_handlers_during_run
from pipeline.io import recovery as recovery_mod
from pipeline.io.chunk import BATCH_SIZE, FLEET_BATCH_SIZE
from pipeline.io.lifecycle import STOP, failpoint_error, failure, last_snapshot
from pipeline.model import format_time

if TYPE_CHECKING:  # these import Bytewax: at run time only once the signal handlers are in place
    from pipeline.flow import Flow, Sinks, StageControl
    from pipeline.io.board import Board, BoardSink
    from pipeline.io.health import SourceHealth
    from pipeline.io.observe import ObserveSink


@dataclass(frozen=True)
class RunOptions:
    """Everything `run` needs beyond the config and the source."""

    verdicts: str | None
    dead: str
    metrics_port: int = 0
    metrics_addr: str = "0.0.0.0"
    workers: int = 1
    batch_size: int = BATCH_SIZE  # messages per micro-batch: see --batch-size
    board_on: bool = False
    config_path: str | None = None
    until_end: bool = False
    starting_offset: str = "earliest"
    kafka_config: str | None = None
    addresses: list[str] | None = None  # a cluster's processes, when there is more than one
    process_id: int = 0
    recovery_dir: str | None = None
    snapshot_interval_s: float = 10.0
    broker_timeout_s: float = 300.0

    @property
    def total_workers(self) -> int:
        """Worker threads over every process of the run."""
        return len(self.addresses or [None]) * self.workers


def cmd_run(args: argparse.Namespace) -> int:
    """Judge a stream to its end (files) and publish verdicts."""
    if args.rollouts:
        from pipeline.cli.fleet import cmd_run_fleet

        return cmd_run_fleet(args)
    if not args.config:
        raise UsageError("run needs --config FILE (one rollout) or --rollouts DIR (a fleet)")
    cfg = config_mod.load(args.config)
    opts = options_of(args, cfg.name)
    return run_held(args, opts, prepare_recovery(cfg, args.source, opts),
                    lambda: run_pipeline(cfg, args.source, opts))


def run_held(args: argparse.Namespace, opts: RunOptions, held: recovery_mod.Lock | None,
             run: Callable[[], int]) -> int:
    """Start the cluster's followers, `run` (process 0's dataflow), stop them, release the recovery lock."""
    try:
        if STOP.is_set():
            say("stopped before the run started: nothing read")
            return 0
        followers = (start_followers([*args.argv, "--board", "on" if opts.board_on else "off"],
                                     opts.addresses)
                     if args.processes > 1 else [])
        try:
            code = run()
        finally:
            code_of_followers = stop_followers(followers)
        return code or code_of_followers
    finally:
        if held is not None:
            held.release()


def options_of(args: argparse.Namespace, name: str) -> RunOptions:
    """The run's options, every one checked (UsageError names the first bad one)."""
    _check_source(args.source)
    _check_sizes(args)
    interactive = sys.stdout.isatty()
    verdicts = args.verdicts or (None if interactive else "-")
    dead = _dead_letters(args, name, verdicts)
    for path, flag in ((verdicts, "--verdicts"), (dead, "--dead-letters")):
        if path and not is_kafka(path):
            writable(path, flag)
    _check_timing(args)
    addresses, process_id = cluster_of(args)
    _check_total(len(addresses or [None]) * args.workers)
    return RunOptions(
        verdicts=verdicts, dead=dead, metrics_port=args.metrics_port, metrics_addr=args.metrics_addr,
        workers=args.workers, batch_size=_batch_size(args),
        board_on=args.board == "on" or (args.board == "auto" and interactive and verdicts != "-"),
        config_path=args.config, until_end=args.until_end, starting_offset=args.starting_offset,
        kafka_config=args.kafka_config, addresses=addresses, process_id=process_id,
        recovery_dir=args.recovery_dir, snapshot_interval_s=args.snapshot_interval,
        broker_timeout_s=args.broker_timeout)


def _check_source(source: str) -> None:
    if is_kafka(source):
        from pipeline.io.kafka import KafkaSetupError, parse_url

        try:
            parse_url(source)
        except KafkaSetupError as exc:
            raise UsageError(f"--source {exc}") from None
        return
    if source == "-":
        return
    if not Path(source).is_file():
        raise UsageError(f"--source {source}: no such file")
    if not source.endswith((".jsonl", ".jsonl.gz", ".json", ".ndjson")):
        raise UsageError(f"--source {source}: expected a .jsonl or .jsonl.gz file, or '-'")
    if source.endswith(".gz"):
        with open(source, "rb") as f:
            if f.read(2) not in (b"\x1f\x8b", b""):
                raise UsageError(f"--source {source}: not a gzip file")


def _batch_size(args: argparse.Namespace) -> int:
    """--batch-size, else the default of a one-rollout or a fleet run (io/chunk.py)."""
    if args.batch_size is not None:
        return int(args.batch_size)
    return FLEET_BATCH_SIZE if getattr(args, "rollouts", None) else BATCH_SIZE


def _check_sizes(args: argparse.Namespace) -> None:
    if args.workers < 1:
        raise UsageError(f"--workers must be >= 1, got {args.workers}")
    if args.batch_size is not None and args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    if not 0 <= args.metrics_port <= 65535:
        raise UsageError(f"--metrics-port must be 0..65535, got {args.metrics_port}")


def _dead_letters(args: argparse.Namespace, name: str, verdicts: str | None) -> str:
    """--dead-letters, else the Kafka source's broker, else beside a verdicts file, else ./<rollout>."""
    if args.dead_letters:
        return str(args.dead_letters)
    if is_kafka(args.source):
        return "kafka://" + str(args.source)[len("kafka://"):].split("/", 1)[0]
    if verdicts not in (None, "-") and not is_kafka(verdicts):
        return f"{_stem(str(verdicts))}.dead-letters.jsonl"
    return f"{name.replace('/', '_')}.dead-letters.jsonl"


def _stem(path: str) -> str:
    name = str(path)
    for suffix in (".jsonl.gz", ".jsonl", ".json", ".verdicts"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return name


def _check_timing(args: argparse.Namespace) -> None:
    if args.until_end and not is_kafka(args.source):
        raise UsageError("--until-end applies to a kafka:// source only")
    if not args.snapshot_interval > 0:
        raise UsageError(f"--snapshot-interval must be > 0, got {args.snapshot_interval:g}")
    if not args.broker_timeout > 0:
        raise UsageError(f"--broker-timeout must be > 0, got {args.broker_timeout:g}")
    if (problem := failpoint_error()) is not None:
        raise UsageError(problem)


def _check_total(total: int) -> None:
    from pipeline.flow import MAX_WORKERS

    if total > MAX_WORKERS:
        raise UsageError(f"at most {MAX_WORKERS} workers in total (processes x --workers), got {total}")


def prepare_recovery(cfg: config_mod.Config | None, source: str, opts: RunOptions,
                      rollouts: str | None = None) -> recovery_mod.Lock | None:
    """Check and lock --recovery-dir for this run (None without one); UsageError if it does not fit."""
    if not opts.recovery_dir:
        return None
    held: recovery_mod.Lock | None = None
    try:
        held = recovery_mod.prepare(Path(opts.recovery_dir), cfg, {
            "rollout": cfg.name if cfg is not None else None, "workers": opts.total_workers, "source": source,
            **({"rollouts": rollouts if is_kafka(rollouts) else str(Path(rollouts).resolve())}
               if rollouts else {}),
            "verdicts": opts.verdicts, "dead_letters": opts.dead}, opts.process_id)
        if opts.process_id == 0:  # followers share the directory process 0 has just checked
            for warning in recovery_mod.check(Path(opts.recovery_dir), opts.total_workers):
                say(f"warning: {warning}")
    except recovery_mod.RecoveryError as exc:
        if held is not None:
            held.release()
        raise UsageError(str(exc)) from None
    return held


FLEET_NAME = "fleet"  # a fleet run's name in default file names (<name>.dead-letters.jsonl)


class SetupFailed(Exception):
    """An input or output cannot be opened (e.g. an unreachable broker): one line, exit 1."""


@dataclass
class _Plan:
    """The run's opened source and sinks."""

    source: Any
    partitions: list[str]
    clock: Callable[[], float] | None  # wall time for a live source (the idle rule), else None
    sinks: Sinks
    tally: Board  # counts for the summary


@dataclass(frozen=True)
class _Ended:
    """How a dataflow that did not fail ended."""

    stopped: bool  # by a stop signal
    forced: bool  # at once, without a final snapshot


def run_pipeline(cfg: config_mod.Config, source: str, opts: RunOptions) -> int:
    """Build and run the dataflow; print a one-line summary on stderr; the exit code."""
    from pipeline.flow import StageControl
    from pipeline.io.health import SourceHealth

    health = SourceHealth()
    try:
        plan = open_plan(cfg.name, source, opts)
    except SetupFailed as exc:
        say(str(exc))
        return 1
    control = StageControl(cfg.stage, cfg.effective())  # before serve: controllers ask for its stage
    board_sink = add_observers(plan.sinks, opts, lambda: _serve_metrics(cfg, opts, health, control))
    install_reload(opts.config_path, control)
    return run_flow(_build(cfg, plan, opts, control, health), plan, opts, board_sink)


def run_flow(flow: Flow, plan: _Plan, opts: RunOptions, board_sink: BoardSink | None) -> int:
    """Run a built dataflow to its end or a stop; print the one-line summary; the exit code."""
    if STOP.is_set():  # a stop signal during start-up: nothing read, nothing to save
        signal_followers()
        say("stopped before the run started: nothing read"
            + (f"; {opts.recovery_dir} is as the last run left it" if opts.recovery_dir else ""))
        return 1 if failure() else 0
    started = time.perf_counter()
    ended = _execute(flow, opts, board_sink)
    if isinstance(ended, int):
        return ended
    if board_sink is not None:
        board_sink.stop()
    return _finish(plan.tally, opts, ended, started)


def _uses_kafka(source: str, opts: RunOptions) -> bool:
    return opts.kafka_config is not None or any(map(is_kafka, (source, opts.verdicts, opts.dead)))


def open_plan(name: str | None, source: str, opts: RunOptions) -> _Plan:
    """Open the source and the sinks (of rollout `name`; None: a fleet's); SetupFailed if Kafka fails."""
    if not _uses_kafka(source, opts):
        return _plan(name, source, opts, {})
    from pipeline.io import kafka

    try:
        return _plan(name, source, opts, kafka.load_client_config(opts.kafka_config))
    except kafka.KafkaSetupError as exc:
        raise SetupFailed(str(exc)) from None


def _plan(name: str | None, source: str, opts: RunOptions, extra: dict[str, str]) -> _Plan:
    from pipeline.flow import Sinks
    from pipeline.io.board import Board
    from pipeline.io.observe import ObserveSink

    src, partitions, clock = _source(source, opts, extra)
    tally = Board()
    sinks = Sinks(observers=[ObserveSink(tally.observe)])
    if opts.verdicts:
        sinks.verdicts.append(_sink("verdicts", opts.verdicts, name, opts, extra))
    sinks.dead_letters.append(_sink("dead-letters", opts.dead, name, opts, extra))
    return _Plan(src, partitions, clock, sinks, tally)


def _source(source: str, opts: RunOptions,
            extra: dict[str, str]) -> tuple[Any, list[str], Callable[[], float] | None]:
    """The telemetry source, its partitions and, for a live one, the wall clock."""
    if not is_kafka(source):
        from pipeline.io.files import JsonlSource

        return JsonlSource(source, opts.batch_size), ["0"], None
    from pipeline.io import kafka

    url = kafka.parse_url(source, kafka.TELEMETRY_TOPIC)
    parts = kafka.partitions(url, extra)
    marks = kafka.watermarks(url, extra) if opts.until_end else {}
    src = kafka.KafkaTelemetrySource(
        url, extra, starting=opts.starting_offset, batch_size=opts.batch_size,
        stop_at={p: high for p, (_, high) in marks.items()} if opts.until_end else None,
        low_offsets={p: low for p, (low, _) in marks.items()}, partition_ids=parts,
        broker_timeout_s=opts.broker_timeout_s)
    return src, [str(p) for p in parts], None if opts.until_end else time.time


def _sink(kind: str, target: str, name: str | None, opts: RunOptions, extra: dict[str, str]) -> Any:
    """The sink of `kind` (verdicts or dead-letters) writing to `target`, a file or a Kafka topic.

    `name`: the rollout whose verdicts it takes (None: a fleet's, any rollout).
    """
    from pipeline.io.files import JsonlSink, dead_letter_line, verdict_line

    render_line = verdict_line if kind == "verdicts" else dead_letter_line
    if not is_kafka(target):
        return JsonlSink(target, render_line, flag=f"--{kind}")
    from pipeline.io import kafka

    if kind == "verdicts":
        url = kafka.parse_url(target, kafka.VERDICT_TOPIC)
        kafka.ensure_topic(url, extra, config=kafka.VERDICT_TOPIC_CONFIG)
        render: Any = kafka.render_verdict(name)
    else:
        url = kafka.parse_url(target, kafka.DEAD_LETTER_TOPIC)
        kafka.ensure_topic(url, extra)
        render = kafka.render_dead_letter
    return kafka.KafkaProducerSink(url, extra, render, opts.broker_timeout_s, render_line=render_line,
                                   spill=_undelivered_file(name or FLEET_NAME, kind, opts))


def _undelivered_file(rollout: str, kind: str, opts: RunOptions) -> str:
    """Where a Kafka output saves what the broker never took.

    In the recovery directory when there is one (it is the run's own
    storage), else beside the run's file output, else in the working
    directory; a failure to write it is reported with the delivery error.
    """
    name = f"{rollout.replace('/', '_')}.undelivered-{kind}.jsonl"
    if opts.recovery_dir:
        return str(Path(opts.recovery_dir) / name)
    for target in (opts.verdicts, opts.dead):
        if target and target != "-" and not is_kafka(target):
            return str(Path(target).parent / name)
    return name


def add_observers(sinks: Sinks, opts: RunOptions,
                  serve_metrics: Callable[[], ObserveSink]) -> BoardSink | None:
    """Metrics and the live board, in process 0; the board's sink, to stop once the run ends.

    Every process builds the same dataflow (Bytewax requires it); only process
    0, which holds the judge, serves metrics and draws the board, so followers
    keep no-op observers in their place.
    """
    from pipeline.io.board import Board, BoardSink
    from pipeline.io.observe import ObserveSink

    follower = opts.process_id > 0
    if opts.metrics_port:
        sinks.observers.append(ObserveSink(_ignore) if follower
                               else serve_metrics())
    if not opts.board_on:
        return None
    if follower:
        sinks.observers.append(ObserveSink(_ignore))
        return None
    board_sink = BoardSink(Board())
    sinks.observers.append(board_sink)
    return board_sink


def _ignore(item: Any) -> None:
    """A follower's stand-in for an observer that lives in process 0."""


def _serve_metrics(cfg: config_mod.Config, opts: RunOptions, health: SourceHealth,
                   control: StageControl) -> ObserveSink:
    """Serve /metrics and /verdicts on --metrics-port; the observer that feeds them."""
    from pipeline.io.http import serve
    from pipeline.io.metrics import CanaryCollector
    from pipeline.io.observe import ObserveSink

    collector = CanaryCollector(health=health, rollouts=(cfg.name,))
    try:
        serve(collector, opts.metrics_port, opts.metrics_addr, stage=lambda _: control.stage)
    except OSError as exc:
        raise UsageError(f"--metrics-port {opts.metrics_port}: cannot listen: {exc.strerror}") from None
    return ObserveSink(collector.observe)


def _build(cfg: config_mod.Config, plan: _Plan, opts: RunOptions, control: StageControl,
           health: SourceHealth) -> Flow:
    """The dataflow over the plan's source and sinks (with the verdict journal of a recovery run)."""
    from pipeline.flow import build_flow

    def resumed(notes: list[str]) -> None:
        say(f"resumed from {opts.recovery_dir}" + (f": {'; '.join(notes)}" if notes else ""))

    journal = None
    if opts.recovery_dir:
        from pipeline.io.journal import JournalError, VerdictJournal

        try:
            journal = VerdictJournal(Path(opts.recovery_dir))
        except JournalError as exc:
            raise UsageError(f"--recovery-dir {exc}") from None
    return build_flow(cfg, plan.source, plan.sinks, partitions=plan.partitions, control=control,
                      clock=plan.clock, health=health, workers=opts.total_workers, on_resume=resumed,
                      journal=journal)


def _execute(flow: Flow, opts: RunOptions, board_sink: BoardSink | None) -> _Ended | int:
    """Run the dataflow with stop signals handled; how it ended, or the exit code of a failed run."""
    from pipeline.io.runner import Cluster, execute

    previous = stop_handlers_during_run()
    watcher = (recovery_mod.watch(Path(opts.recovery_dir), opts.total_workers)
               if opts.recovery_dir and opts.process_id == 0 else None)
    try:
        execute(flow, Cluster(opts.workers, opts.addresses, opts.process_id),
                recovery_dir=opts.recovery_dir, snapshot_interval_s=opts.snapshot_interval_s)
        return _Ended(stopped=STOP.is_set(), forced=False)
    except KeyboardInterrupt:
        signal_followers()
        return _Ended(stopped=True, forced=True)  # a second Ctrl-C / SIGTERM: no final snapshot
    except Exception as exc:  # the dataflow failed; report it in one line
        if _caused_by_interrupt(exc):
            signal_followers()
            return _Ended(stopped=True, forced=True)
        if board_sink is not None:
            board_sink.stop()
        return _failed(exc, opts.recovery_dir)
    finally:
        if watcher is not None:
            watcher.stop()
        restore(previous)


def _failed(exc: Exception, recovery_dir: str | None) -> int:
    """Report a failed dataflow in one line; 2 when the output files need the user, else 1."""
    from pipeline.io.files import OutputMismatch, OutputWriteError

    root = _root(exc)
    if isinstance(root, OutputMismatch):  # the files, not the run, need the user: like bad usage
        say(f"error: {root}")
        return 2
    cause = str(root) if isinstance(root, OutputWriteError) else _root_cause(exc)
    explained = recovery_mod.explain(cause, recovery_dir) if recovery_dir else None
    say(f"run failed: {explained or cause}")
    return 1


def _caused_by_interrupt(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, KeyboardInterrupt):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _root(exc: BaseException) -> BaseException:
    """The first exception of a chain (what Bytewax wrapped)."""
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return exc


def _root_cause(exc: BaseException) -> str:
    exc = _root(exc)
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[-1] if text else ''}"


def _finish(tally: Board, opts: RunOptions, ended: _Ended, started: float) -> int:
    """Process 0 prints the summary; the exit code of a run that was not a dataflow failure."""
    reason = failure()
    if opts.process_id:
        return 1 if reason else 0  # process 0 holds the judge and reports the run
    say(_summary(tally, opts, ended, time.perf_counter() - started))
    if reason:
        say(f"run failed: {reason}")
        return 1
    return 130 if ended.forced else 0


def _summary(tally: Board, opts: RunOptions, ended: _Ended, elapsed: float) -> str:
    """The run's one-line summary: events, rate, verdicts, last decision, dead letters, what was saved."""
    last = tally.verdict
    dead_total = sum(tally.dead.values())
    dead_note = ", ".join(f"{k} {n}" for k, n in sorted(tally.dead.items()))
    return (
        ("stopped: " if ended.stopped else "")
        + f"{tally.events} events in {elapsed:.1f} s ({tally.events / max(elapsed, 1e-9):,.0f}/s), "
        f"{tally.verdicts} verdicts"
        + (f", last {last.decision} at {last.to_record()['window_end']}" if last and len(tally.latest) < 2
           else f"; latest per rollout: {tally.decisions()}" if last else "")
        + f"; {dead_total} dead letters" + (f" ({dead_note}) -> {opts.dead}" if dead_total else "")
        + ("" if opts.verdicts else "; verdicts were only shown (pass --verdicts PATH to keep them)")
        + _what_was_saved(opts.recovery_dir, ended.stopped, ended.forced)
    )


def _what_was_saved(recovery_dir: str | None, stopped: bool, forced: bool) -> str:
    """The summary's last clause: where a stopped run's open windows are, truthfully."""
    last = last_snapshot()
    if forced and recovery_dir:
        if last is None:
            return f"; stopped at once before any snapshot: the next run with {recovery_dir} starts afresh"
        return (f"; stopped at once without a final snapshot: the next run with {recovery_dir} resumes "
                f"from the snapshot of {format_time(last)}")
    if forced:
        return "; stopped at once: open windows were not judged"
    if stopped and recovery_dir:
        if last is None:
            return f"; no snapshot was taken: the next run with {recovery_dir} starts afresh"
        return f"; open windows wait in {recovery_dir} (snapshot of {format_time(last)})"
    return ""
