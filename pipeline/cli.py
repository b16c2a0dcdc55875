"""canary-gate command line (SPEC section 5).

Exit codes: 0 done; 2 bad usage or bad config (one line on stderr, no
traceback); 1 runtime failure.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from types import FrameType
from typing import IO, Any, NoReturn

import orjson

from pipeline import config as config_mod
from pipeline import scenarios
from pipeline.io import recovery as recovery_mod
from pipeline.io.lifecycle import STOP, failure, last_snapshot
from pipeline.model import format_time

PROG = "canary-gate"


class UsageError(Exception):
    """Bad usage: reported as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="Streaming canary analysis for serverless and edge RAG services.")
    p.add_argument("--version", action="version", version=f"{PROG} {_version()}",
                   help="print the version and exit")
    sub = p.add_subparsers(dest="command", parser_class=_Parser, metavar="COMMAND",
                           help="run without one for this help; COMMAND -h for its options")

    run = sub.add_parser("run", help="judge a telemetry stream and publish verdicts")
    run.add_argument("--config", required=True, help="rollout config (TOML)")
    run.add_argument("--source", required=True,
                     help="telemetry: a .jsonl or .jsonl.gz file, '-' for stdin, or kafka://HOST:PORT/TOPIC")
    run.add_argument("--verdicts", help="verdict JSONL path, '-' for stdout, or kafka://HOST:PORT[/TOPIC] "
                     "(topic default canary.verdicts; default: stdout when it is not a terminal, "
                     "else only the live board)")
    run.add_argument("--dead-letters", help="dead-letter JSONL path or kafka://HOST:PORT[/TOPIC] (topic "
                     "default telemetry.dlq; default: the Kafka source's broker, else beside the "
                     "verdicts file, else ./<rollout>.dead-letters.jsonl)")
    run.add_argument("--until-end", action="store_true",
                     help="Kafka: stop at the end offsets found at start-up, closing every window")
    run.add_argument("--starting-offset", choices=("earliest", "latest"), default="earliest",
                     help="Kafka: where to start reading each partition (default earliest)")
    run.add_argument("--kafka-config", metavar="FILE",
                     help="librdkafka settings (key=value lines), e.g. SASL/TLS credentials")
    run.add_argument("--metrics-port", type=int, default=0,
                     help="serve Prometheus /metrics on this port (0, the default, disables)")
    run.add_argument("--metrics-addr", default="0.0.0.0", help="address for --metrics-port")
    run.add_argument("--workers", type=int, default=1, help="worker threads per process (default 1)")
    run.add_argument("--processes", type=int, default=1,
                     help="worker processes on this machine (Bytewax cluster; default 1): decoding "
                     "and aggregation spread over them, the judge and its outputs stay in process 0")
    run.add_argument("--addresses", metavar="HOST:PORT;...",
                     help="join a cluster across machines: every process's address, in process order "
                     "(run the same command on each machine with its --process-id)")
    run.add_argument("--process-id", type=int, help="this process's index in --addresses")
    run.add_argument("--batch-size", type=int, default=1000, help="messages per micro-batch")
    run.add_argument("--board", choices=("auto", "on", "off"), default="auto",
                     help="live terminal board (auto: when stdout is a terminal)")
    run.add_argument("--recovery-dir", metavar="DIR",
                     help="keep snapshots of window state and source positions here; a run started "
                     "again with the same DIR resumes where the last snapshot left off "
                     "(docs/reliability.md)")
    run.add_argument("--snapshot-interval", type=float, default=10.0, metavar="SECONDS",
                     help="with --recovery-dir: seconds between snapshots (default 10); a crash "
                     "re-reads at most this much input")
    run.add_argument("--broker-timeout", type=float, default=300.0, metavar="SECONDS",
                     help="Kafka: how long to wait for an unreachable broker before stopping with "
                     "an error (default 300)")

    check = sub.add_parser("check-config", help="validate a config and print the effective settings")
    check.add_argument("--config", required=True, help="rollout config (TOML) to validate")

    gen = sub.add_parser("generate", help="write a deterministic synthetic telemetry scenario")
    gen.add_argument("--scenario", required=True, choices=sorted(scenarios.SCENARIOS),
                     metavar="NAME", help="one of: " + ", ".join(sorted(scenarios.SCENARIOS)))
    gen.add_argument("--seed", type=int, default=1,
                     help="random seed: the same scenario, seed and minutes give the same events (default 1)")
    gen.add_argument("--minutes", type=int, default=20, help="minutes of event time to generate (default 20)")
    gen.add_argument("--traffic-scale", type=float, default=1.0,
                     help="multiply user request rates (e.g. 100 for a load test)")
    gen.add_argument("--out", required=True,
                     help="JSONL path (.gz compresses), '-' for stdout, kafka://HOST:PORT/TOPIC, "
                     "or a .parquet path (an archive for replay)")
    gen.add_argument("--format", choices=("jsonl", "parquet"),
                     help="jsonl or parquet (default: parquet when --out ends with .parquet, else jsonl)")
    gen.add_argument("--rate", type=float, default=0.0,
                     help="Kafka: events per second to produce (default 0: as fast as possible)")
    gen.add_argument("--partitions", type=int, default=4,
                     help="Kafka: partitions of the topic if it has to be created (default 4)")
    gen.add_argument("--kafka-config", metavar="FILE", help="librdkafka settings (key=value lines)")
    gen.add_argument("--config-out", help="also write the rollout config the scenario is judged under")

    replay = sub.add_parser(
        "replay", help="judge archived telemetry (JSONL, JSONL.gz, Parquet) as one stream; write the "
        "verdict timeline, dead letters and an HTML report")
    replay.add_argument("--config", required=True, help="rollout config (TOML) to judge the archives under")
    replay.add_argument("archives", nargs="+", metavar="ARCHIVE",
                        help=".jsonl, .jsonl.gz or .parquet files, folders of them or globs, read in "
                        "the order given (a folder's or glob's files by name)")
    replay.add_argument("--out", default="replay",
                        help="directory for <rollout>.verdicts.jsonl, .dead-letters.jsonl, "
                        ".windows.jsonl, .report.html and <rollout>-figures/ (default ./replay)")
    replay.add_argument("--thresholds", action="append", default=[], metavar="FILE",
                        help="what-if: TOML with [thresholds], [promotion] or rollout.stage over the "
                        "config; the decisions are re-run over the same aggregates and what changes "
                        "is printed (repeatable)")
    replay.add_argument("--batch-rows", type=int, default=1_000_000,
                        help="messages decoded and aggregated at a time (default 1,000,000)")
    replay.add_argument("--no-report", action="store_true", help="skip the HTML report and figures")
    return p


def _version() -> str:
    """The installed package's version (from pyproject.toml), or a note saying the tree is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(PROG)
    except PackageNotFoundError:
        return "unknown (not installed)"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    try:
        parser = _parser()
        args = parser.parse_args(argv)
        if args.command is None:  # no command: the help, as a request for it (git, pip, docker do alike)
            parser.print_help()
            return 0
        if args.command == "run":
            _catch_signals_early()
        args.argv = list(argv) if argv is not None else sys.argv[1:]
        handler: Callable[[argparse.Namespace], int] = {
            "run": cmd_run,
            "check-config": cmd_check_config,
            "generate": cmd_generate,
            "replay": cmd_replay,
        }[args.command]
        return handler(args)
    except UsageError as exc:
        _say(f"error: {exc}")
        return 2
    except config_mod.ConfigError as exc:
        _say(f"config error: {exc}")
        return 2
    except KeyboardInterrupt:
        _say("interrupted")
        return 130
    except OSError as exc:  # a file that cannot be read or written: one line, not a traceback
        where = f"{exc.filename}: " if exc.filename else ""
        _say(f"{where}{exc.strerror or exc}")
        return 1
    except BrokenPipeError:
        return 0


def _say(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr)


def _stem(path: str) -> str:
    name = str(path)
    for suffix in (".jsonl.gz", ".jsonl", ".json", ".verdicts"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return name


def _check_source(source: str) -> None:
    if source.startswith("kafka://"):
        from pipeline.io.kafka import KafkaSetupError, parse_url

        try:
            parse_url(source)
        except KafkaSetupError as exc:
            raise UsageError(f"--source {exc}") from None
        return
    if source != "-" and not Path(source).is_file():
        raise UsageError(f"--source {source}: no such file")
    if source != "-" and not source.endswith((".jsonl", ".jsonl.gz", ".json", ".ndjson")):
        raise UsageError(f"--source {source}: expected a .jsonl or .jsonl.gz file, or '-'")
    if source.endswith(".gz"):
        with open(source, "rb") as f:
            if f.read(2) not in (b"\x1f\x8b", b""):
                raise UsageError(f"--source {source}: not a gzip file")


def _writable(path: str, flag: str) -> None:
    if path == "-":
        return
    target = Path(path)
    parent = target.parent
    if not parent.is_dir():
        raise UsageError(f"{flag} {path}: directory {parent} does not exist")
    if target.is_dir():
        raise UsageError(f"{flag} {path}: is a directory")
    if not os.access(target if target.exists() else parent, os.W_OK):
        raise UsageError(f"{flag} {path}: not writable")


def cmd_run(args: argparse.Namespace) -> int:
    """Judge a stream to its end (files) and publish verdicts."""
    cfg = config_mod.load(args.config)
    _check_source(args.source)
    if args.workers < 1:
        raise UsageError(f"--workers must be >= 1, got {args.workers}")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    if not 0 <= args.metrics_port <= 65535:
        raise UsageError(f"--metrics-port must be 0..65535, got {args.metrics_port}")
    interactive = sys.stdout.isatty()
    verdicts = args.verdicts or (None if interactive else "-")
    kafka_source = args.source.startswith("kafka://")
    if args.dead_letters:
        dead = args.dead_letters
    elif kafka_source:
        dead = "kafka://" + args.source[len("kafka://"):].split("/", 1)[0]
    elif verdicts not in (None, "-") and not verdicts.startswith("kafka://"):
        dead = f"{_stem(verdicts)}.dead-letters.jsonl"
    else:
        dead = f"{cfg.name.replace('/', '_')}.dead-letters.jsonl"
    for path, flag in ((verdicts, "--verdicts"), (dead, "--dead-letters")):
        if path and not path.startswith("kafka://"):
            _writable(path, flag)
    if args.until_end and not kafka_source:
        raise UsageError("--until-end applies to a kafka:// source only")
    if not args.snapshot_interval > 0:
        raise UsageError(f"--snapshot-interval must be > 0, got {args.snapshot_interval:g}")
    if not args.broker_timeout > 0:
        raise UsageError(f"--broker-timeout must be > 0, got {args.broker_timeout:g}")
    from pipeline.io.lifecycle import failpoint_error

    if (problem := failpoint_error()) is not None:
        raise UsageError(problem)
    addresses, process_id = _cluster(args)
    total = len(addresses or [None]) * args.workers
    from pipeline.flow import MAX_WORKERS

    if total > MAX_WORKERS:
        raise UsageError(f"at most {MAX_WORKERS} workers in total (processes x --workers), got {total}")
    held: recovery_mod.Lock | None = None
    if args.recovery_dir:
        try:
            held = recovery_mod.prepare(Path(args.recovery_dir), cfg, {
                "rollout": cfg.name, "workers": total, "source": args.source,
                "verdicts": verdicts, "dead_letters": dead}, process_id)
            if process_id == 0:  # followers share the directory process 0 has just checked
                for warning in recovery_mod.check(Path(args.recovery_dir), total):
                    _say(f"warning: {warning}")
        except recovery_mod.RecoveryError as exc:
            if held is not None:
                held.release()
            raise UsageError(str(exc)) from None
    board_on = args.board == "on" or (args.board == "auto" and interactive and verdicts != "-")
    options = RunOptions(
        verdicts=verdicts, dead=dead, metrics_port=args.metrics_port, metrics_addr=args.metrics_addr,
        workers=args.workers, batch_size=args.batch_size, board_on=board_on, config_path=args.config,
        until_end=args.until_end, starting_offset=args.starting_offset, kafka_config=args.kafka_config,
        addresses=addresses, process_id=process_id, recovery_dir=args.recovery_dir,
        snapshot_interval_s=args.snapshot_interval, broker_timeout_s=args.broker_timeout)
    if STOP.is_set():
        _say("stopped before the run started: nothing read")
        if held is not None:
            held.release()
        return 0
    followers = (_start_followers([*args.argv, "--board", "on" if board_on else "off"], addresses)
                 if args.processes > 1 else [])
    try:
        code = run_pipeline(cfg, args.source, options)
    finally:
        code_of_followers = _stop_followers(followers)
        if held is not None:
            held.release()
    return code or code_of_followers


def _cluster(args: argparse.Namespace) -> tuple[list[str] | None, int]:
    """(addresses, process id) of a cluster run, or (None, 0) for one process."""
    if args.processes < 1:
        raise UsageError(f"--processes must be >= 1, got {args.processes}")
    if args.addresses is not None or args.process_id is not None:
        if args.processes > 1:
            raise UsageError("--processes starts a cluster on this machine; --addresses joins one: "
                             "give one or the other")
        if args.addresses is None or args.process_id is None:
            raise UsageError("--addresses and --process-id go together")
        addresses = [a.strip() for a in args.addresses.split(";") if a.strip()]
        for a in addresses:
            host, sep, port = a.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise UsageError(f"--addresses: {a!r} is not HOST:PORT")
        if not 0 <= args.process_id < len(addresses):
            raise UsageError(f"--process-id must be 0..{len(addresses) - 1}, got {args.process_id}")
        return addresses, args.process_id
    if args.processes == 1:
        return None, 0
    ports = []
    for _ in range(args.processes):
        with socket.socket() as sock:  # free ports for the cluster's own connections
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
    return [f"127.0.0.1:{p}" for p in ports], 0


def _start_followers(argv: list[str], addresses: list[str] | None) -> list[subprocess.Popen[bytes]]:
    """Processes 1..N-1 of a local cluster: the same command, joined by address."""
    assert addresses is not None
    joined = ";".join(addresses)
    rest: list[str] = []
    skip = False
    for arg in argv:  # drop --processes N (and --processes=N) so followers do not start more
        if skip:
            skip = False
            continue
        if arg == "--processes":
            skip = True
            continue
        if arg.startswith("--processes="):
            continue
        rest.append(arg)
    _FOLLOWERS[:] = [subprocess.Popen([sys.executable, "-m", "pipeline.cli", *rest, "--addresses", joined,
                                       "--process-id", str(i)])
                     for i in range(1, len(addresses))]
    return list(_FOLLOWERS)


def _stop_followers(followers: list[subprocess.Popen[bytes]], grace_s: float = 5.0) -> int:
    """Wait for followers to end (they end with the dataflow); 1 if any failed."""
    code = 0
    for proc in followers:
        try:
            rc = proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                rc = proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                rc = proc.wait()
        if rc not in (0, -signal.SIGTERM, 130):
            code = 1
    return code


@dataclass(frozen=True)
class RunOptions:
    """Everything `run` needs beyond the config and the source."""

    verdicts: str | None
    dead: str
    metrics_port: int = 0
    metrics_addr: str = "0.0.0.0"
    workers: int = 1
    batch_size: int = 1000
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


def run_pipeline(cfg: config_mod.Config, source: str, opts: RunOptions) -> int:
    """Build and run the dataflow; print a one-line summary on stderr."""
    # Imported here so that check-config and generate start fast.
    from bytewax._bytewax import cli_main

    from pipeline.flow import Sinks, StageControl, build_flow
    from pipeline.io import kafka
    from pipeline.io.board import Board, BoardSink
    from pipeline.io.files import (
        JsonlSink,
        JsonlSource,
        OutputMismatch,
        OutputWriteError,
        dead_letter_line,
        verdict_line,
    )
    from pipeline.io.http import serve
    from pipeline.io.metrics import CanaryCollector
    from pipeline.io.observe import ObserveSink

    extra = kafka.load_client_config(opts.kafka_config)
    health = kafka.SourceHealth()
    clock: Callable[[], float] | None = None
    try:
        if kafka.is_kafka(source):
            url = kafka.parse_url(source, kafka.TELEMETRY_TOPIC)
            parts = kafka.partitions(url, extra)
            marks = kafka.watermarks(url, extra) if opts.until_end else {}
            src: Any = kafka.KafkaTelemetrySource(
                url, extra, starting=opts.starting_offset, batch_size=opts.batch_size,
                stop_at={p: high for p, (_, high) in marks.items()} if opts.until_end else None,
                low_offsets={p: low for p, (low, _) in marks.items()}, partition_ids=parts,
                broker_timeout_s=opts.broker_timeout_s)
            partition_ids = [str(p) for p in parts]
            clock = None if opts.until_end else time.time
        else:
            src = JsonlSource(source, opts.batch_size)
            partition_ids = ["0"]

        def sink(target: str, render_line: Callable[[Any], bytes], render_message: Any,
                 default_topic: str, kind: str) -> Any:
            if kafka.is_kafka(target):
                out = kafka.parse_url(target, default_topic)
                kafka.ensure_topic(out, extra,
                                   config=kafka.VERDICT_TOPIC_CONFIG if kind == "verdicts" else None)
                spill = _undelivered_file(cfg.name, kind, opts)
                return kafka.KafkaProducerSink(out, extra, render_message, opts.broker_timeout_s,
                                               render_line=render_line, spill=spill)
            return JsonlSink(target, render_line, flag=f"--{kind}")

        tally = Board()
        sinks = Sinks(observers=[ObserveSink(tally.observe)])
        if opts.verdicts:
            sinks.verdicts.append(sink(opts.verdicts, verdict_line, kafka.render_verdict(cfg.name),
                                       kafka.VERDICT_TOPIC, "verdicts"))
        sinks.dead_letters.append(sink(opts.dead, dead_letter_line, kafka.render_dead_letter,
                                       kafka.DEAD_LETTER_TOPIC, "dead-letters"))
    except kafka.KafkaSetupError as exc:
        _say(str(exc))
        return 1
    control = StageControl(cfg.stage, cfg.effective())  # before serve: controllers ask for its stage
    # Every process builds the same dataflow (Bytewax requires it); only process 0, which
    # holds the judge, serves metrics and draws the board.  Followers keep no-op observers.
    follower = opts.process_id > 0
    if opts.metrics_port and follower:
        sinks.observers.append(ObserveSink(lambda item: None))
    elif opts.metrics_port:
        collector = CanaryCollector(health=health, rollouts=(cfg.name,))
        try:
            serve(collector, opts.metrics_port, opts.metrics_addr, stage=lambda: control.stage)
        except OSError as exc:
            raise UsageError(f"--metrics-port {opts.metrics_port}: cannot listen: {exc.strerror}") from None
        sinks.observers.append(ObserveSink(collector.observe))
    board_sink = None
    if opts.board_on and follower:
        sinks.observers.append(ObserveSink(lambda item: None))
    elif opts.board_on:
        board_sink = BoardSink(Board())
        sinks.observers.append(board_sink)

    if opts.config_path is not None and hasattr(signal, "SIGHUP"):
        reload = _reload_stage(opts.config_path, control)
        signal.signal(signal.SIGHUP, reload)
        if _HUP_EARLY.is_set():  # the file may have changed after it was read at start-up
            reload(signal.SIGHUP, None)

    total = len(opts.addresses or [None]) * opts.workers

    def resumed(notes: list[str]) -> None:
        _say(f"resumed from {opts.recovery_dir}" + (f": {'; '.join(notes)}" if notes else ""))

    journal = None
    if opts.recovery_dir:
        from pipeline.io.journal import JournalError, VerdictJournal

        try:
            journal = VerdictJournal(Path(opts.recovery_dir))
        except JournalError as exc:
            raise UsageError(f"--recovery-dir {exc}") from None
    flow = build_flow(cfg, src, sinks, partitions=partition_ids, control=control, clock=clock,
                      health=health, workers=total, on_resume=resumed, journal=journal)
    recovery = None
    if opts.recovery_dir:
        from bytewax.recovery import RecoveryConfig

        recovery = RecoveryConfig(Path(opts.recovery_dir))  # type: ignore[no-untyped-call]
    if STOP.is_set():  # a stop signal during start-up: nothing read, nothing to save
        _signal_followers()
        _say("stopped before the run started: nothing read"
             + (f"; {opts.recovery_dir} is as the last run left it" if opts.recovery_dir else ""))
        return 1 if failure() else 0
    started = time.perf_counter()
    stopped = forced = False
    previous = {sig: signal.signal(sig, _stop_gracefully) for sig in (signal.SIGTERM, signal.SIGINT)}
    watcher = (recovery_mod.watch(Path(opts.recovery_dir), total)
               if opts.recovery_dir and opts.process_id == 0 else None)
    try:
        with _without_panic_noise():
            cli_main(flow, workers_per_process=opts.workers,  # type: ignore[no-untyped-call]
                     process_id=opts.process_id if opts.addresses else None, addresses=opts.addresses,
                     epoch_interval=timedelta(seconds=opts.snapshot_interval_s),
                     recovery_config=recovery)
        stopped = STOP.is_set()
    except KeyboardInterrupt:
        _signal_followers()
        stopped = forced = True  # a second Ctrl-C / SIGTERM: ended at once, no final snapshot
    except Exception as exc:  # the dataflow failed; report it in one line
        if _caused_by_interrupt(exc):
            _signal_followers()
            stopped = forced = True
        else:
            if board_sink is not None:
                board_sink.stop()
            root = _root(exc)
            if isinstance(root, OutputMismatch):  # the files, not the run, need the user: like bad usage
                _say(f"error: {root}")
                return 2
            cause = str(root) if isinstance(root, OutputWriteError) else _root_cause(exc)
            explained = recovery_mod.explain(cause, opts.recovery_dir) if opts.recovery_dir else None
            _say(f"run failed: {explained or cause}")
            return 1
    finally:
        if watcher is not None:
            watcher.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for timer in _TIMERS:
            timer.cancel()
    if board_sink is not None:
        board_sink.stop()
    reason = failure()
    if opts.process_id:
        return 1 if reason else 0  # process 0 holds the judge and reports the run
    elapsed = time.perf_counter() - started
    last = tally.verdict
    dead_total = sum(tally.dead.values())
    dead_note = ", ".join(f"{k} {n}" for k, n in sorted(tally.dead.items()))
    _say(
        ("stopped: " if stopped else "")
        + f"{tally.events} events in {elapsed:.1f} s ({tally.events / max(elapsed, 1e-9):,.0f}/s), "
        f"{tally.verdicts} verdicts"
        + (f", last {last.decision} at {last.to_record()['window_end']}" if last else "")
        + f"; {dead_total} dead letters" + (f" ({dead_note}) -> {opts.dead}" if dead_total else "")
        + ("" if opts.verdicts else "; verdicts were only shown (pass --verdicts PATH to keep them)")
        + _what_was_saved(opts.recovery_dir, stopped, forced)
    )
    if reason:
        _say(f"run failed: {reason}")
        return 1
    return 130 if forced else 0


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
        if target and target != "-" and not target.startswith("kafka://"):
            return str(Path(target).parent / name)
    return name


# What Bytewax's Rust side prints when a Python exception or a failed recovery-database
# call ends the dataflow: a "panicked at" line, the panic's message (which may run over
# several lines), then the RUST_BACKTRACE note.  The cause is reported in one line after
# the run.
_PANIC_START = re.compile(rb"^thread '.*' panicked at ")
_PANIC_END = re.compile(rb"^note: run with `RUST_BACKTRACE")
_PANIC_MAX_LINES = 40  # a panic with no closing note stops hiding lines after this many


@contextlib.contextmanager
def _without_panic_noise() -> Iterator[None]:
    """Forward stderr through a filter that drops Rust panic lines (set CANARY_GATE_DEBUG=1 to keep)."""
    if os.environ.get("CANARY_GATE_DEBUG"):
        yield
        return
    os.environ["RUST_BACKTRACE"] = "0"
    sys.stderr.flush()
    saved = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def forward() -> None:
        hiding = 0  # lines left to hide of the panic being printed
        with os.fdopen(read_end, "rb") as lines:
            for line in lines:
                if _PANIC_START.match(line):
                    hiding = _PANIC_MAX_LINES
                elif hiding:
                    hiding = 0 if _PANIC_END.match(line) else hiding - 1
                elif not line.startswith(b"Box<dyn Any>"):
                    os.write(saved, line)

    pump = threading.Thread(target=forward, name="canary-gate-stderr", daemon=True)
    pump.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # closes the pipe's last writer: the pump drains and ends
        pump.join(timeout=5)
        os.close(saved)


_HUP_EARLY = threading.Event()  # a SIGHUP came before the run could apply one


def _catch_signals_early() -> None:
    """Own SIGTERM, SIGINT and SIGHUP from the start of `run`, before anything slow.

    Importing Bytewax, reaching a broker and opening the recovery directory
    take a while; a stop or reload signal in that time must not kill the
    process with the default action.  A stop is remembered (the run then
    ends before it starts, exit 0) and a reload is applied once the run's
    stage control exists.
    """
    signal.signal(signal.SIGTERM, _stop_gracefully)
    signal.signal(signal.SIGINT, _stop_gracefully)
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, lambda signum, frame: _HUP_EARLY.set())


def _reload_stage(path: str, control: Any) -> Callable[[int, FrameType | None], None]:
    def handler(signum: int, frame: FrameType | None) -> None:
        try:
            new = config_mod.load(path)
        except config_mod.ConfigError as exc:
            _say(f"SIGHUP: config not reloaded: {exc}")
            return
        except Exception as exc:  # a reload must never end a live run
            _say(f"SIGHUP: config not reloaded: {type(exc).__name__}: {exc}")
            return
        if new.stage != control.stage:
            _say(f"SIGHUP: stage {control.stage} -> {new.stage} (promotion clock restarts; "
                 "evidence and any latched stop start afresh)")
            control.stage = new.stage
        changed = [k for k, v in new.effective().items() if k != "rollout" and v != control.base.get(k)]
        changed += [f"rollout.{k}" for k, v in new.effective()["rollout"].items()
                    if k != "stage" and v != control.base["rollout"][k]]
        if changed:
            _say(f"SIGHUP: only the stage is applied while running; restart to apply {', '.join(changed)}")

    return handler


_FOLLOWERS: list[subprocess.Popen[bytes]] = []  # processes 1..N-1 of a local cluster


STOP_GRACE_S = 10.0  # a graceful stop that takes longer than this becomes an immediate one


def _stop_gracefully(signum: int, frame: FrameType | None) -> None:
    """First SIGTERM / Ctrl-C: end the input, flush outputs, take a final snapshot; second: at once."""
    _signal_followers()
    if STOP.is_set():
        raise KeyboardInterrupt
    STOP.set()
    at_terminal = sys.stdin is not None and sys.stdin.isatty()  # None: started with stdin closed
    _say("stopping: flushing outputs" + (" (again to stop at once)" if at_terminal else ""))

    def overdue() -> None:  # e.g. a sink waiting on an unreachable broker
        _say(f"graceful stop took over {STOP_GRACE_S:g} s: stopping at once")
        signal.raise_signal(signal.SIGINT)

    timer = threading.Timer(STOP_GRACE_S, overdue)
    timer.daemon = True
    timer.start()
    _TIMERS.append(timer)


_TIMERS: list[threading.Timer] = []  # the graceful stop's deadline, cancelled once the run ended


def _signal_followers() -> None:
    """A stop of process 0 stops its followers too (the cluster ends together)."""
    for proc in _FOLLOWERS:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)


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


def cmd_check_config(args: argparse.Namespace) -> int:
    """Validate a config; print every effective setting as JSON."""
    cfg = config_mod.load(args.config)
    print(json.dumps(cfg.effective(), indent=2, ensure_ascii=False))
    return 0


def _open_out(path: str) -> IO[bytes]:
    if path == "-":
        return sys.stdout.buffer
    _writable(path, "--out")
    if path.endswith(".gz"):
        return gzip.open(path, "wb", compresslevel=6)  # type: ignore[return-value]
    return open(path, "wb")


def _generate_format(out: str, fmt: str | None) -> str:
    """The format `generate` writes: --format, else parquet for a .parquet path; checked against --out."""
    parquet_path = out.lower().endswith(".parquet")
    if fmt is None:
        return "parquet" if parquet_path else "jsonl"
    if fmt == "parquet":
        if out == "-" or out.startswith("kafka://"):
            raise UsageError(f"--format parquet writes a file: --out must be a .parquet path, got {out!r}")
        if not parquet_path:
            raise UsageError(f"--format parquet: --out must end with .parquet (archives are read by "
                             f"their suffix), got {out!r}")
    elif parquet_path:
        raise UsageError(f"--format jsonl: --out {out} ends with .parquet; use a .jsonl path or "
                         "--format parquet")
    return fmt


def cmd_generate(args: argparse.Namespace) -> int:
    """Write a scenario as JSONL or Parquet, or produce it to Kafka (and optionally write its config)."""
    if args.minutes < 1:
        raise UsageError(f"--minutes must be >= 1, got {args.minutes}")
    if not args.traffic_scale > 0:
        raise UsageError(f"--traffic-scale must be > 0, got {args.traffic_scale}")
    if args.rate < 0:
        raise UsageError(f"--rate must be >= 0, got {args.rate}")
    fmt = _generate_format(args.out, args.format)
    if fmt == "parquet":
        _writable(args.out, "--out")
    if args.config_out:
        _writable(args.config_out, "--config-out")
        Path(args.config_out).write_text(scenarios.scenario_config(args.scenario), encoding="utf-8")
    lines = scenarios.generate(args.scenario, args.seed, args.minutes, traffic_scale=args.traffic_scale)
    if args.out.startswith("kafka://"):
        return _produce(args, lines)
    if fmt == "parquet":
        from pipeline.replay.archive import write_parquet

        n = write_parquet(lines, args.out)
    else:
        out = _open_out(args.out)
        n = 0
        try:
            for line in lines:
                out.write(line + b"\n")
                n += 1
        finally:
            if out is not sys.stdout.buffer:
                out.close()
            else:
                out.flush()
    if args.out != "-":
        _say(f"wrote {n} events of scenario {args.scenario} (seed {args.seed}, "
             f"{args.minutes} min) to {args.out}")
    return 0


_STICKY = re.compile(rb'"sticky"\s*:\s*"([^"\\]*)"')


def _produce(args: argparse.Namespace, lines: Iterator[bytes]) -> int:
    """Produce a scenario to Kafka, keyed by sticky, at --rate events/s (0: as fast as possible)."""
    from confluent_kafka import KafkaException, Producer
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from pipeline.io import kafka

    try:
        url = kafka.parse_url(args.out, kafka.TELEMETRY_TOPIC)
        extra = kafka.load_client_config(args.kafka_config)
        if args.partitions < 1:
            raise UsageError(f"--partitions must be >= 1, got {args.partitions}")
        kafka.ensure_topic(url, extra, args.partitions)
    except kafka.KafkaSetupError as exc:
        _say(str(exc))
        return 1
    failures: list[str] = []

    def delivered(err: Any, msg: Any) -> None:
        if err is not None:
            failures.append(str(err))

    producer = Producer({**kafka.client_config(url, extra), "linger.ms": 20, "enable.idempotence": "true"})
    started = time.monotonic()
    with Progress(TextColumn("producing"), BarColumn(), TextColumn("{task.completed:,} events"),
                  TimeElapsedColumn(),
                  transient=False, disable=not sys.stderr.isatty(),
                  console=Console(stderr=True)) as progress:
        task = progress.add_task("produce", total=None)  # streamed: the total is not known up front
        n = 0
        for i, line in enumerate(lines):
            n = i + 1
            if args.rate > 0:
                delay = started + i / args.rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            m = _STICKY.search(line)
            while True:
                try:
                    producer.produce(url.topic, value=line, key=m.group(1) if m else None,
                                     on_delivery=delivered)
                    break
                except BufferError:
                    producer.poll(0.1)
                except KafkaException as exc:
                    _say(f"producing to {url}: {exc}")
                    return 1
            if i % 1000 == 0:
                producer.poll(0)
                progress.update(task, completed=i)
        left = producer.flush(60)
        progress.update(task, completed=n)
    if left or failures:
        _say(f"producing to {url} failed: {failures[0] if failures else f'{left} messages undelivered'}")
        return 1
    elapsed = time.monotonic() - started
    _say(f"produced {n} events of scenario {args.scenario} (seed {args.seed}, {args.minutes} min) "
         f"to {url} in {elapsed:.1f} s")
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    """Judge archives as one stream; write the timeline, dead letters, report and what-ifs."""
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    from pipeline.replay import archive, whatif
    from pipeline.replay import run as replay
    from pipeline.replay.report import render, safe_name

    cfg = config_mod.load(args.config)
    if args.batch_rows < 1:
        raise UsageError(f"--batch-rows must be >= 1, got {args.batch_rows}")
    base_text = config_mod.read_text(args.config)
    what_ifs = []
    for path in args.thresholds:
        try:
            what_ifs.append((path, whatif.what_if_config(base_text, config_mod.read_text(path))))
        except config_mod.ConfigError as exc:  # names the file itself when it could not be read
            raise UsageError(f"--thresholds {exc if exc.key == path else f'{path}: {exc}'}") from None
    out_dir = Path(args.out)
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out {out_dir}: not a directory")
    try:
        archives = archive.open_archives(args.archives, args.batch_rows, cfg.limits.max_event_bytes)
    except archive.ArchiveError as exc:
        raise UsageError(str(exc)) from None
    out_dir.mkdir(parents=True, exist_ok=True)
    base = out_dir / safe_name(cfg.name)
    paths = {kind: Path(f"{base}.{kind}.jsonl") for kind in ("verdicts", "dead-letters", "windows")}
    started = time.monotonic()
    with (open(paths["verdicts"], "wb") as verdicts, open(paths["dead-letters"], "wb") as dead,
          open(paths["windows"], "wb") as windows,
          Progress(TextColumn("replaying"), BarColumn(), DownloadColumn(),
                   TextColumn("{task.fields[events]}"), TimeRemainingColumn(), transient=True,
                   disable=not sys.stderr.isatty(), console=Console(stderr=True)) as progress):
        task = progress.add_task("replay", total=archives.total_bytes, events="")
        seen = [0]

        def advance(batch: replay.ArchiveBatch) -> None:
            seen[0] += len(batch.frame) + len(batch.dead)
            progress.update(task, advance=batch.done_bytes, events=f"{seen[0]:,} events")

        try:
            outcome = replay.replay(cfg, archives, verdicts=verdicts, dead_letters=dead, windows=windows,
                                    on_batch=advance)
        except archive.ArchiveError as exc:
            _say(f"{exc}; verdicts so far are in {paths['verdicts']}")
            return 1
    elapsed = time.monotonic() - started
    decisions = Counter(str(v.decision) for v in outcome.verdicts)
    first = whatif.first_stop(outcome.verdicts)
    _say(f"replayed {outcome.events:,} events from {len(archives.files)} archive(s) in {elapsed:.1f} s "
         f"({outcome.events / max(elapsed, 1e-9):,.0f} events/s): {len(outcome.verdicts)} verdicts ("
         + ", ".join(f"{d} {n}" for d, n in sorted(decisions.items())) + f"), first stop "
         f"{format_time(first.window_end) if first else 'never'}, {outcome.dead_letters} dead letters; "
         f"timeline in {paths['verdicts']}")
    records = []
    for path, alt_cfg in what_ifs:
        alt = list(whatif.rejudge(alt_cfg, outcome.kept))
        text, record = whatif.describe(Path(path).name, whatif.config_changes(cfg, alt_cfg),
                                       outcome.verdicts, alt)
        print(text)
        records.append(record)
        what_if_path = Path(f"{base}.what-if-{safe_name(Path(path).stem)}.verdicts.jsonl")
        what_if_path.write_bytes(b"".join(orjson.dumps(v.to_record()) + b"\n" for v in alt))
    if not args.no_report:
        page = render(out_dir, cfg, [v.to_record() for v in outcome.verdicts], outcome.windows,
                      records or None)
        _say(f"report in {page}")
    return 0


def entry() -> None:
    """Console-script wrapper.

    Once the command is done, stop signals are ignored: the interpreter's
    shutdown puts back the default actions of Python-level handlers, and a
    SIGTERM in that last moment would turn a finished run's exit 0 into 143.
    """
    code = main()
    for sig in (signal.SIGTERM, signal.SIGINT, getattr(signal, "SIGHUP", None)):
        if sig is not None:
            signal.signal(sig, signal.SIG_IGN)
    sys.exit(code)


if __name__ == "__main__":
    entry()
