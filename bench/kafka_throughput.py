"""Kafka end to end: bare consume+parse vs canary-gate with 1 and 2 worker processes.

Starts its own broker (kafka-broker/broker.py), produces N generated events
(healthy scenario at 100x traffic) to a 4-partition topic, then measures, side
by side and over several rounds:

  (a) the best simple consumer reading what (b) reads, the way (b) reads it: one
      confluent-kafka Consumer per partition, built by the pipeline's own source
      (`KafkaTelemetrySource.build_part`, so the consumer settings are the
      pipeline's, not a copy), each assigned its partition from the low to the
      start-up high watermark, polled in turn with `consume(BATCH_SIZE, 0.001)`
      as `_TelemetryPartition.next_batch` does; every value parsed once with
      orjson and discarded, nothing else;
  (b) `canary-gate run --until-end --batch-size BATCH_SIZE` with 1 process (one
      worker that owns all the partitions);
  (c) the same with `--processes 2` (Bytewax cluster mode on this machine).

Prints each round, the medians and the ratios b/a, c/b and c/a, all measured
in the same run; the baseline's consumer settings are printed first.
Usage: .venv/bin/python bench/kafka_throughput.py [--events 2000000] [--rounds 2]
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from unittest import mock

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402
from _broker import broker_module  # noqa: E402
from confluent_kafka import Producer  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]  # noqa: E402

from pipeline import scenarios  # noqa: E402
from pipeline.io import chunk, kafka  # noqa: E402

SCALE = 100.0
TOPIC = "telemetry-bench"
BATCH_SIZE = chunk.BATCH_SIZE  # (b) and (c) run with --batch-size BATCH_SIZE; (a) consumes batches of it
POLL_TIMEOUT_S = 0.001  # _TelemetryPartition.next_batch: consume(batch_size, 0.001)


def produce(bootstrap: str, events: int, partitions: int) -> int:
    """Fill the topic with `events` generated events keyed by sticky; returns how many."""
    admin = AdminClient({"bootstrap.servers": bootstrap})  # must outlive the future
    admin.create_topics([NewTopic(TOPIC, partitions, 1)])[TOPIC].result(timeout=30)
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 50,
                         "batch.num.messages": 10000, "compression.type": "lz4"})
    per_minute = sum(1 for _ in scenarios.generate("healthy", 1, 2, traffic_scale=SCALE)) / 2
    minutes = int(events / per_minute) + 1
    started = time.perf_counter()
    n = 0
    for line in scenarios.generate("healthy", 1, minutes, traffic_scale=SCALE):
        while True:
            try:
                producer.produce(TOPIC, value=line, key=line[line.find(b'"sticky"'):][:24])
                break
            except BufferError:
                producer.poll(0.05)
        n += 1
        if n % 500_000 == 0:
            print(f"  produced {n:,}", flush=True)
        if n >= events:
            break
    producer.flush(300)
    print(f"produced {n:,} events to {partitions} partitions in {time.perf_counter() - started:.1f} s",
          flush=True)
    return n


def _source(bootstrap: str) -> kafka.KafkaTelemetrySource:
    """The Kafka source exactly as `canary-gate run --until-end` builds it (pipeline/cli/run.py)."""
    url = kafka.parse_url(f"kafka://{bootstrap}/{TOPIC}")
    extra: dict[str, str] = {}  # no --kafka-config
    marks = kafka.watermarks(url, extra)
    return kafka.KafkaTelemetrySource(
        url, extra, starting="earliest", batch_size=BATCH_SIZE,
        stop_at={p: high for p, (_, high) in marks.items()},
        low_offsets={p: low for p, (low, _) in marks.items()},
        partition_ids=kafka.partitions(url, extra))


def baseline_settings(bootstrap: str) -> str:
    """(a)'s consumer settings, as the pipeline's source passes them to confluent-kafka.

    Taken from one partition built by the source with `Consumer` swapped for a
    recorder, so what is printed is what the pipeline sets, not a copy of it.
    """
    seen: list[dict[str, Any]] = []
    real = kafka.Consumer  # type: ignore[attr-defined]

    def recording(config: dict[str, Any]) -> Any:
        seen.append(dict(config))
        return real(config)

    source = _source(bootstrap)
    with mock.patch.object(kafka, "Consumer", recording):
        source.build_part("bench", f"0-{TOPIC}", None).close()
    shown = {k: (v if isinstance(v, str | int | float | bool) else type(v).__name__)
             for k, v in seen[0].items()}
    return (f"one Consumer per partition, {shown}; consume({BATCH_SIZE}, {POLL_TIMEOUT_S}) "
            f"per partition in turn; one orjson.loads per value")


def bare(bootstrap: str, expected: int) -> float:
    """(a): the pipeline's consumers and consume pattern, one orjson parse per value; ev/s.

    Timed like (b)'s "events in N s": from building the partitions' consumers to closing them.
    """
    source = _source(bootstrap)
    loads = orjson.loads
    n = 0
    started = time.perf_counter()
    parts = [source.build_part("bench", name, None) for name in source.list_parts()]
    # Each partition is read up to its start-up high mark, as --until-end does.
    live = [(p.consumer, p.stop_at or 0) for p in parts if (p.next_offset or 0) < (p.stop_at or 0)]
    while live:
        following = []
        for consumer, stop in live:
            msgs = consumer.consume(BATCH_SIZE, POLL_TIMEOUT_S)
            for msg in msgs:
                loads(msg.value())  # type: ignore[arg-type]  # never None here
            n += len(msgs)
            if not msgs or (msgs[-1].offset() or 0) + 1 < stop:
                following.append((consumer, stop))
        live = following
    for part in parts:
        part.close()
    elapsed = time.perf_counter() - started
    assert n == expected, (n, expected)
    return n / elapsed


def pipeline(bootstrap: str, config: Path, tmp: Path, processes: int, tag: str) -> tuple[float, float]:
    """(b)/(c): canary-gate run --until-end; (ev/s in the dataflow, ev/s wall incl. start-up)."""
    t0 = time.perf_counter()
    res = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "run", "--config", str(config), "--source",
         f"kafka://{bootstrap}/{TOPIC}", "--until-end", "--processes", str(processes),
         "--batch-size", str(BATCH_SIZE), "--board", "off",
         "--verdicts", str(tmp / f"v-{tag}.jsonl"), "--dead-letters", str(tmp / f"d-{tag}.jsonl")],
        cwd=ROOT, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    # The summary's rate, "N events in 6.3 s (158,321/s)", comes from the unrounded time.
    m = re.search(r"([\d,]+) events in [\d.]+ s \(([\d,]+)/s\)", res.stderr)
    if res.returncode != 0 or not m:
        raise SystemExit(f"canary-gate run failed ({res.returncode}): {res.stderr.strip()}")
    events, inside = int(m.group(1).replace(",", "")), float(m.group(2).replace(",", ""))
    return inside, events / wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=2_000_000)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    broker_mod = broker_module()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        broker = broker_mod.start(tmp / "kafka", heap="1g")
        try:
            n = produce(broker.bootstrap, args.events, args.partitions)
            config = tmp / "rollout.toml"
            config.write_text(scenarios.scenario_config("healthy"))
            print(f"(a) baseline: {baseline_settings(broker.bootstrap)}", flush=True)
            print(f"(b), (c): canary-gate run --until-end --batch-size {BATCH_SIZE} --processes 1 / 2",
                  flush=True)
            rates: dict[str, list[float]] = {"a": [], "b": [], "c": []}
            verdicts: dict[str, str] = {}
            for r in range(args.rounds):
                rates["a"].append(bare(broker.bootstrap, n))
                print(f"round {r + 1}: (a) bare consume+parse {rates['a'][-1]:,.0f} ev/s", flush=True)
                for key, processes in (("b", 1), ("c", 2)):
                    inside, wall = pipeline(broker.bootstrap, config, tmp, processes, f"{key}{r}")
                    rates[key].append(inside)
                    verdicts[key] = (tmp / f"v-{key}{r}.jsonl").read_text()
                    print(f"round {r + 1}: ({key}) canary-gate, {processes} process(es): {inside:,.0f} ev/s "
                          f"in the dataflow, {wall:,.0f} ev/s wall with start-up", flush=True)
                a, b, c = (rates[k][-1] for k in "abc")
                print(f"round {r + 1}: b/a {b / a:.2f}   c/b {c / b:.2f}   c/a {c / a:.2f}", flush=True)
            med = {k: statistics.median(v) for k, v in rates.items()}
            print(f"\n{n:,} events, {args.partitions} partitions, {args.rounds} rounds (medians):")
            print(f"(a) bare consume+parse      {med['a']:>10,.0f} ev/s")
            print(f"(b) canary-gate 1 process   {med['b']:>10,.0f} ev/s")
            print(f"(c) canary-gate 2 processes {med['c']:>10,.0f} ev/s")
            print(f"b/a {med['b'] / med['a']:.2f}   c/b {med['c'] / med['b']:.2f}   "
                  f"c/a {med['c'] / med['a']:.2f}   "
                  f"verdicts of (b) and (c) equal: {verdicts['b'] == verdicts['c']}")
        finally:
            broker.stop()


if __name__ == "__main__":
    main()
