"""canary-gate command line (SPEC section 5).

Exit codes: 0 done; 2 bad usage or bad config (one line on stderr, no
traceback); 1 runtime failure.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
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
from pipeline.io.lifecycle import STOP, failure
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
    if args.recovery_dir:
        _prepare_recovery(Path(args.recovery_dir), cfg, {
            "rollout": cfg.name, "workers": total, "source": args.source,
            "verdicts": verdicts, "dead_letters": dead})
    board_on = args.board == "on" or (args.board == "auto" and interactive and verdicts != "-")
    options = RunOptions(
        verdicts=verdicts, dead=dead, metrics_port=args.metrics_port, metrics_addr=args.metrics_addr,
        workers=args.workers, batch_size=args.batch_size, board_on=board_on, config_path=args.config,
        until_end=args.until_end, starting_offset=args.starting_offset, kafka_config=args.kafka_config,
        addresses=addresses, process_id=process_id, recovery_dir=args.recovery_dir,
        snapshot_interval_s=args.snapshot_interval, broker_timeout_s=args.broker_timeout)
    followers = (_start_followers([*args.argv, "--board", "on" if board_on else "off"], addresses)
                 if args.processes > 1 else [])
    try:
        code = run_pipeline(cfg, args.source, options)
    finally:
        code_of_followers = _stop_followers(followers)
    return code or code_of_followers


RECOVERY_FILE = "canary-gate.json"  # what a recovery directory holds state of


def _prepare_recovery(path: Path, cfg: config_mod.Config, run: dict[str, Any]) -> None:
    """Create a recovery directory, or check that this run may resume from it.

    The state in it is partitioned by worker count and tied to the source, the
    outputs (file outputs are cut back to their snapshot length) and the
    config's windows and limits; a run that differs in any of them would
    resume wrongly, so it is refused with the difference named.
    """
    source, verdicts, dead = run["source"], run["verdicts"], run["dead_letters"]
    if source == "-":
        raise UsageError("--recovery-dir needs a file or Kafka source: stdin cannot be read again")
    for target, flag in ((verdicts, "--verdicts"), (dead, "--dead-letters")):
        if target and target.endswith(".gz"):
            raise UsageError(f"{flag} {target}: a gzip output cannot be cut back to a snapshot; "
                             "with --recovery-dir write plain JSONL")
    def file_of(target: str | None) -> str | None:  # only file outputs are cut back on resume
        return None if not target or target == "-" or target.startswith("kafka://") else str(
            Path(target).resolve())

    run = {**run, "source": source if source.startswith("kafka://") else str(Path(source).resolve()),
           "verdicts": file_of(verdicts), "dead_letters": file_of(dead)}
    expected = {**run, "fixed": {"control": cfg.control, "canary": cfg.canary,
                                 "windows": dataclasses.asdict(cfg.windows),
                                 "limits": dataclasses.asdict(cfg.limits)}}
    marker = path / RECOVERY_FILE
    if marker.exists():
        try:
            found = json.loads(marker.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise UsageError(f"--recovery-dir {path}: unreadable {RECOVERY_FILE}: {exc}") from None
        want, have = _flat(expected), _flat(found)
        differ = [k for k in want if have.get(k) != want[k]]
        if differ:
            was = ", ".join(f"{k} {have.get(k)}" for k in differ)
            now = ", ".join(f"{k} {want[k]}" for k in differ)
            raise UsageError(f"--recovery-dir {path} holds a run with {was}; this run has {now}: "
                             "resume with the same, or use a new directory")
        return
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise UsageError(f"--recovery-dir {path}: exists and is not a canary-gate recovery directory")
    from bytewax.recovery import init_db_dir

    try:
        path.mkdir(parents=True, exist_ok=True)
        init_db_dir(path, run["workers"])  # type: ignore[no-untyped-call]
    except (OSError, RuntimeError) as exc:
        raise UsageError(f"--recovery-dir {path}: cannot create: {exc}") from None
    marker.write_text(json.dumps(expected, indent=2) + "\n", encoding="utf-8")


def _flat(doc: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"fixed": {"windows": {"size_s": 60}}} -> {"windows.size_s": 60} (the "fixed" level dropped)."""
    out: dict[str, Any] = {}
    for key, value in doc.items():
        name = f"{prefix}{key}" if key != "fixed" else prefix.rstrip(".")
        if isinstance(value, dict):
            out.update(_flat(value, f"{name}." if name else ""))
        else:
            out[name] = value
    return out


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
    from pipeline.io.files import JsonlSink, JsonlSource, dead_letter_line, verdict_line
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
                spill = f"{cfg.name.replace('/', '_')}.undelivered-{kind}.jsonl"
                return kafka.KafkaProducerSink(out, extra, render_message, opts.broker_timeout_s,
                                               render_line=render_line, spill=spill)
            return JsonlSink(target, render_line)

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
        signal.signal(signal.SIGHUP, _reload_stage(opts.config_path, control))

    total = len(opts.addresses or [None]) * opts.workers

    def resumed(notes: list[str]) -> None:
        _say(f"resumed from {opts.recovery_dir}" + (f": {'; '.join(notes)}" if notes else ""))

    flow = build_flow(cfg, src, sinks, partitions=partition_ids, control=control, clock=clock,
                      health=health, workers=total, on_resume=resumed)
    recovery = None
    if opts.recovery_dir:
        from bytewax.recovery import RecoveryConfig

        recovery = RecoveryConfig(Path(opts.recovery_dir))  # type: ignore[no-untyped-call]
    started = time.perf_counter()
    stopped = False
    previous = {sig: signal.signal(sig, _stop_gracefully) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        with _without_panic_noise():
            cli_main(flow, workers_per_process=opts.workers,  # type: ignore[no-untyped-call]
                     process_id=opts.process_id if opts.addresses else None, addresses=opts.addresses,
                     epoch_interval=timedelta(seconds=opts.snapshot_interval_s),
                     recovery_config=recovery)
        stopped = STOP.is_set()
    except KeyboardInterrupt:
        _signal_followers()
        stopped = True  # a second Ctrl-C / SIGTERM: ended at once, no final snapshot
    except Exception as exc:  # the dataflow failed; report it in one line
        if _caused_by_interrupt(exc):
            _signal_followers()
            stopped = True
        else:
            if board_sink is not None:
                board_sink.stop()
            _say(f"run failed: {_root_cause(exc)}")
            return 1
    finally:
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
        + (f"; open windows wait in {opts.recovery_dir}" if stopped and opts.recovery_dir and not reason
           else "")
    )
    if reason:
        _say(f"run failed: {reason}")
        return 1
    return 0


# What Bytewax's Rust side prints when a Python exception ends the dataflow; the
# exception itself is reported in one line after the run.
_PANIC_NOISE = re.compile(rb"^(thread '.*' panicked at |Box<dyn Any>|note: run with `RUST_BACKTRACE)")


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
        with os.fdopen(read_end, "rb") as lines:
            for line in lines:
                if not _PANIC_NOISE.match(line):
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


def _reload_stage(path: str, control: Any) -> Callable[[int, FrameType | None], None]:
    def handler(signum: int, frame: FrameType | None) -> None:
        try:
            new = config_mod.load(path)
        except config_mod.ConfigError as exc:
            _say(f"SIGHUP: config not reloaded: {exc}")
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


def _root_cause(exc: BaseException) -> str:
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
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
        from pipeline.archive import write_parquet

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

    from pipeline import archive, replay
    from pipeline.report import render, safe_name

    cfg = config_mod.load(args.config)
    if args.batch_rows < 1:
        raise UsageError(f"--batch-rows must be >= 1, got {args.batch_rows}")
    base_text = Path(args.config).read_text(encoding="utf-8")
    what_ifs = []
    for path in args.thresholds:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"--thresholds {path}: cannot read: {exc.strerror or exc}") from None
        try:
            what_ifs.append((path, replay.what_if_config(base_text, text)))
        except config_mod.ConfigError as exc:
            raise UsageError(f"--thresholds {path}: {exc}") from None
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
    first = replay.first_stop(outcome.verdicts)
    _say(f"replayed {outcome.events:,} events from {len(archives.files)} archive(s) in {elapsed:.1f} s "
         f"({outcome.events / max(elapsed, 1e-9):,.0f} events/s): {len(outcome.verdicts)} verdicts ("
         + ", ".join(f"{d} {n}" for d, n in sorted(decisions.items())) + f"), first stop "
         f"{format_time(first.window_end) if first else 'never'}, {outcome.dead_letters} dead letters; "
         f"timeline in {paths['verdicts']}")
    records = []
    for path, alt_cfg in what_ifs:
        alt = list(replay.rejudge(alt_cfg, outcome.kept))
        text, record = replay.describe(Path(path).name, replay.config_changes(cfg, alt_cfg),
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
    """Console-script wrapper."""
    sys.exit(main())


if __name__ == "__main__":
    entry()
