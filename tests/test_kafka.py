"""End to end against a real Apache Kafka broker (started by the session fixture)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from datetime import datetime
from pathlib import Path

import orjson
import pytest
from confluent_kafka import TIMESTAMP_CREATE_TIME, Consumer, Producer, TopicPartition
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    ConfigResource,
    NewTopic,
    ResourceType,
)
from conftest import BASE_TS, ROOT, free_port, make_config, make_event, poll_metrics, start_run

from pipeline import scenarios
from pipeline.engine import Engine, Report
from pipeline.io import kafka as kio
from pipeline.io.chunk import Chunk
from pipeline.io.files import dead_letter_line, verdict_line
from pipeline.model import DeadLetter, DeadLetterReason


def _cli(*args: str, timeout: float = 300,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=ROOT, capture_output=True,
                          timeout=timeout, check=False, env={**os.environ, **(env or {})})


def _topic(bootstrap: str, partitions: int = 4, prefix: str = "t") -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(name, partitions, 1)])[name].result(timeout=30)
    return name


def _read_all(bootstrap: str, topic: str) -> list:
    """Every message of a topic, partition by partition, in offset order."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"read-{uuid.uuid4().hex}",
                         "enable.auto.commit": "false"})
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        out = []
        for p in sorted(meta.partitions):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if high <= low:
                continue
            consumer.assign([TopicPartition(topic, p, low)])
            got = []
            deadline = time.monotonic() + 30
            while len(got) < high - low and time.monotonic() < deadline:
                for msg in consumer.consume(1000, 1.0):
                    assert msg.error() is None, msg.error()
                    got.append(msg)
            assert len(got) == high - low
            out += got
        return out
    finally:
        consumer.close()


def _window_end_ms(record: dict) -> int:
    return round(datetime.fromisoformat(record["window_end"]).timestamp() * 1000)


def _assert_verdict_messages(messages: list) -> None:
    """Each verdict message: key rollout, headers from its record, timestamp its window end."""
    assert messages
    for msg in messages:
        record = json.loads(msg.value())
        assert msg.key() == record["rollout"].encode()
        assert msg.headers() == [("rollout", record["rollout"].encode()), ("stage", record["stage"].encode()),
                                 ("decision", record["decision"].encode()), ("schema_version", b"1")]
        assert msg.timestamp() == (TIMESTAMP_CREATE_TIME, _window_end_ms(record))


def _file_verdicts(tmp_path: Path, name: str, lines: list[bytes], config: Path) -> list[dict]:
    source = tmp_path / f"{name}.jsonl"
    source.write_bytes(b"\n".join(lines) + b"\n")
    out = tmp_path / f"{name}.verdicts.jsonl"
    res = _cli("run", "--config", str(config), "--source", str(source), "--verdicts", str(out))
    assert res.returncode == 0, res.stderr
    return [json.loads(x) for x in out.read_text().splitlines()]


@pytest.mark.parametrize("name", sorted(scenarios.SCENARIOS))
def test_scenario_from_kafka_judges_like_the_file(kafka_bootstrap: str, tmp_path: Path, name: str) -> None:
    config = tmp_path / "rollout.toml"
    config.write_text(scenarios.scenario_config(name))
    topic = f"telemetry-{name}-{uuid.uuid4().hex[:6]}".replace("_", "-")
    res = _cli("generate", "--scenario", name, "--seed", "3", "--minutes", "15",
               "--out", f"kafka://{kafka_bootstrap}/{topic}", "--partitions", "4")
    assert res.returncode == 0, res.stderr
    verdict_topic = f"verdicts-{uuid.uuid4().hex[:6]}"
    res = _cli("run", "--config", str(config), "--source", f"kafka://{kafka_bootstrap}/{topic}",
               "--until-end", "--verdicts", f"kafka://{kafka_bootstrap}/{verdict_topic}",
               "--dead-letters", f"kafka://{kafka_bootstrap}/dlq-{verdict_topic}")
    assert res.returncode == 0, res.stderr
    messages = _read_all(kafka_bootstrap, verdict_topic)
    assert {m.key() for m in messages} == {b"chat-rag-v2"}
    _assert_verdict_messages(messages)
    from_kafka = [json.loads(m.value()) for m in messages]
    from_file = _file_verdicts(tmp_path, name, list(scenarios.generate(name, 3, 15)), config)
    assert [v["decision"] for v in from_kafka] == [v["decision"] for v in from_file]
    if name == "out_of_order":
        # Stragglers 200 s late may find their window still open while another
        # partition holds the stream-wide watermark back: counts may differ, statuses not.
        def statuses(vs: list[dict]) -> list[list[tuple[str, str]]]:
            return [[(g["gate"], g["status"]) for g in v["gates"]] for v in vs]

        assert statuses(from_kafka) == statuses(from_file)
    else:
        for a, b in zip(from_kafka, from_file, strict=True):
            assert a == b, json.dumps([(x, y) for x, y in zip(a["gates"], b["gates"], strict=True) if x != y])
    assert from_kafka[-1]["decision"] == scenarios.SCENARIOS[name].expected_decision


def test_four_partitions_two_workers_judge_like_one(kafka_bootstrap: str, tmp_path: Path) -> None:
    config = tmp_path / "rollout.toml"
    config.write_text(scenarios.scenario_config("new_5xx_class"))
    topic = _topic(kafka_bootstrap, 4)
    res = _cli("generate", "--scenario", "new_5xx_class", "--seed", "9", "--minutes", "15",
               "--out", f"kafka://{kafka_bootstrap}/{topic}")
    assert res.returncode == 0, res.stderr
    runs = []
    for workers in ("1", "2"):
        out = tmp_path / f"w{workers}.jsonl"
        res = _cli("run", "--config", str(config), "--source", f"kafka://{kafka_bootstrap}/{topic}",
                   "--until-end", "--workers", workers, "--verdicts", str(out),
                   "--dead-letters", str(tmp_path / f"d{workers}.jsonl"))
        assert res.returncode == 0, res.stderr
        runs.append(out.read_text())
    assert runs[0] and runs[0] == runs[1]


def test_broken_messages_reach_the_dead_letter_topic_with_reasons(kafka_bootstrap: str,
                                                                   tmp_path: Path) -> None:
    config = tmp_path / "rollout.toml"
    config.write_text(scenarios.scenario_config("healthy"))
    topic = _topic(kafka_bootstrap, 2)
    good = list(scenarios.generate("healthy", 5, 4))
    event = json.loads(good[0])
    broken = [b"not json at all", b"\xff\xfe\x00\x01binary", json.dumps({**event, "status": "x"}).encode(),
              json.dumps({k: v for k, v in event.items() if k != "latency_ms"}).encode()]
    # The last is valid but late: its window closed long before (decided by the judge, not the decoder).
    broken.append(good[0])
    reasons = ["invalid_json", "invalid_json", "schema", "schema", "late"]
    # Original keys (one unkeyed), headers on two and producer timestamps: the dead letters keep them.
    keys = [b"bad-0", b"\xff-binary-key", None, b"bad-3", b"late-4"]
    extra_headers = [[("trace", b"t-0")], None, None, [("trace", b"t-3"), ("empty", None)], None]
    stamps = [int(time.time() * 1000) - 60_000 + i for i in range(len(broken))]
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    positions = [*sorted(range(0, len(good), len(good) // 5))[1:5], len(good) - 1]
    stream: list[bytes] = []
    for i, line in enumerate(good):
        stream.append(line)
        producer.produce(topic, value=line, partition=0, key=json.loads(line)["sticky"].encode())
        if i in positions:
            j = positions.index(i)
            stream.append(broken[j])
            producer.produce(topic, value=broken[j], partition=0, key=keys[j], headers=extra_headers[j],
                             timestamp=stamps[j])
    producer.flush(30)
    dlq = f"dlq-{uuid.uuid4().hex[:6]}"
    res = _cli("run", "--config", str(config), "--source", f"kafka://{kafka_bootstrap}/{topic}",
               "--until-end", "--verdicts", str(tmp_path / "v.jsonl"),
               "--dead-letters", f"kafka://{kafka_bootstrap}/{dlq}")
    assert res.returncode == 0, res.stderr
    summary = res.stderr.decode()
    # every good message counted, and the late one (an event, though its window had closed)
    assert re.search(rf"\b{len(good) + 1} events in", summary), summary
    dead = _read_all(kafka_bootstrap, dlq)
    assert [m.value() for m in dead] == broken
    for j, (msg, reason, raw) in enumerate(zip(dead, reasons, broken, strict=True)):
        headers = {k: (v or b"").decode() for k, v in msg.headers()}
        assert headers["reason"] == reason
        assert headers["source_topic"] == topic and headers["source_partition"] == "0"
        assert stream[int(headers["source_offset"])] == raw
        assert headers["source_timestamp"] == str(stamps[j])
        assert msg.key() == keys[j]
        # the original headers come first, as they were; canary-gate's follow
        assert msg.headers()[: len(extra_headers[j] or [])] == (extra_headers[j] or [])
    for msg in dead[2:]:
        assert dict(msg.headers())["variant"] == event["variant"].encode()


def test_starting_offsets_earliest_and_latest(kafka_bootstrap: str) -> None:
    topic = _topic(kafka_bootstrap, 1)
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for i in range(5):
        producer.produce(topic, value=b"before-%d" % i)
    producer.flush(30)
    url = kio.KafkaUrl(kafka_bootstrap, topic)

    def read(starting: str, produce_after: bool) -> list[bytes]:
        source = kio.KafkaTelemetrySource(url, {}, starting=starting)
        part = source.build_part("t", source.list_parts()[0], None)
        got: list[bytes] = []
        try:
            deadline = time.monotonic() + 20
            settled = time.monotonic() + 3  # let the consumer resolve "latest" to an offset first
            produced = False
            while time.monotonic() < deadline:
                chunks: list[Chunk] = part.next_batch()
                for c in chunks:
                    got += c.lines
                if produce_after and not produced and time.monotonic() > settled:
                    produced = True
                    producer.produce(topic, value=b"after")
                    producer.flush(30)
                if got and (b"after" in got or not produce_after):
                    break
        finally:
            part.close()
        return got

    assert read("earliest", False) == [b"before-%d" % i for i in range(5)]
    assert read("latest", True) == [b"after"]


def test_latest_with_until_end_reads_nothing(kafka_bootstrap: str, tmp_path: Path) -> None:
    config = tmp_path / "rollout.toml"
    config.write_text(scenarios.scenario_config("healthy"))
    topic = _topic(kafka_bootstrap, 2)
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for line in scenarios.generate("healthy", 1, 3):
        producer.produce(topic, value=line)
    producer.flush(30)
    common = ["run", "--config", str(config), "--source", f"kafka://{kafka_bootstrap}/{topic}",
              "--until-end", "--verdicts", str(tmp_path / "v.jsonl"),
              "--dead-letters", str(tmp_path / "d.jsonl")]
    res = _cli(*common, "--starting-offset", "latest")
    assert res.returncode == 0 and b" 0 events in" in res.stderr, res.stderr
    res = _cli(*common, "--starting-offset", "earliest")
    assert res.returncode == 0 and b" 0 events in" not in res.stderr and b"3 verdicts" in res.stderr


def test_missing_topic_and_unreachable_broker_fail_fast(kafka_bootstrap: str, tmp_path: Path) -> None:
    config = tmp_path / "rollout.toml"
    config.write_text(scenarios.scenario_config("healthy"))
    started = time.monotonic()
    res = _cli("run", "--config", str(config), "--source", f"kafka://{kafka_bootstrap}/no-such-topic",
               "--until-end", "--verdicts", str(tmp_path / "v.jsonl"), timeout=60)
    assert res.returncode == 1
    assert res.stderr.decode().strip().splitlines() == [
        f"canary-gate: Kafka topic 'no-such-topic' does not exist on {kafka_bootstrap}"]
    res = _cli("run", "--config", str(config), "--source", "kafka://127.0.0.1:1/telemetry",
               "--until-end", "--verdicts", str(tmp_path / "v.jsonl"), timeout=60)
    assert res.returncode == 1
    err = res.stderr.decode().strip().splitlines()
    assert len(err) == 1 and "unreachable" in err[0], err
    assert time.monotonic() - started < 40
    res = _cli("run", "--config", str(config), "--source", "kafka://nohost", "--until-end")
    assert res.returncode == 2


def test_kafka_config_file_is_applied_and_checked(kafka_bootstrap: str, tmp_path: Path) -> None:
    props = tmp_path / "client.properties"
    props.write_text("# credentials would go here\nclient.id=canary-gate-test\nnot a property\n")
    with pytest.raises(kio.KafkaSetupError, match=r"client.properties:3: expected key=value"):
        kio.load_client_config(str(props))
    props.write_text("client.id = canary-gate-test\n")
    assert kio.load_client_config(str(props)) == {"client.id": "canary-gate-test"}


def test_live_run_serves_partition_health_and_stops_cleanly(kafka_bootstrap: str, tmp_path: Path) -> None:
    import signal

    topic = _topic(kafka_bootstrap, 3)
    lines = list(scenarios.generate("healthy", 2, 4))
    port = free_port()
    rollout = r'(?:\{rollout="chat-rag-v2"\})?'  # per-rollout series carry the label (when labelled)
    proc = start_run(tmp_path, "healthy", f"kafka://{kafka_bootstrap}/{topic}", port)
    try:
        producer = Producer({"bootstrap.servers": kafka_bootstrap})
        for i, line in enumerate(lines):
            producer.produce(topic, value=line, partition=i % 3)
        producer.flush(30)

        def consumed(text: str) -> float:
            return sum(float(x) for x in re.findall(
                r'^canary_gate_partition_events_consumed_total\{partition="\d"\} (\S+)$', text, re.M))

        def settled(text: str) -> bool:  # everything consumed, judged, and lag refreshed to 0
            return (consumed(text) == len(lines)
                    and bool(re.search(rf"^canary_gate_verdicts_total{rollout} [1-9]", text, re.M))
                    and bool(re.search(r'^canary_gate_partition_lag_messages\{partition="0"\} 0\.0$',
                                       text, re.M)))

        body = poll_metrics(port, settled)
        assert consumed(body) == len(lines), body[-2000:]
        assert re.search(r'^canary_gate_partition_lag_messages\{partition="0"\} 0\.0$', body, re.M)
        assert re.search(rf"^canary_gate_event_time_lag_seconds{rollout} \S+$", body, re.M)
        assert re.search(rf"^canary_gate_verdicts_total{rollout} [1-9]", body, re.M)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    err = proc.stderr.read().decode() if proc.stderr else ""
    assert code == 0, err
    assert err.strip().splitlines()[-1].startswith("canary-gate: stopped: ")
    # live: the windows still open at the stop are not judged, the closed ones are
    assert 1 <= len((tmp_path / "v.jsonl").read_text().splitlines()) < 4


def test_a_verdict_message_is_a_function_of_its_record() -> None:
    """Re-emitted after a restart or produced again from the undelivered file: the same message."""
    cfg = make_config()
    engine = Engine(cfg)
    out = engine.feed([make_event(ts=BASE_TS + 60 * i) for i in range(3)]) + engine.close()
    reports = [r for r in out if isinstance(r, Report)]
    assert len(reports) == 3
    render = kio.render_verdict(cfg.name)
    for report in reports:
        key, value, headers, stamp = render(report)
        record = report.verdict.to_record()
        assert key == b"chat-rag-v2" and orjson.loads(value) == record
        assert headers == [("rollout", b"chat-rag-v2"), ("stage", b"50%"),
                           ("decision", str(report.verdict.decision).encode()), ("schema_version", b"1")]
        assert stamp == round(report.verdict.window_end * 1000)
        assert kio.verdict_message(orjson.loads(verdict_line(report))) == (key, value, headers, stamp)
    assert kio.epoch_ms("2025-08-27T06:01:00Z") == 1_756_274_460_000
    assert kio.epoch_ms("2025-08-27T06:01:02.500000Z") == 1_756_274_462_500
    with pytest.raises(ValueError, match="verdict of rollout 'chat-rag-v2' on the sink of 'other'"):
        kio.render_verdict("other")(reports[0])


def test_a_dead_letter_message_keeps_the_original_key_headers_and_time() -> None:
    dead = DeadLetter(b"{oops", DeadLetterReason.INVALID_JSON, "expected a value", None, "telemetry/2@17",
                      key=b"s-1", timestamp_ms=1_756_274_460_123, headers=(("trace", b"abc"), ("none", None)))
    key, value, headers, stamp = kio.render_dead_letter(dead)
    assert (key, value, stamp) == (b"s-1", b"{oops", None)
    assert headers == [("trace", b"abc"), ("none", None), ("reason", b"invalid_json"),
                       ("detail", b"expected a value"), ("source_topic", b"telemetry"),
                       ("source_partition", b"2"), ("source_offset", b"17"),
                       ("source_timestamp", b"1756274460123")]
    plain = DeadLetter(b"x", DeadLetterReason.SCHEMA, "$.ts: missing", "canary-v2", "events.jsonl:3")
    assert kio.render_dead_letter(plain) == (None, b"x", [
        ("reason", b"schema"), ("detail", b"$.ts: missing"), ("variant", b"canary-v2"),
        ("source", b"events.jsonl:3")], None)
    # the JSONL form (files, the undelivered file) is unchanged
    assert orjson.loads(dead_letter_line(dead)) == {"reason": "invalid_json", "detail": "expected a value",
                                                    "variant": None, "source": "telemetry/2@17",
                                                    "line": "{oops"}


def test_a_chunk_finds_the_message_a_dead_letter_came_from() -> None:
    chunk = Chunk("2", [b"a", b"b", b"c"], "telemetry/2", 0, offsets=[5, 6, 9], timestamps=[1, 2, 3])
    assert [chunk.index_of(chunk.locate(i)) for i in range(3)] == [0, 1, 2]
    for other in ("telemetry/2@7", "telemetry/2@10", "telemetry/3@5", "events.jsonl:5", "telemetry/2@x",
                  None):
        assert chunk.index_of(other) is None
    assert Chunk("0", [b"a"], "events.jsonl", 1).index_of("events.jsonl:1") is None  # files: no origin


def test_verdicts_re_emitted_after_a_crash_are_the_same_messages(kafka_bootstrap: str,
                                                                 tmp_path: Path) -> None:
    config = tmp_path / "rollout.toml"
    config.write_text(scenarios.scenario_config("new_5xx_class"))
    topic = _topic(kafka_bootstrap, 2)
    res = _cli("generate", "--scenario", "new_5xx_class", "--seed", "4", "--minutes", "12",
               "--out", f"kafka://{kafka_bootstrap}/{topic}")
    assert res.returncode == 0, res.stderr
    verdict_topic = f"v-{uuid.uuid4().hex[:8]}"
    run = ["run", "--config", str(config), "--source", f"kafka://{kafka_bootstrap}/{topic}", "--until-end",
           "--verdicts", f"kafka://{kafka_bootstrap}/{verdict_topic}", "--dead-letters",
           str(tmp_path / "d.jsonl"), "--batch-size", "100", "--recovery-dir", str(tmp_path / "recovery"),
           "--snapshot-interval", "30"]  # no snapshot between the crash's verdicts: they come again
    crashed = _cli(*run, env={"CANARY_GATE_FAILPOINT": "verdict_write:4"})
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    resumed = _cli(*run)
    assert resumed.returncode == 0, resumed.stderr
    messages = _read_all(kafka_bootstrap, verdict_topic)
    _assert_verdict_messages(messages)
    copies: dict[str, list] = defaultdict(list)
    for msg in messages:
        copies[json.loads(msg.value())["id"]].append(
            (msg.key(), msg.value(), msg.headers(), msg.timestamp()))
    assert len(copies) == 12
    again = [same for same in copies.values() if len(same) > 1]
    assert again, "the crash re-emitted no verdict: nothing was compared"
    for same in again:
        assert all(x == same[0] for x in same)
    # a verdict topic the run created keeps messages whatever their (event) time
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    resource = ConfigResource(ResourceType.TOPIC, verdict_topic)
    described = admin.describe_configs([resource])[resource].result(timeout=30)
    assert described["retention.ms"].value == "-1"


def test_a_generated_line_is_produced_keyed_by_its_sticky() -> None:
    line = b'{"ts": "2025-08-27T06:00:00Z", "sticky": "s-42", "variant": "control"}'
    assert kio.telemetry_message(line) == (b"s-42", line, [], None)
    assert kio.telemetry_message(b'{"variant": "control"}') == (None, b'{"variant": "control"}', [], None)
