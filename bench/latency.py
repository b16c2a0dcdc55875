"""Verdict latency: wall time from the moment a window can close to its verdict on Kafka.

Starts its own broker and a live `canary-gate run` (Kafka in, verdicts to a Kafka
topic), then produces generated events in real time (event time = wall time, at
--rate events/s over 4 partitions).  A window [S, E) can close once every
partition has delivered an event at or past E + allowed lateness (the watermark
of SPEC section 4 passes its end); the producer records that wall time, and a
consumer of the verdict topic, polling all along, records when each verdict
arrives (an upper bound on its publish time: a verdict message's own timestamp
is its window end, not when it was produced).  Windows are 2 s long so a run of
a few minutes gives many samples.

Usage: .venv/bin/python bench/latency.py [--seconds 120] [--rate 5000]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402
from _broker import broker_module  # noqa: E402
from confluent_kafka import Consumer, Producer, TopicPartition  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]  # noqa: E402

from pipeline import scenarios  # noqa: E402
from pipeline.decode.codec import parse_ts  # noqa: E402

SIZE_S = 2
LATENESS_S = 1
PARTITIONS = 4


def _config() -> str:
    text = scenarios.scenario_config("healthy")
    for key, value in (("size_s", SIZE_S), ("horizon_s", 30 * SIZE_S), ("allowed_lateness_s", LATENESS_S),
                       ("idle_close_s", 5), ("sustain_s", 10 * SIZE_S)):
        lines = [f"{key} = {value}" if line.startswith(f"{key} =") else line for line in text.splitlines()]
        text = "\n".join(lines) + "\n"
    return text


def _events(start: datetime, seconds: int, rate: float) -> list[tuple[float, bytes]]:
    per_minute_at_1 = sum(1 for _ in scenarios.generate("healthy", 1, 2)) / 2
    scale = max(0.01, rate * 60 / per_minute_at_1)
    minutes = seconds // 60 + 1
    out = []
    end = start.timestamp() + seconds
    for line in scenarios.generate("healthy", 1, minutes, start=start, traffic_scale=scale):
        ts = parse_ts(orjson.loads(line)["ts"])
        if ts >= end:
            break
        out.append((ts, line))
    out.sort(key=lambda x: x[0])
    return out


def _listen(bootstrap: str, published: dict[float, float], done: threading.Event) -> None:
    """Record when each verdict (by window end) first arrives on the verdict topic, until `done`."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-latency",
                         "fetch.wait.max.ms": "5", "fetch.min.bytes": "1"})
    consumer.assign([TopicPartition("verdicts-live", 0, 0)])
    try:
        while not done.is_set():
            msg = consumer.poll(0.05)
            if msg is None or msg.error() is not None:
                continue
            end = parse_ts(orjson.loads(msg.value())["window_end"])
            published.setdefault(end, time.time())
    finally:
        consumer.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=120, help="length of the live run")
    ap.add_argument("--rate", type=float, default=5000, help="events per second")
    args = ap.parse_args()
    broker_mod = broker_module()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        broker = broker_mod.start(tmp / "kafka", heap="1g")
        run = None
        try:
            bootstrap = broker.bootstrap
            admin = AdminClient({"bootstrap.servers": bootstrap})
            for topic, n in (("telemetry-live", PARTITIONS), ("verdicts-live", 1)):
                admin.create_topics([NewTopic(topic, n, 1)])[topic].result(timeout=30)
            config = tmp / "rollout.toml"
            config.write_text(_config())
            lead = 20 + args.seconds * args.rate / 40_000  # time to generate, then start on the minute
            start = datetime.fromtimestamp(time.time() + lead, tz=UTC).replace(microsecond=0)
            start = start - timedelta(seconds=start.second % SIZE_S)
            print(f"generating {args.seconds} s of events at ~{args.rate:,.0f}/s ...", flush=True)
            events = _events(start, args.seconds, args.rate)
            run = subprocess.Popen(
                [sys.executable, "-m", "pipeline.cli", "run", "--config", str(config), "--source",
                 f"kafka://{bootstrap}/telemetry-live", "--verdicts", f"kafka://{bootstrap}/verdicts-live",
                 "--dead-letters", str(tmp / "dead.jsonl"), "--board", "off"],
                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            published: dict[float, float] = {}
            done = threading.Event()
            listener = threading.Thread(target=_listen, args=(bootstrap, published, done), daemon=True)
            listener.start()
            producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
            if time.time() > start.timestamp():
                late_s = time.time() - start.timestamp()
                print(f"warning: generation overran the start by {late_s:.1f} s; "
                      "the first windows are sent in a burst", flush=True)
            print(f"sending {len(events):,} events in real time ...", flush=True)
            part_max = [float("-inf")] * PARTITIONS
            next_end = (int(events[0][0]) // SIZE_S + 1) * SIZE_S
            can_close: dict[float, float] = {}
            for i, (ts, line) in enumerate(events):
                wait = ts - time.time()
                if wait > 0.002:
                    producer.poll(0)
                    time.sleep(wait)
                p = i % PARTITIONS
                producer.produce("telemetry-live", value=line, partition=p)
                if ts > part_max[p]:
                    part_max[p] = ts
                    while min(part_max) >= next_end + LATENESS_S:
                        can_close[float(next_end)] = time.time()
                        next_end += SIZE_S
            producer.flush(30)
            del producer  # before the broker stops, so it logs no disconnects
            time.sleep(3)
            done.set()
            listener.join(30)
            lat = sorted(published[e] - can_close[e] for e in can_close if e in published)
            if not lat:
                raise SystemExit("no verdict matched a window that could close")
            p50 = statistics.median(lat)
            p99 = lat[min(len(lat) - 1, round(0.99 * (len(lat) - 1)))]
            print(f"\n{len(lat)} windows of {SIZE_S} s at ~{args.rate:,.0f} ev/s, {PARTITIONS} partitions:")
            print(f"verdict latency p50 {p50 * 1000:.0f} ms   p99 {p99 * 1000:.0f} ms   "
                  f"max {lat[-1] * 1000:.0f} ms")
        finally:
            if run is not None:
                run.terminate()
                try:
                    run.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    run.kill()
            broker.stop()


if __name__ == "__main__":
    main()
