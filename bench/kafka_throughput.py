"""Events/s that `canary-gate run` sustains from a real Kafka topic, 1 worker vs 2.

Starts its own broker (kafka-broker/broker.py), produces N generated events
(healthy scenario at 100x traffic) to a 4-partition topic, then runs
`canary-gate run --until-end` over it with --workers 1 and 2, side by side.
Usage: .venv/bin/python bench/kafka_throughput.py [--events 1000000]
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from confluent_kafka import Producer  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]  # noqa: E402

from pipeline import scenarios  # noqa: E402

SCALE = 100.0


def _broker_module():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("kafka_broker", ROOT / "kafka-broker" / "broker.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--partitions", type=int, default=4)
    args = ap.parse_args()
    broker_mod = _broker_module()
    with tempfile.TemporaryDirectory() as tmp:
        broker = broker_mod.start(Path(tmp) / "kafka", heap="1g")
        try:
            topic = "telemetry-bench"
            admin = AdminClient({"bootstrap.servers": broker.bootstrap})  # must outlive the future
            admin.create_topics([NewTopic(topic, args.partitions, 1)])[topic].result(timeout=30)
            producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 50,
                                 "batch.num.messages": 10000, "compression.type": "lz4"})
            per_minute = sum(1 for _ in scenarios.generate("healthy", 1, 2, traffic_scale=SCALE)) / 2
            minutes = int(args.events / per_minute) + 1
            started = time.perf_counter()
            n = 0
            for line in scenarios.generate("healthy", 1, minutes, traffic_scale=SCALE):
                while True:
                    try:
                        producer.produce(topic, value=line, key=line[line.find(b'"sticky"'):][:24])
                        break
                    except BufferError:
                        producer.poll(0.05)
                n += 1
                if n >= args.events:
                    break
            producer.flush(120)
            print(f"produced {n:,} events to {args.partitions} partitions in "
                  f"{time.perf_counter() - started:.1f} s", flush=True)
            config = Path(tmp) / "rollout.toml"
            config.write_text(scenarios.scenario_config("healthy"))
            rates = {}
            for workers in ("1", "2"):
                t0 = time.perf_counter()
                res = subprocess.run(
                    [sys.executable, "-m", "pipeline.cli", "run", "--config", str(config), "--source",
                     f"kafka://{broker.bootstrap}/{topic}", "--until-end", "--workers", workers,
                     "--verdicts", str(Path(tmp) / f"v{workers}.jsonl"),
                     "--dead-letters", str(Path(tmp) / f"d{workers}.jsonl")],
                    cwd=ROOT, capture_output=True, text=True, check=True)
                wall = time.perf_counter() - t0
                m = re.search(r"(\d+) events in ([\d.]+) s", res.stderr)
                assert m, res.stderr
                events, inside = int(m.group(1)), float(m.group(2))
                rates[workers] = events / wall
                print(f"workers {workers}: {events:,} events, {events / inside:,.0f} ev/s in the dataflow, "
                      f"{events / wall:,.0f} ev/s wall (process start included)", flush=True)
            print(f"2 workers / 1 worker: {rates['2'] / rates['1']:.2f}")
        finally:
            broker.stop()


if __name__ == "__main__":
    main()
