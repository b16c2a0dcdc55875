"""Replay throughput over a Parquet archive, on one core, side by side with its floor.

(a) floor: polars reads the archive's columns, nothing else;
(b) canary-gate replay: read, validate, aggregate per window and judge every window
    (the `replay` command's path without the HTML report);
(c) the stream's pure core (decode + partial aggregates + judge) over the same
    events as JSONL, for scale (first --core-events events only: it is ~10x slower).
All on one core (the process is pinned to one CPU and polars to one thread), after
one untimed replay as warm-up.  Prints per-round figures, medians, the ratios b/a and
b/c, and the target (>= 1M events/s).

    .venv/bin/python bench/replay.py [--events 5000000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import time
from pathlib import Path

os.environ["POLARS_MAX_THREADS"] = "1"  # before polars is imported: one core, as the target says
if hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import polars as pl  # noqa: E402
import throughput  # noqa: E402
from _data import lines_file  # noqa: E402

from pipeline import config as config_mod  # noqa: E402
from pipeline import scenarios  # noqa: E402
from pipeline.replay import archive  # noqa: E402
from pipeline.replay import run as replay  # noqa: E402

SCENARIO = "healthy"
TARGET = 1_000_000


def lines_of(events: int) -> Path:
    """`events` JSONL lines of the scenario (cached under bench/data)."""
    return lines_file(SCENARIO, events)


def parquet_of(events: int) -> Path:
    """The same events as a Parquet archive (`canary-gate generate --format parquet`'s layout)."""
    path = lines_of(events).with_suffix(".parquet")
    if not path.exists():
        source = lines_of(events)
        print(f"writing {path.name}...", flush=True)
        with open(source, "rb") as f:
            archive.write_parquet((line.rstrip(b"\n") for line in f), path)
    return path


def floor(path: Path, cfg: config_mod.Config) -> int:
    """Read every column of the archive with polars; nothing else."""
    return pl.read_parquet(path).height


def run_replay(path: Path, cfg: config_mod.Config) -> int:
    sink = io.BytesIO()
    outcome = replay.replay(cfg, archive.open_archives([str(path)], max_bytes=cfg.limits.max_event_bytes),
                            verdicts=sink, dead_letters=sink, windows=sink)
    assert outcome.verdicts, "the replay judged no window"
    return outcome.events


def core(lines: list[bytes], cfg: config_mod.Config) -> int:
    """The stream's path without Bytewax: decode, summarise per micro-batch, judge."""
    throughput.core(lines, cfg)
    return len(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=5_000_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--core-events", type=int, default=500_000)
    args = ap.parse_args()
    cfg = config_mod.parse(scenarios.scenario_config(SCENARIO))
    path = parquet_of(args.events)
    with open(lines_of(args.events), "rb") as f:
        head = [line.rstrip(b"\n") for _, line in zip(range(args.core_events), f, strict=False)]
    print(f"{args.events:,} events, {path.stat().st_size / 1e6:.0f} MB Parquet; one core "
          f"(CPU {sorted(os.sched_getaffinity(0))}), polars threads {pl.thread_pool_size()}")
    run_replay(path, cfg)  # warm-up, not timed: the first pass also pays for the allocator's growth
    rates: dict[str, list[float]] = {"a": [], "b": [], "c": []}
    for r in range(args.rounds):
        for key, fn, arg in (("a", floor, path), ("b", run_replay, path), ("c", core, head)):
            started = time.perf_counter()
            n = fn(arg, cfg)  # type: ignore[operator]
            rates[key].append(n / (time.perf_counter() - started))
        print(f"round {r + 1}: (a) read {rates['a'][-1]:,.0f} ev/s  (b) replay {rates['b'][-1]:,.0f} ev/s  "
              f"(c) stream core {rates['c'][-1]:,.0f} ev/s", flush=True)
    a, b, c = (statistics.median(rates[k]) for k in "abc")
    print(f"median: (a) {a:,.0f}  (b) {b:,.0f}  (c) {c:,.0f} ev/s")
    print(f"b/a {b / a:.2f}  b/c {b / c:.1f}")
    print(f"replay {b:,.0f} events/s on one core: target {TARGET:,} {'met' if b >= TARGET else 'MISSED'}")


if __name__ == "__main__":
    main()
