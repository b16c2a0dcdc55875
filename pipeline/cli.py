"""canary-gate command line (SPEC section 5).

Exit codes: 0 done; 2 bad usage or bad config (one line on stderr, no
traceback); 1 runtime failure.
"""

from __future__ import annotations

import argparse
import gzip
import json
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import IO, Any, NoReturn

from pipeline import config as config_mod
from pipeline import scenarios

PROG = "canary-gate"


class UsageError(Exception):
    """Bad usage: reported as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="Streaming canary analysis for serverless and edge RAG services.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="judge a telemetry stream and publish verdicts")
    run.add_argument("--config", required=True, help="rollout config (TOML)")
    run.add_argument("--source", required=True,
                     help="telemetry: a .jsonl or .jsonl.gz file, or '-' for stdin")
    run.add_argument("--verdicts", help="verdict JSONL path, or '-' for stdout "
                     "(default: stdout when it is not a terminal, else only the live board)")
    run.add_argument("--dead-letters", help="dead-letter JSONL path (default: beside the verdicts "
                     "file, or ./<rollout>.dead-letters.jsonl)")
    run.add_argument("--metrics-port", type=int, default=0,
                     help="serve Prometheus /metrics on this port (0, the default, disables)")
    run.add_argument("--metrics-addr", default="0.0.0.0", help="address for --metrics-port")
    run.add_argument("--workers", type=int, default=1, help="worker threads (default 1)")
    run.add_argument("--batch-size", type=int, default=1000, help="messages per micro-batch")
    run.add_argument("--board", choices=("auto", "on", "off"), default="auto",
                     help="live terminal board (auto: when stdout is a terminal)")

    check = sub.add_parser("check-config", help="validate a config and print the effective settings")
    check.add_argument("--config", required=True)

    gen = sub.add_parser("generate", help="write a deterministic synthetic telemetry scenario")
    gen.add_argument("--scenario", required=True, choices=sorted(scenarios.SCENARIOS),
                     metavar="NAME", help="one of: " + ", ".join(sorted(scenarios.SCENARIOS)))
    gen.add_argument("--seed", type=int, default=1)
    gen.add_argument("--minutes", type=int, default=20)
    gen.add_argument("--traffic-scale", type=float, default=1.0,
                     help="multiply user request rates (e.g. 100 for a load test)")
    gen.add_argument("--out", required=True, help="JSONL path (.gz compresses) or '-' for stdout")
    gen.add_argument("--config-out", help="also write the rollout config the scenario is judged under")

    replay = sub.add_parser("replay", help="judge archived JSONL streams, one verdict file each")
    replay.add_argument("--config", required=True)
    replay.add_argument("archives", nargs="+", help=".jsonl or .jsonl.gz files")
    replay.add_argument("--out", required=True, help="directory for <archive>.verdicts.jsonl files")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    try:
        args = _parser().parse_args(argv)
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
        raise UsageError("--source kafka://... is not available in this build; use a JSONL file or '-'")
    if source != "-" and not Path(source).is_file():
        raise UsageError(f"--source {source}: no such file")
    if source != "-" and not source.endswith((".jsonl", ".jsonl.gz", ".json", ".ndjson")):
        raise UsageError(f"--source {source}: expected a .jsonl or .jsonl.gz file, or '-'")


def _writable(path: str, flag: str) -> None:
    if path == "-":
        return
    parent = Path(path).parent
    if not parent.is_dir():
        raise UsageError(f"{flag} {path}: directory {parent} does not exist")


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
    dead = args.dead_letters or (
        f"{_stem(verdicts)}.dead-letters.jsonl" if verdicts not in (None, "-")
        else f"{cfg.name.replace('/', '_')}.dead-letters.jsonl")
    for path, flag in ((verdicts, "--verdicts"), (dead, "--dead-letters")):
        if path:
            _writable(path, flag)
    board_on = args.board == "on" or (args.board == "auto" and interactive and verdicts != "-")
    return run_pipeline(cfg, args.source, verdicts=verdicts, dead=dead, metrics_port=args.metrics_port,
                        metrics_addr=args.metrics_addr, workers=args.workers,
                        batch_size=args.batch_size, board_on=board_on, config_path=args.config)


def run_pipeline(cfg: config_mod.Config, source: str, *, verdicts: str | None, dead: str,
                 metrics_port: int = 0, metrics_addr: str = "0.0.0.0", workers: int = 1,
                 batch_size: int = 1000, board_on: bool = False, config_path: str | None = None) -> int:
    """Build and run the dataflow over a JSONL source; print a one-line summary on stderr."""
    # Imported here so that check-config and generate start fast.
    from bytewax._bytewax import cli_main

    from pipeline.flow import Sinks, StageControl, build_flow
    from pipeline.io.board import Board, BoardSink
    from pipeline.io.files import JsonlSink, JsonlSource, dead_letter_line, verdict_line
    from pipeline.io.metrics import CanaryCollector, serve
    from pipeline.io.observe import ObserveSink

    tally = Board()
    sinks = Sinks(observers=[ObserveSink(tally.observe)])
    if verdicts:
        sinks.verdicts.append(JsonlSink(verdicts, verdict_line))
    sinks.dead_letters.append(JsonlSink(dead, dead_letter_line))
    if metrics_port:
        collector = CanaryCollector()
        try:
            serve(collector, metrics_port, metrics_addr)
        except OSError as exc:
            raise UsageError(f"--metrics-port {metrics_port}: cannot listen: {exc.strerror}") from None
        sinks.observers.append(ObserveSink(collector.observe))
    board_sink = None
    if board_on:
        board_sink = BoardSink(Board())
        sinks.observers.append(board_sink)

    control = StageControl(cfg.stage)
    if config_path is not None and hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, _reload_stage(config_path, control))

    flow = build_flow(cfg, JsonlSource(source, batch_size), sinks, control=control)
    started = time.perf_counter()
    try:
        cli_main(flow, workers_per_process=workers)  # type: ignore[no-untyped-call]
    except Exception as exc:  # the dataflow failed; report it in one line
        if board_sink is not None:
            board_sink.stop()
        _say(f"run failed: {_root_cause(exc)}")
        return 1
    if board_sink is not None:
        board_sink.stop()
    elapsed = time.perf_counter() - started
    last = tally.verdict
    dead_total = sum(tally.dead.values())
    dead_note = ", ".join(f"{k} {n}" for k, n in sorted(tally.dead.items()))
    _say(
        f"{tally.events} events in {elapsed:.1f} s ({tally.events / max(elapsed, 1e-9):,.0f}/s), "
        f"{tally.verdicts} verdicts"
        + (f", last {last.decision} at {last.to_record()['window_end']}" if last else "")
        + f"; {dead_total} dead letters" + (f" ({dead_note}) -> {dead}" if dead_total else "")
        + ("" if verdicts else "; verdicts were only shown (pass --verdicts PATH to keep them)")
    )
    return 0


def _reload_stage(path: str, control: Any) -> Callable[[int, FrameType | None], None]:
    def handler(signum: int, frame: FrameType | None) -> None:
        try:
            new = config_mod.load(path)
        except config_mod.ConfigError as exc:
            _say(f"SIGHUP: config not reloaded: {exc}")
            return
        if new.stage != control.stage:
            _say(f"SIGHUP: stage {control.stage} -> {new.stage} (promotion clock restarts)")
            control.stage = new.stage

    return handler


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


def cmd_generate(args: argparse.Namespace) -> int:
    """Write a scenario as JSONL (and optionally the config it is judged under)."""
    if args.minutes < 1:
        raise UsageError(f"--minutes must be >= 1, got {args.minutes}")
    if not args.traffic_scale > 0:
        raise UsageError(f"--traffic-scale must be > 0, got {args.traffic_scale}")
    if args.out.startswith("kafka://"):
        raise UsageError("--out kafka://... is not available in this build; use a path or '-'")
    if args.config_out:
        _writable(args.config_out, "--config-out")
        Path(args.config_out).write_text(scenarios.scenario_config(args.scenario), encoding="utf-8")
    out = _open_out(args.out)
    progress = _progress(args.minutes) if sys.stderr.isatty() and args.out != "-" else None
    n = 0
    try:
        minute_marks = 0
        for line in scenarios.generate(args.scenario, args.seed, args.minutes,
                                       traffic_scale=args.traffic_scale):
            out.write(line + b"\n")
            n += 1
            if progress is not None and n % 5000 == 0:
                minute_marks = progress(n, minute_marks)
    finally:
        if out is not sys.stdout.buffer:
            out.close()
        else:
            out.flush()
    if args.out != "-":
        _say(f"wrote {n} events of scenario {args.scenario} (seed {args.seed}, "
             f"{args.minutes} min) to {args.out}")
    return 0


def _progress(minutes: int) -> Callable[[int, int], int]:
    def show(n: int, marks: int) -> int:
        print(f"\r{PROG}: {n:,} events written", end="", file=sys.stderr, flush=True)
        return marks + 1

    return show


def cmd_replay(args: argparse.Namespace) -> int:
    """Judge each archive separately into DIR/<archive>.verdicts.jsonl."""
    cfg = config_mod.load(args.config)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    for archive in args.archives:
        _check_source(archive)
    for archive in args.archives:
        base = out_dir / Path(_stem(archive)).name
        code = run_pipeline(cfg, archive, verdicts=f"{base}.verdicts.jsonl",
                            dead=f"{base}.dead-letters.jsonl")
        if code:
            return code
    return 0


def entry() -> None:
    """Console-script wrapper."""
    sys.exit(main())


if __name__ == "__main__":
    entry()
