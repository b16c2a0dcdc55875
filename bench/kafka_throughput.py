"""Kafka end to end: bare consume+decode vs canary-gate with 1 and 2 worker processes.

Starts its own broker (kafka-broker/broker.py), produces N generated events
(healthy scenario at 100x traffic) to a 4-partition topic, then measures, side
by side and over several rounds:

  (a) a bare confluent-kafka consumer that consumes every message and parses it (orjson);
  (b) `canary-gate run --until-end` with 1 process;
  (c) the same with `--processes 2` (Bytewax cluster mode on this machine).

Prints ev/s (median over rounds) and the ratios b/a and c/b.
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402
from _broker import broker_module  # noqa: E402
from confluent_kafka import Consumer, Producer, TopicPartition  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]  # noqa: E402

from pipeline import scenarios  # noqa: E402

SCALE = 100.0
TOPIC = "telemetry-bench"


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


def bare(bootstrap: str, partitions: int, expected: int) -> float:
    """(a): consume every message of every partition and parse it; ev/s."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-bare",
                         "enable.auto.commit": "false", "enable.partition.eof": "true"})
    consumer.assign([TopicPartition(TOPIC, p, 0) for p in range(partitions)])
    loads = orjson.loads
    n = 0
    ended = 0
    started = time.perf_counter()
    while ended < partitions:
        for msg in consumer.consume(10000, 1.0):
            if msg.error() is not None:
                ended += 1  # partition EOF
                continue
            loads(msg.value())
            n += 1
    elapsed = time.perf_counter() - started
    consumer.close()
    assert n == expected, (n, expected)
    return n / elapsed


def pipeline(bootstrap: str, config: Path, tmp: Path, processes: int, tag: str) -> tuple[float, float]:
    """(b)/(c): canary-gate run --until-end; (ev/s in the dataflow, ev/s wall incl. start-up)."""
    t0 = time.perf_counter()
    res = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "run", "--config", str(config), "--source",
         f"kafka://{bootstrap}/{TOPIC}", "--until-end", "--processes", str(processes),
         "--batch-size", "5000", "--board", "off",
         "--verdicts", str(tmp / f"v-{tag}.jsonl"), "--dead-letters", str(tmp / f"d-{tag}.jsonl")],
        cwd=ROOT, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    m = re.search(r"([\d,]+) events in ([\d.]+) s", res.stderr)
    if res.returncode != 0 or not m:
        raise SystemExit(f"canary-gate run failed ({res.returncode}): {res.stderr.strip()}")
    events, inside = int(m.group(1).replace(",", "")), float(m.group(2))
    return events / inside, events / wall


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
            rates: dict[str, list[float]] = {"a": [], "b": [], "c": []}
            verdicts: dict[str, str] = {}
            for r in range(args.rounds):
                rates["a"].append(bare(broker.bootstrap, args.partitions, n))
                print(f"round {r + 1}: (a) bare consume+parse {rates['a'][-1]:,.0f} ev/s", flush=True)
                for key, processes in (("b", 1), ("c", 2)):
                    inside, wall = pipeline(broker.bootstrap, config, tmp, processes, f"{key}{r}")
                    rates[key].append(inside)
                    verdicts[key] = (tmp / f"v-{key}{r}.jsonl").read_text()
                    print(f"round {r + 1}: ({key}) canary-gate, {processes} process(es): {inside:,.0f} ev/s "
                          f"in the dataflow, {wall:,.0f} ev/s wall with start-up", flush=True)
            med = {k: statistics.median(v) for k, v in rates.items()}
            print(f"\n{n:,} events, {args.partitions} partitions, {args.rounds} rounds (medians):")
            print(f"(a) bare consume+parse      {med['a']:>10,.0f} ev/s")
            print(f"(b) canary-gate 1 process   {med['b']:>10,.0f} ev/s")
            print(f"(c) canary-gate 2 processes {med['c']:>10,.0f} ev/s")
            print(f"b/a {med['b'] / med['a']:.2f}   c/b {med['c'] / med['b']:.2f}   "
                  f"verdicts of (b) and (c) equal: {verdicts['b'] == verdicts['c']}")
        finally:
            broker.stop()


if __name__ == "__main__":
    main()
