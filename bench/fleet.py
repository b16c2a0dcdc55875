"""Fleet mode: N concurrent rollouts over one stream against one rollout over the same events.

The stream interleaves N rollouts' telemetry in event-time order, as one
topic carries it: rollout i is the healthy scenario with x_exp "exp-<i>"
(every rollout at the same rate, --events in total).  Side by side, over the
same bytes, several rounds:

(a) one rollout judging every event (a config without [match]), the stream's pure core
    (decode + summarise, feed the judge) and the Bytewax dataflow;
(b) the fleet: N rollout files, each matching its x_exp; the pure core (route the chunk,
    feed each rollout's judge) and the fleet dataflow (`build_fleet_flow`).

Each side reads at its own default batch size (`io/chunk.py`: 20,000 messages
for one rollout, 100,000 for a fleet, whose summary costs per rollout and window);
the pure core of one rollout is also run at the fleet's batch size, for the
ratio at equal batches.  Prints events/s and the ratios b/a (the goal: >= 0.8).  With
--memory, peak RSS of the fleet dataflow, each in its own process, for
rollouts x events, to show memory follows active rollouts, not events.

    .venv/bin/python bench/fleet.py [--rollouts 50] [--events 1000000] [--rounds 3] [--memory]
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _data import DATA  # noqa: E402
from bytewax.testing import TestingSink, TestingSource, run_main  # noqa: E402

from pipeline import config as config_mod  # noqa: E402
from pipeline import scenarios  # noqa: E402
from pipeline.engine import Engine  # noqa: E402
from pipeline.feed import ChunkEvents, Feeder, decode_chunk, route_chunk  # noqa: E402
from pipeline.fleet import Router  # noqa: E402
from pipeline.flow import Sinks, build_fleet_flow, build_flow  # noqa: E402
from pipeline.io.chunk import BATCH_SIZE, FLEET_BATCH_SIZE, Chunk  # noqa: E402
from pipeline.io.observe import ObserveSink  # noqa: E402
from pipeline.io.rollouts import FleetControl  # noqa: E402

SCENARIO = "healthy"
# Each rollout at ~30 user requests/s per variant and region: a fleet of 50 is ~50x that in all.
PER_ROLLOUT_SCALE = 10.0


MEMORY_HORIZON_S = 120  # --memory: a 2-window horizon, so even the shorter stream fills it


def _config(name: str | None, horizon_s: int | None = None) -> str:
    text = scenarios.scenario_config(SCENARIO)
    if horizon_s is not None:
        text = text.replace("horizon_s = 600", f"horizon_s = {horizon_s}")
    if name is None:
        return text
    return text.replace('name = "chat-rag-v2"', f'name = "{name}"') + f'\n[match]\nx_exp = "exp-{name}"\n'


def stream(rollouts: int, events: int) -> list[bytes]:
    """`events` lines of `rollouts` interleaved in event-time order (cached under bench/data)."""
    return stream_file(rollouts, events).read_bytes().splitlines()


def stream_file(rollouts: int, events: int) -> Path:
    """The file of `stream`, generated once."""
    DATA.mkdir(parents=True, exist_ok=True)
    path = DATA / f"fleet-{rollouts}-{events}.jsonl"
    if not path.exists():
        per_minute = sum(1 for _ in scenarios.generate(SCENARIO, 1, 2, traffic_scale=PER_ROLLOUT_SCALE)) / 2
        minutes = max(1, int(events / rollouts / per_minute) + 1)
        print(f"generating {events:,} events of {rollouts} rollouts ({minutes} min)...", flush=True)

        def keyed(i: int):  # type: ignore[no-untyped-def]
            lines = scenarios.generate(SCENARIO, i + 1, minutes, traffic_scale=PER_ROLLOUT_SCALE,
                                       experiment=f"exp-r{i}")
            for n, line in enumerate(lines):
                yield (n / per_minute, i, line)  # delivery order within a rollout; rollouts at one pace

        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            for n, (_, _, line) in enumerate(heapq.merge(*(keyed(i) for i in range(rollouts)))):
                if n >= events:
                    break
                f.write(line + b"\n")
        tmp.rename(path)
    return path


def _chunks(lines: list[bytes], batch: int) -> list[Chunk]:
    return [Chunk("0", lines[i : i + batch], "bench", i + 1, last=i + batch >= len(lines))
            for i in range(0, len(lines), batch)]


def single_core(lines: list[bytes], cfg: config_mod.Config, batch: int) -> int:
    feeder = Feeder(Engine(cfg))
    size, variants, max_bytes = cfg.windows.size_s, (cfg.control, cfg.canary), cfg.limits.max_event_bytes
    for i in range(0, len(lines), batch):
        chunk = lines[i : i + batch]
        feeder.feed(decode_chunk(chunk, max_bytes, size, variants), ChunkEvents(chunk, str, max_bytes), "0")
    return len(feeder.engine.close())


def fleet_core(lines: list[bytes], cfgs: list[config_mod.Config], batch: int) -> int:
    router = Router(cfgs)
    feeders = {cfg.name: Feeder(Engine(cfg)) for cfg in cfgs}
    max_bytes = max(cfg.limits.max_event_bytes for cfg in cfgs)
    for chunk in _chunks(lines, batch):
        routed = route_chunk(chunk, router, cfgs, max_bytes)
        for name, (own, pieces) in routed.mine.items():
            feeders[name].feed(pieces, ChunkEvents(own.lines, own.locate, max_bytes), "0")
    return sum(len(f.engine.close()) for f in feeders.values())


def single_flow(lines: list[bytes], cfg: config_mod.Config, batch: int) -> int:
    out: list[object] = []
    run_main(build_flow(cfg, TestingSource(_chunks(lines, batch), batch_size=10), Sinks([TestingSink(out)])))
    return len(out)


def fleet_flow(lines: list[bytes], directory: Path, batch: int) -> int:
    out: list[object] = []
    control = FleetControl(directory)
    run_main(build_fleet_flow(control, TestingSource(_chunks(lines, batch), batch_size=10),
                              Sinks([TestingSink(out)])))
    return len(out)


def _rate(fn, *args) -> float:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    verdicts = fn(*args)
    elapsed = time.perf_counter() - started
    assert verdicts, f"{fn.__name__} judged nothing"
    return len(args[0]) / elapsed


def _lazy_chunks(path: Path, batch: int) -> Iterator[Chunk]:
    """The file's lines in chunks, read as the dataflow asks for them (the input is not held)."""
    with open(path, "rb") as f:
        first = 1
        while True:
            lines = [line.rstrip(b"\n") for line in itertools.islice(f, batch)]
            if not lines:
                return
            yield Chunk("0", lines, "bench", first, last=len(lines) < batch)
            first += len(lines)


def _memory(rollouts: int, events: int, batch: int) -> None:
    """Child mode: run the fleet dataflow once over the file read lazily; print its peak RSS in MB."""
    path = stream_file(rollouts, events)
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(rollouts):
            (Path(tmp) / f"r{i}.toml").write_text(_config(f"r{i}", MEMORY_HORIZON_S))
        seen = [0]  # outputs are counted, not kept: a kept Report holds its window's statistics

        def count(item: object) -> None:
            seen[0] += 1

        run_main(build_fleet_flow(FleetControl(Path(tmp)), TestingSource(_lazy_chunks(path, batch)),
                                  Sinks([ObserveSink(count)])))
        assert seen[0]
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over execve from the parent that started this process
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            print(int(line.split()[1]) / 1024)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rollouts", type=int, default=50)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=BATCH_SIZE, help="one rollout's batch size")
    ap.add_argument("--fleet-batch", type=int, default=FLEET_BATCH_SIZE, help="the fleet's batch size")
    ap.add_argument("--memory", action="store_true", help="also peak RSS for 10 and --rollouts rollouts x "
                    "--events/2 and --events events (one process each)")
    ap.add_argument("--child-memory", nargs=2, type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_memory:
        _memory(*args.child_memory, args.fleet_batch)
        return
    lines = stream(args.rollouts, args.events)
    one = config_mod.parse(_config(None))
    cfgs = [config_mod.parse(_config(f"r{i}")) for i in range(args.rollouts)]
    kinds = ("single core", "fleet core", "single flow", "fleet flow", "single core, fleet batch")
    rates: dict[str, list[float]] = {k: [] for k in kinds}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.rollouts):
            (Path(tmp) / f"r{i}.toml").write_text(_config(f"r{i}"))
        for r in range(args.rounds):
            rates["single core"].append(_rate(single_core, lines, one, args.batch))
            rates["fleet core"].append(_rate(fleet_core, lines, cfgs, args.fleet_batch))
            rates["single flow"].append(_rate(single_flow, lines, one, args.batch))
            rates["fleet flow"].append(_rate(fleet_flow, lines, Path(tmp), args.fleet_batch))
            rates["single core, fleet batch"].append(_rate(single_core, lines, one, args.fleet_batch))
            print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:,.0f}" for k, v in rates.items()), flush=True)
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(f"\n{len(lines):,} events, {args.rollouts} rollouts, batches {args.batch:,} (one rollout) and "
          f"{args.fleet_batch:,} (fleet), median of {args.rounds}:")
    for k, v in med.items():
        print(f"  {k:25s} {v:>10,.0f} ev/s")
    print(f"  fleet/single, each at its batch size: core {med['fleet core'] / med['single core']:.2f}, "
          f"dataflow {med['fleet flow'] / med['single flow']:.2f}; at equal batches: core "
          f"{med['fleet core'] / med['single core, fleet batch']:.2f}")
    if args.memory:
        print(f"\npeak RSS of the fleet dataflow, input read as it goes, {MEMORY_HORIZON_S} s horizon (MB):")
        for rollouts in (10, args.rollouts):
            for events in (args.events // 2, args.events):
                stream_file(rollouts, events)  # generated here, not in the measured process
                got = subprocess.run([sys.executable, __file__, "--child-memory", str(rollouts), str(events),
                                      "--fleet-batch", str(args.fleet_batch)], capture_output=True, text=True,
                                     check=True)
                print(f"  {rollouts:>3} rollouts, {events:>9,} events: {float(got.stdout.split()[-1]):6.0f}",
                      flush=True)


if __name__ == "__main__":
    main()
