"""The argument parser of every command (docs/cli.md documents each option)."""

from __future__ import annotations

import argparse
from typing import NoReturn

from pipeline import scenarios
from pipeline.cli.common import PROG, UsageError
from pipeline.io.chunk import BATCH_SIZE, FLEET_BATCH_SIZE


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def version() -> str:
    """The installed package's version (from pyproject.toml), or a note saying the tree is not installed."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed(PROG)
    except PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    """`canary-gate` and its commands; a parse error raises UsageError."""
    p = _Parser(prog=PROG, description="Streaming canary analysis for serverless and edge RAG services.")
    p.add_argument("--version", action="version", version=f"{PROG} {version()}",
                   help="print the version and exit")
    sub = p.add_subparsers(dest="command", parser_class=_Parser, metavar="COMMAND",
                           help="run without one for this help; COMMAND -h for its options")
    _add_run(sub.add_parser("run", help="judge a telemetry stream and publish verdicts"))
    check = sub.add_parser("check-config", help="validate a config and print the effective settings")
    check.add_argument("--config", required=True, help="rollout config (TOML) to validate")
    _add_generate(sub.add_parser("generate", help="write a deterministic synthetic telemetry scenario"))
    _add_replay(sub.add_parser(
        "replay", help="judge archived telemetry (JSONL, JSONL.gz, Parquet) as one stream; write the "
        "verdict timeline, dead letters and an HTML report"))
    return p


def _add_run(run: argparse.ArgumentParser) -> None:
    judged = run.add_mutually_exclusive_group(required=True)
    judged.add_argument("--config", help="rollout config (TOML): one rollout, judged from every event")
    judged.add_argument("--rollouts", metavar="DIR|kafka://HOST:PORT/TOPIC",
                        help="fleet mode: judge every rollout of DIR (one *.toml each, its [match] "
                        "saying which events are its own), or of a compacted topic of rollout configs "
                        "(key: rollout name, value: the TOML; a tombstone removes); changes apply at "
                        "the next batch and on SIGHUP (docs/fleet.md)")
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
    run.add_argument("--batch-size", type=int,
                     help=f"messages per micro-batch, at most (a read takes what has arrived; default "
                     f"{BATCH_SIZE}, with --rollouts {FLEET_BATCH_SIZE})")
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


def _add_generate(gen: argparse.ArgumentParser) -> None:
    gen.add_argument("--scenario", required=True, choices=sorted(scenarios.SCENARIOS),
                     metavar="NAME", help="one of: " + ", ".join(sorted(scenarios.SCENARIOS)))
    gen.add_argument("--seed", type=int, default=1,
                     help="random seed: the same scenario, seed and minutes give the same events (default 1)")
    gen.add_argument("--minutes", type=int, default=20, help="minutes of event time to generate (default 20)")
    gen.add_argument("--traffic-scale", type=float, default=1.0,
                     help="multiply user request rates (e.g. 100 for a load test)")
    gen.add_argument("--experiment", default=scenarios.EXPERIMENT,
                     help=f"x_exp of user requests and probes (default {scenarios.EXPERIMENT}); one per "
                     "rollout to try a fleet (run --rollouts)")
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


def _add_replay(replay: argparse.ArgumentParser) -> None:
    judged = replay.add_mutually_exclusive_group(required=True)
    judged.add_argument("--config", help="rollout config (TOML) to judge the archives under")
    judged.add_argument("--rollouts", metavar="DIR|kafka://HOST:PORT/TOPIC",
                        help="fleet mode: judge every rollout of DIR (one *.toml each with its [match]), "
                        "or of a compacted topic of rollout configs, over the archives, read once; one "
                        "timeline and report per rollout (docs/fleet.md)")
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
