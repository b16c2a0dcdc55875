"""`canary-gate generate`: a deterministic synthetic scenario as JSONL, Parquet or Kafka messages."""

from __future__ import annotations

import argparse
import gzip
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from pipeline import scenarios
from pipeline.cli.common import UsageError, is_kafka, say, writable


def cmd_generate(args: argparse.Namespace) -> int:
    """Write a scenario as JSONL or Parquet, or produce it to Kafka (and optionally write its config)."""
    _check(args)
    fmt = _generate_format(args.out, args.format)
    if fmt == "parquet":
        writable(args.out, "--out")
    if args.config_out:
        writable(args.config_out, "--config-out")
        Path(args.config_out).write_text(scenarios.scenario_config(args.scenario), encoding="utf-8")
    lines = scenarios.generate(args.scenario, args.seed, args.minutes, traffic_scale=args.traffic_scale,
                               experiment=args.experiment)
    if is_kafka(args.out):
        return _produce(args, lines)
    if fmt == "parquet":
        from pipeline.replay.archive import write_parquet

        n = write_parquet(lines, args.out)
    else:
        n = _write_jsonl(args.out, lines)
    if args.out != "-":
        say(f"wrote {n} events of scenario {args.scenario} (seed {args.seed}, "
            f"{args.minutes} min) to {args.out}")
    return 0


def _check(args: argparse.Namespace) -> None:
    if args.minutes < 1:
        raise UsageError(f"--minutes must be >= 1, got {args.minutes}")
    if not args.traffic_scale > 0:
        raise UsageError(f"--traffic-scale must be > 0, got {args.traffic_scale}")
    if args.rate < 0:
        raise UsageError(f"--rate must be >= 0, got {args.rate}")
    if not args.experiment:
        raise UsageError("--experiment must not be empty")


def _generate_format(out: str, fmt: str | None) -> str:
    """The format `generate` writes: --format, else parquet for a .parquet path; checked against --out."""
    parquet_path = out.lower().endswith(".parquet")
    if fmt is None:
        return "parquet" if parquet_path else "jsonl"
    if fmt == "parquet":
        if out == "-" or is_kafka(out):
            raise UsageError(f"--format parquet writes a file: --out must be a .parquet path, got {out!r}")
        if not parquet_path:
            raise UsageError(f"--format parquet: --out must end with .parquet (archives are read by "
                             f"their suffix), got {out!r}")
    elif parquet_path:
        raise UsageError(f"--format jsonl: --out {out} ends with .parquet; use a .jsonl path or "
                         "--format parquet")
    return fmt


def _open_out(path: str) -> IO[bytes]:
    if path == "-":
        return sys.stdout.buffer
    writable(path, "--out")
    if path.endswith(".gz"):
        return gzip.open(path, "wb", compresslevel=6)  # type: ignore[return-value]
    return open(path, "wb")


def _write_jsonl(path: str, lines: Iterator[bytes]) -> int:
    """Write the lines to a JSONL file (.gz compresses) or stdout; how many."""
    out = _open_out(path)
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
    return n


def _produce(args: argparse.Namespace, lines: Iterator[bytes]) -> int:
    """Produce a scenario to Kafka, keyed by sticky, at --rate events/s (0: as fast as possible)."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from pipeline.io import kafka

    if args.partitions < 1:
        raise UsageError(f"--partitions must be >= 1, got {args.partitions}")
    started = time.monotonic()
    try:
        url = kafka.parse_url(args.out, kafka.TELEMETRY_TOPIC)
        extra = kafka.load_client_config(args.kafka_config)
        with Progress(TextColumn("producing"), BarColumn(), TextColumn("{task.completed:,} events"),
                      TimeElapsedColumn(), transient=False, disable=not sys.stderr.isatty(),
                      console=Console(stderr=True)) as progress:
            task = progress.add_task("produce", total=None)  # streamed: the total is not known up front
            n = kafka.produce(url, extra, lines, rate=args.rate, num_partitions=args.partitions,
                              on_batch=lambda done: progress.update(task, completed=done))
    except kafka.KafkaSetupError as exc:
        say(str(exc))
        return 1
    say(f"produced {n} events of scenario {args.scenario} (seed {args.seed}, {args.minutes} min) "
        f"to {url} in {time.monotonic() - started:.1f} s")
    return 0
