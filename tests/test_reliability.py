"""Crash recovery, graceful stops and broker faults, against the real Kafka broker (issue 6).

Crash points are exact: CANARY_GATE_FAILPOINT=NAME:N makes the run SIGKILL
itself the N-th time it passes NAME (pipeline/io/lifecycle.py); one more crash
comes from outside, with kill -9 while the run is paused at NAME:N:pause.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]
from conftest import ROOT, make_event, running_broker

from pipeline import scenarios
from pipeline.io import lifecycle

SCENARIO = "schema_violations"  # verdicts that stop, dead letters of several reasons


def _cli(*args: str, env: dict[str, str] | None = None,
         timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, check=False, env={**os.environ, **(env or {})})


def _popen(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "pipeline.cli", *args], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _topic(bootstrap: str, partitions: int) -> str:
    name = f"rel-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})  # kept alive until the topic exists
    admin.create_topics([NewTopic(name, partitions, 1)])[name].result(timeout=30)
    return name


def _produce(bootstrap: str, topic: str, lines: list[bytes], partitions: int) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "enable.idempotence": True})
    for i, line in enumerate(lines):
        while True:
            try:
                producer.produce(topic, value=line, partition=i % partitions)
                break
            except BufferError:  # the local queue is full: let deliveries drain it
                producer.poll(0.1)
        if i % 5000 == 0:
            producer.poll(0)
    assert producer.flush(60) == 0


def _records(bootstrap: str, topic: str, timeout: float = 30) -> list[dict[str, Any]]:
    """Every record of a verdict topic (one partition), in offset order; [] if it has none yet."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"r-{uuid.uuid4().hex}",
                         "enable.auto.commit": "false"})
    try:
        meta = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
        if meta is None or meta.error is not None:
            return []
        out: list[dict[str, Any]] = []
        for p in sorted(meta.partitions):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)
            if high <= low:
                continue
            consumer.assign([TopicPartition(topic, p, low)])
            got: list[Any] = []
            deadline = time.monotonic() + timeout
            while len(got) < high - low and time.monotonic() < deadline:
                got += [m for m in consumer.consume(1000, 0.5) if m.error() is None and m.offset() < high]
            assert len(got) == high - low
            out += [json.loads(m.value()) for m in got]
        return out
    finally:
        consumer.close()


def _dead_letters(path: Path) -> Counter[tuple[str, str, str]]:
    """Dead letters by (reason, variant, original line), wherever they were read from."""
    return Counter((d["reason"], d.get("variant") or "", d["line"])
                   for d in map(json.loads, path.read_text().splitlines()))


def _differences(got: dict[str, Any], want: dict[str, Any]) -> str:
    """The gate rows (and other fields) in which two verdict records differ, for a failure message."""
    out = [f"{got['id']}:"] + [f"  {k}: {got[k]!r} != {want.get(k)!r}" for k in got
                               if k != "gates" and got[k] != want.get(k)]
    out += [f"  {a} !=\n  {b}" for a, b in zip(got["gates"], want["gates"], strict=False) if a != b]
    return "\n".join(out)


def _summary_events(stderr: str) -> int:
    """The event count of the run's summary line."""
    m = re.search(r"canary-gate: (?:stopped: )?(\d+) events in", stderr)
    assert m, stderr
    return int(m.group(1))


def _config(tmp_path: Path, stage: str | None = None) -> Path:
    text = scenarios.scenario_config(SCENARIO)
    if stage is not None:
        text = re.sub(r'stage\s*=\s*"[^"]*"', f'stage = "{stage}"', text, count=1)
    path = tmp_path / f"rollout-{stage or 'base'}.toml"
    path.write_text(text)
    return path


# -- 1. kill -9 at five points, resume, compare --------------------------------------

POINTS = [  # each run resumes from the one before; every point is reached whatever the timing
    "snapshot:3",  # while a snapshot is being taken (this run snapshots every 0.02 s)
    "chunk:2",  # early: before this run's first snapshot
    "chunk:15",  # mid-window (a window is about 8 chunks of 100)
    "window_close:2",  # right after a window closed, before its verdict is out
    "verdict_write:2",  # during an output write (produced, not yet confirmed / half a file write)
]


def _paused(proc: subprocess.Popen[str], point: str, timeout: float = 120) -> None:
    """Wait until the run stops at failpoint `point` (NAME:N:pause) and says so on stderr."""
    assert proc.stderr is not None
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            raise AssertionError(f"the run ended (exit {proc.wait()}) before {point}: {''.join(seen)}")
        seen.append(line)
        if f"failpoint {point}: paused" in line:
            return
    raise AssertionError(f"{point} not reached in {timeout} s: {''.join(seen)}")


def test_kill_9_at_six_points_resumes_without_loss_or_double_counting(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    lines = list(scenarios.generate(SCENARIO, 3, 160))  # ~120k events: each crash run has input left
    topic = _topic(kafka_bootstrap, 2)
    _produce(kafka_bootstrap, topic, lines, 2)
    config = _config(tmp_path)
    source = f"kafka://{kafka_bootstrap}/{topic}"

    def args(tag: str, recovery: Path | None, interval: str = "0.1") -> list[str]:
        out = ["run", "--config", str(config), "--source", source,
               "--verdicts", f"kafka://{kafka_bootstrap}/v-{tag}",
               "--dead-letters", str(tmp_path / f"{tag}.dl"), "--batch-size", "100", "--until-end"]
        if recovery is not None:
            out += ["--recovery-dir", str(recovery), "--snapshot-interval", interval]
        return out

    def run(tag: str, recovery: Path | None, env: dict[str, str] | None = None,
            interval: str = "0.1") -> Any:
        return _cli(*args(tag, recovery, interval), env=env)

    # The first crash comes from outside: the run pauses at its second verdict write (produced,
    # not yet confirmed), and the test kills it there with kill -9.
    recovery = tmp_path / "recovery"
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", *args("crash", recovery)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "CANARY_GATE_FAILPOINT": "verdict_write:2:pause"})
    try:
        _paused(proc, "verdict_write:2")
        proc.kill()
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
        if proc.stderr is not None:
            proc.stderr.close()
    for point in POINTS:
        res = run("crash", recovery, env={"CANARY_GATE_FAILPOINT": point},
                  interval="0.02" if point.startswith("snapshot") else "0.1")
        assert res.returncode == -signal.SIGKILL, f"{point} not reached: {res.stderr}"
        assert f"failpoint {point}" in res.stderr

    base = run("base", None)  # the uninterrupted reference, over the same topic
    assert base.returncode == 0, base.stderr
    expected = {r["id"]: r for r in _records(kafka_bootstrap, "v-base")}
    assert len(expected) > 100
    assert any(r["decision"] == "stop" for r in expected.values())
    final = run("crash", recovery)
    assert final.returncode == 0, final.stderr
    assert "resumed from" in final.stderr

    got = _records(kafka_bootstrap, "v-crash")
    copies = Counter(r["id"] for r in got)
    assert set(copies) == set(expected), "a window's verdict is missing or unexpected"
    for record in got:  # a verdict re-emitted after a crash is the same verdict
        assert record == expected[record["id"]], _differences(record, expected[record["id"]])
    # Nothing counted twice: every window's counts equal the uninterrupted run's (above), and
    # so does the total of events judged, restored from the snapshots.
    assert _summary_events(final.stderr) == _summary_events(base.stderr)
    # The file output was cut back to each snapshot: every dead letter exactly once.
    dead_base = (tmp_path / "base.dl").read_text().splitlines()
    dead_crash = (tmp_path / "crash.dl").read_text().splitlines()
    assert dead_base and Counter(dead_crash) == Counter(dead_base)


# -- 2. graceful stop --------------------------------------------------------------------

@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stop_signal_snapshots_flushes_and_exits_0(kafka_bootstrap: str, tmp_path: Path, sig: int) -> None:
    lines = list(scenarios.generate(SCENARIO, 4, 30))
    topic = _topic(kafka_bootstrap, 1)  # one partition: the file reference reads the same order
    config = _config(tmp_path)
    source = f"kafka://{kafka_bootstrap}/{topic}"
    verdicts = f"v-{uuid.uuid4().hex[:8]}"
    recovery = tmp_path / "recovery"
    args = ["--config", str(config), "--source", source, "--verdicts", f"kafka://{kafka_bootstrap}/{verdicts}",
            "--dead-letters", str(tmp_path / "dl.jsonl"), "--recovery-dir", str(recovery)]
    proc = _popen("run", *args)  # live: runs until stopped
    try:
        _produce(kafka_bootstrap, topic, lines[: len(lines) // 2], 1)
        deadline = time.monotonic() + 60
        while len(_records(kafka_bootstrap, verdicts)) < 3 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert len(_records(kafka_bootstrap, verdicts)) >= 3
    finally:
        stopped_at = time.monotonic()
        proc.send_signal(sig)
        code = proc.wait(timeout=30)
    took = time.monotonic() - stopped_at
    err = proc.stderr.read() if proc.stderr else ""
    assert code == 0, err
    assert took < 5, f"stop took {took:.1f} s"
    assert "stopped: " in err and f"open windows wait in {recovery}" in err
    emitted = _records(kafka_bootstrap, verdicts)
    assert re.search(rf"\b{len(emitted)} verdicts\b", err), err  # every verdict made was delivered

    # The rest arrives; a run resumed from the stop's snapshot judges it, re-emitting nothing.
    _produce(kafka_bootstrap, topic, lines[len(lines) // 2:], 1)
    res = _cli("run", *args, "--until-end")
    assert res.returncode == 0, res.stderr
    got = _records(kafka_bootstrap, verdicts)
    ids = [r["id"] for r in got]
    assert len(ids) == len(set(ids)), "a verdict was emitted twice across a graceful stop"
    source_file = tmp_path / "all.jsonl"
    source_file.write_bytes(b"\n".join(lines) + b"\n")
    ref = _cli("run", "--config", str(config), "--source", str(source_file), "--verdicts",
               str(tmp_path / "ref.jsonl"), "--dead-letters", str(tmp_path / "ref.dl.jsonl"))
    assert ref.returncode == 0, ref.stderr
    assert got == [json.loads(x) for x in (tmp_path / "ref.jsonl").read_text().splitlines()]
    assert _dead_letters(tmp_path / "dl.jsonl") == _dead_letters(tmp_path / "ref.dl.jsonl")


# -- 3. broker faults --------------------------------------------------------------------

@pytest.fixture
def own_broker(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A broker of this test's own, which the test may stop and start."""
    with running_broker(tmp_path_factory.mktemp("kafka-own")) as broker:
        yield broker


def _reference(tmp_path: Path, config: Path, lines: list[bytes]) -> dict[str, dict[str, Any]]:
    source = tmp_path / "ref-source.jsonl"
    source.write_bytes(b"\n".join(lines) + b"\n")
    res = _cli("run", "--config", str(config), "--source", str(source),
               "--verdicts", str(tmp_path / "ref.jsonl"), "--dead-letters", str(tmp_path / "ref.dl.jsonl"))
    assert res.returncode == 0, res.stderr
    return {r["id"]: r for r in map(json.loads, (tmp_path / "ref.jsonl").read_text().splitlines())}


def test_broker_stop_and_restart_mid_run_loses_and_doubles_nothing(own_broker: Any, tmp_path: Path) -> None:
    bootstrap = own_broker.bootstrap
    lines = list(scenarios.generate(SCENARIO, 5, 30))
    half = len(lines) // 2
    topic = _topic(bootstrap, 1)  # one partition: the file reference reads the same order
    config = _config(tmp_path)
    verdicts = f"v-{uuid.uuid4().hex[:8]}"
    _produce(bootstrap, topic, lines[:half], 1)
    proc = _popen("run", "--config", str(config), "--source", f"kafka://{bootstrap}/{topic}",
                  "--verdicts", f"kafka://{bootstrap}/{verdicts}",
                  "--dead-letters", str(tmp_path / "dl.jsonl"))
    try:
        deadline = time.monotonic() + 60
        while len(_records(bootstrap, verdicts)) < 3 and time.monotonic() < deadline:
            time.sleep(0.5)
        before = len(_records(bootstrap, verdicts))
        assert before >= 3
        own_broker.stop()
        time.sleep(6)  # the run waits: no crash, no verdict on a partial window
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        own_broker.restart()
        _produce(bootstrap, topic, lines[half:], 1)
        expected = _reference(tmp_path, config, lines)
        # a live run closes all but the last windows (they wait for later events)
        deadline = time.monotonic() + 90
        while len(_records(bootstrap, verdicts)) < len(expected) - 2 and time.monotonic() < deadline:
            time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
    err = proc.stderr.read() if proc.stderr else ""
    assert code == 0, err
    assert "unreachable" in err and "reachable again" in err, err
    got = _records(bootstrap, verdicts)
    ids = [r["id"] for r in got]
    assert len(ids) == len(set(ids)), "a verdict was emitted twice"
    assert len(got) >= len(expected) - 2, (len(got), len(expected), err)
    for record in got:  # every window judged over all its events, none twice
        assert record == expected[record["id"]], record["id"]
    assert _dead_letters(tmp_path / "dl.jsonl") == _dead_letters(tmp_path / "ref.dl.jsonl")


def test_broker_that_never_returns_fails_after_the_timeout_with_verdicts_flushed(
        own_broker: Any, tmp_path: Path) -> None:
    bootstrap = own_broker.bootstrap
    lines = list(scenarios.generate(SCENARIO, 6, 20))
    topic = _topic(bootstrap, 2)
    config = _config(tmp_path)
    _produce(bootstrap, topic, lines, 2)
    out = tmp_path / "v.jsonl"
    recovery = tmp_path / "recovery"
    proc = _popen("run", "--config", str(config), "--source", f"kafka://{bootstrap}/{topic}",
                  "--verdicts", str(out), "--dead-letters", str(tmp_path / "dl.jsonl"),
                  "--broker-timeout", "4", "--recovery-dir", str(recovery))
    deadline = time.monotonic() + 60
    while (not out.exists() or len(out.read_text().splitlines()) < 3) and time.monotonic() < deadline:
        time.sleep(0.3)
    judged = len(out.read_text().splitlines())
    assert judged >= 3
    gone = time.monotonic()
    own_broker.stop()
    code = proc.wait(timeout=60)
    took = time.monotonic() - gone
    err = proc.stderr.read() if proc.stderr else ""
    assert code == 1, err
    assert 4 <= took < 30, took
    last = err.strip().splitlines()[-1]
    assert re.fullmatch(r"canary-gate: run failed: Kafka broker 127\.0\.0\.1:\d+ unreachable for \d+ s "
                        r"\(--broker-timeout 4\): gave up reading \S+", last), err
    # the verdicts made before the outage are all in the file, whole lines
    records = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(records) >= judged
    assert re.search(rf"\b{len(records)} verdicts\b", err), err


def test_undelivered_outputs_are_saved_and_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A verdict the broker never takes is kept in a local file, and the error says where."""
    from conftest import free_port, make_config

    from pipeline.engine import Engine, Report
    from pipeline.io import kafka as kio
    from pipeline.io.files import verdict_line

    cfg = make_config()
    engine = Engine(cfg)
    engine.feed([make_event(ts=1_756_274_400.0 + 60 * i) for i in range(3)])
    reports = [r for r in engine.close() if isinstance(r, Report)]
    assert reports
    monkeypatch.chdir(tmp_path)
    url = kio.KafkaUrl(f"127.0.0.1:{free_port()}", "canary.verdicts")  # nothing listens there
    sink = kio.KafkaProducerSink(url, {}, kio.render_verdict(cfg.name), 2.0, render_line=verdict_line,
                                 spill="undelivered.jsonl")
    try:
        sink.send([("k", r) for r in reports[:2]])  # fails the run (as on SIGTERM), saying where
        assert lifecycle.STOP.is_set()
        assert re.fullmatch(r"delivery to Kafka topic 'canary\.verdicts' failed: .+; 2 undelivered saved to "
                            r"undelivered\.jsonl", lifecycle.failure() or ""), lifecycle.failure()
        started = time.monotonic()
        sink.send([("k", r) for r in reports[2:]])  # the broker is known gone: saved at once
        assert time.monotonic() - started < 1
        assert (lifecycle.failure() or "").endswith("; 2 undelivered saved to undelivered.jsonl")
    finally:
        lifecycle.reset()
    saved = [json.loads(x) for x in (tmp_path / "undelivered.jsonl").read_text().splitlines()]
    assert saved == [r.verdict.to_record() for r in reports]
    # a file that cannot be written: both errors are raised, nothing is said to be saved
    blocked = kio.KafkaProducerSink(url, {}, kio.render_verdict(cfg.name), 1.0, render_line=verdict_line,
                                    spill=str(tmp_path / "no-such-dir" / "u.jsonl"))
    with pytest.raises(RuntimeError, match=r"failed: .+; and 1 undelivered could not be saved to "
                                           r"\S+u\.jsonl: No such file or directory"):
        blocked.send([("k", reports[0])])
    assert not lifecycle.STOP.is_set()


def test_undelivered_dead_letters_keep_their_kafka_key_and_headers(tmp_path: Path) -> None:
    from conftest import free_port

    from pipeline.io import kafka as kio
    from pipeline.io.files import dead_letter_line
    from pipeline.model import DeadLetter, DeadLetterReason

    dead = DeadLetter(b"{oops", DeadLetterReason.INVALID_JSON, "not JSON", None, "telemetry/0@7",
                      key=b"\xffkey", timestamp_ms=1_700_000_000_000, headers=(("trace", b"abc"),))
    url = kio.KafkaUrl(f"127.0.0.1:{free_port()}", "canary.dead-letters")
    sink = kio.KafkaProducerSink(url, {}, kio.render_dead_letter, 1.0, render_line=dead_letter_line,
                                 spill=str(tmp_path / "u.jsonl"))
    try:
        sink.send([dead])
    finally:
        lifecycle.reset()
    (saved,) = [json.loads(x) for x in (tmp_path / "u.jsonl").read_text().splitlines()]
    assert saved["line"] == "{oops" and saved["reason"] == "invalid_json"
    assert saved["kafka"] == {"key": {"base64": "/2tleQ=="}, "timestamp_ms": 1_700_000_000_000,
                              "headers": [["trace", "abc"]]}


# -- 4. recovery directory checks and a stage changed between runs ---------------------------

def _file_run(tmp_path: Path, config: Path, *extra: str, env: dict[str, str] | None = None,
              source: Path | None = None) -> subprocess.CompletedProcess[str]:
    if source is None:
        source = tmp_path / "events.jsonl"
        if not source.exists():
            source.write_bytes(b"\n".join(scenarios.generate("healthy", 7, 40)) + b"\n")
    return _cli("run", "--config", str(config), "--source", str(source),
                "--verdicts", str(tmp_path / "v.jsonl"), "--dead-letters", str(tmp_path / "dl.jsonl"),
                "--batch-size", "100", "--recovery-dir", str(tmp_path / "rec"),
                "--snapshot-interval", "0.05", *extra, env=env)


def test_a_stage_changed_between_runs_applies_and_restarts_the_promotion_clock(tmp_path: Path) -> None:
    first = _file_run(tmp_path, _config(tmp_path, "10%"), env={"CANARY_GATE_FAILPOINT": "window_close:25"})
    assert first.returncode == -signal.SIGKILL, first.stderr
    res = _file_run(tmp_path, _config(tmp_path, "25%"))
    assert res.returncode == 0, res.stderr
    assert re.search(r"resumed from \S+: stage 10% -> 25% \(promotion clock restarts; "
                     r"evidence and any latched stop start afresh\)",
                     res.stderr), res.stderr
    records = [json.loads(x) for x in (tmp_path / "v.jsonl").read_text().splitlines()]
    stages = [r["stage"] for r in records]
    k = stages.index("25%")
    assert k > 0 and set(stages[:k]) == {"10%"} and set(stages[k:]) == {"25%"}
    # a promotion needs sustain_s of clean verdicts at the new stage
    sustain = int(re.search(r"sustain_s\s*=\s*(\d+)", scenarios.scenario_config("healthy")).group(1))
    changed_at = records[k]["window_end"]
    for r in records[k:]:
        if r["decision"] == "promote":
            gap = _epoch(r["window_end"]) - _epoch(changed_at) + 60
            assert gap >= sustain, r
    assert "promote" in {r["decision"] for r in records[:k]}, "the healthy run promoted before the change"


@pytest.mark.parametrize("change", ["stage", "sustain_s"])
def test_verdicts_re_emitted_after_a_crash_are_identical_whatever_the_new_config(
        tmp_path: Path, change: str) -> None:
    """Windows emitted after the last snapshot are made again under their first config (issue 15)."""
    first = _file_run(tmp_path, _config(tmp_path, "10%"), env={"CANARY_GATE_FAILPOINT": "window_close:25"})
    assert first.returncode == -signal.SIGKILL, first.stderr
    seen = [json.loads(x) for x in (tmp_path / "v.jsonl").read_text().splitlines()]  # what readers got
    if change == "stage":
        config = _config(tmp_path, "25%")
    else:  # a promotion clock a day long: no promote after the change
        config = tmp_path / "slow.toml"
        config.write_text(re.sub(r"sustain_s\s*=\s*\d+", "sustain_s = 86400",
                                 _config(tmp_path, "10%").read_text()))
    res = _file_run(tmp_path, config)
    assert res.returncode == 0, res.stderr
    m = re.search(r"(\d+) verdicts emitted after the snapshot \(windows ending (\S+)\.\.(\S+)\) are made "
                  r"again as first emitted", res.stderr)
    assert m and int(m.group(1)) >= 1, res.stderr
    records = [json.loads(x) for x in (tmp_path / "v.jsonl").read_text().splitlines()]
    assert records[: len(seen)] == seen, "a verdict emitted before the crash changed when made again"
    # the journal may hold one window more than readers saw (judged; killed before it was written)
    assert seen[-1]["window_end"] <= m.group(3)
    after = [r for r in records if r["window_end"] > m.group(3)]
    assert after, "nothing judged after the crash"
    if change == "stage":
        assert {r["stage"] for r in seen} == {"10%"} and {r["stage"] for r in after} == {"25%"}
        assert f"stage 10% -> 25% (promotion clock restarts; evidence and any latched stop start afresh) " \
               f"from the window ending {after[0]['window_end']}" in res.stderr, res.stderr
    else:
        assert f"new sustain_s apply from the window ending {after[0]['window_end']}" in res.stderr
        assert "promote" in {r["decision"] for r in seen}
        assert "promote" not in {r["decision"] for r in after}


def _epoch(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def test_recovery_dir_refuses_a_run_it_cannot_resume(tmp_path: Path) -> None:
    config = _config(tmp_path)
    first = _file_run(tmp_path, config, env={"CANARY_GATE_FAILPOINT": "window_close:5"})
    assert first.returncode == -signal.SIGKILL
    res = _file_run(tmp_path, config, "--workers", "2")
    assert res.returncode == 2, res.stderr
    assert "holds a run with workers 1; this run has workers 2" in res.stderr, res.stderr
    windows = config.read_text().replace("size_s", "size_s = 30\n#", 1) if "size_s" in config.read_text() \
        else config.read_text() + "\n[windows]\nsize_s = 30\n"
    other = tmp_path / "other-windows.toml"
    other.write_text(windows)
    res = _file_run(tmp_path, other)
    assert res.returncode == 2 and "holds a run with windows.size_s 60; this run has windows.size_s 30" \
        in res.stderr, res.stderr
    elsewhere = tmp_path / "elsewhere.jsonl"
    elsewhere.write_bytes((tmp_path / "events.jsonl").read_bytes())
    res = _file_run(tmp_path, config, source=elsewhere)
    assert res.returncode == 2 and "holds a run with source" in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    stdin = _cli("run", "--config", str(config), "--source", "-", "--verdicts", str(tmp_path / "x.jsonl"),
                 "--recovery-dir", str(tmp_path / "rec2"))
    assert stdin.returncode == 2 and "stdin cannot be read again" in stdin.stderr
    gz = _cli("run", "--config", str(config), "--source", str(tmp_path / "events.jsonl"),
              "--verdicts", str(tmp_path / "x.jsonl.gz"), "--recovery-dir", str(tmp_path / "rec3"))
    assert gz.returncode == 2 and "gzip output cannot be cut back" in gz.stderr
    bad = _cli("run", "--config", str(config), "--source", str(tmp_path / "events.jsonl"),
               "--verdicts", str(tmp_path / "x.jsonl"), env={"CANARY_GATE_FAILPOINT": "nowhere:1"})
    assert bad.returncode == 2 and "CANARY_GATE_FAILPOINT" in bad.stderr
    # the same run resumes and completes, its output equal to an uninterrupted run's
    res = _file_run(tmp_path, config)
    assert res.returncode == 0, res.stderr
    resumed = (tmp_path / "v.jsonl").read_text()
    plain = _cli("run", "--config", str(config), "--source", str(tmp_path / "events.jsonl"),
                 "--verdicts", str(tmp_path / "plain.jsonl"), "--dead-letters", str(tmp_path / "p.dl"))
    assert plain.returncode == 0
    assert resumed == (tmp_path / "plain.jsonl").read_text()


# -- 5. hostile messages through the broker ----------------------------------------------

def _hostile(control_line: bytes) -> list[bytes | None]:
    """Messages no pipeline may choke on; none of them is the canary's (they must not move its gates)."""
    import random

    rng = random.Random(6)
    doc = json.loads(control_line)
    assert doc["variant"] == "control"

    def variant_of(**changes: Any) -> bytes:
        return json.dumps({**doc, **changes}).encode()

    return [
        *[bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300))) for _ in range(10)],
        *[control_line[:k] for k in (1, 10, len(control_line) // 2, len(control_line) - 1)],
        control_line.replace(b'"control"', b'"control"\xff\xfe', 1),  # invalid UTF-8
        json.dumps({**doc, "pad": "x" * 1_500_000}).encode(),  # 1.5 MB
        b"[" * 100_000,
        b'{"a":' * 50_000,
        control_line.replace(b'"status": 200', b'"status": NaN', 1) if b'"status": 200' in control_line
        else control_line[:-1] + b', "status": NaN}',
        variant_of(latency_ms={"tffb": "Infinity", "tusable": 1, "tfinal": 1}),
        control_line[:-1] + b', "latency_ms": {"tffb": 1e400, "tusable": 1, "tfinal": 1}}',
        variant_of(status=10**40),
        variant_of(cold_start="yes"),
        variant_of(region=["us-east"]),
        variant_of(ts="9999-12-31T23:59:59Z"),  # far future
        variant_of(ts="1970-01-01T00:00:00Z"),  # far past: its window closed long ago
        b"",
        None,  # a tombstone: no value at all
        b"null",
        b'"just a string"',
    ]


def test_hostile_messages_through_the_broker_are_dead_lettered_and_change_no_verdict(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    import random

    lines = list(scenarios.generate("healthy", 8, 15))
    first_control = next(i for i, line in enumerate(lines) if b'"variant": "control"' in line
                         or b'"variant":"control"' in line)
    hostile = _hostile(lines[first_control])
    rng = random.Random(8)
    mixed: list[bytes | None] = list(lines[: first_control + 1])
    rest = list(lines[first_control + 1:])
    slots = sorted(rng.sample(range(len(rest)), len(hostile)))
    for k, line in enumerate(rest):
        mixed.append(line)
        if slots and slots[0] == k:
            slots.pop(0)
            mixed.append(hostile[len(hostile) - len(slots) - 1])
    assert sum(1 for m in mixed if m not in lines) == len(hostile)
    config = _config(tmp_path)
    clean, dirty = _topic(kafka_bootstrap, 1), _topic(kafka_bootstrap, 1)
    _produce(kafka_bootstrap, clean, lines, 1)
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "message.max.bytes": 4_000_000})
    for m in mixed:
        producer.produce(dirty, value=m)
        producer.poll(0)
    assert producer.flush(60) == 0

    def run(topic: str) -> tuple[subprocess.CompletedProcess[str], list[dict[str, Any]]]:
        out = tmp_path / f"{topic}.jsonl"
        res = _cli("run", "--config", str(config), "--source", f"kafka://{kafka_bootstrap}/{topic}",
                   "--until-end", "--verdicts", str(out), "--dead-letters", f"kafka://{kafka_bootstrap}/{topic}.dlq")
        assert res.returncode == 0, res.stderr
        return res, [json.loads(x) for x in out.read_text().splitlines()]

    _, want = run(clean)
    res_dirty, got = run(dirty)
    assert got == want
    assert re.search(rf"; {len(hostile)} dead letters \(", res_dirty.stderr), res_dirty.stderr
    consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": f"h-{uuid.uuid4().hex}",
                         "enable.auto.commit": "false", "auto.offset.reset": "earliest"})
    consumer.assign([TopicPartition(f"{dirty}.dlq", 0, 0)])
    dead: list[Any] = []
    deadline = time.monotonic() + 30
    while len(dead) < len(hostile) and time.monotonic() < deadline:
        dead += [m for m in consumer.consume(100, 0.5) if m.error() is None]
    consumer.close()
    assert len(dead) == len(hostile)
    reasons = Counter(dict(m.headers())["reason"].decode() for m in dead)
    assert set(reasons) <= {"invalid_json", "schema", "too_large", "future", "late"}
    assert reasons["too_large"] == 1 and reasons["future"] == 1 and reasons["late"] == 1, reasons
    for m in dead:
        headers = dict(m.headers())
        assert headers["detail"] and headers["source_topic"] == dirty.encode()
        if headers["reason"] == b"too_large":  # cut to fit the broker, its size kept
            assert int(headers["truncated_from"]) > 1_500_000 and len(m.value()) < 1_000_000


def test_a_second_run_on_a_recovery_dir_in_use_exits_2_naming_the_holder(tmp_path: Path) -> None:
    config = _config(tmp_path)
    source = tmp_path / "events.jsonl"
    source.write_bytes(b"\n".join(scenarios.generate("healthy", 7, 40)) + b"\n")
    first = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "run", "--config", str(config), "--source", str(source),
         "--verdicts", str(tmp_path / "v.jsonl"), "--dead-letters", str(tmp_path / "dl.jsonl"),
         "--recovery-dir", str(tmp_path / "rec")],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "CANARY_GATE_FAILPOINT": "chunk:1:pause"})
    try:
        assert first.stderr is not None
        for line in first.stderr:  # the first run holds the directory, paused mid-run
            if "failpoint chunk:1: paused" in line:
                break
        second = _file_run(tmp_path, _config(tmp_path, "25%"))
        assert second.returncode == 2, second.stderr
        rec = re.escape(str(tmp_path / "rec"))
        assert re.fullmatch(rf"canary-gate: error: --recovery-dir {rec} is in use "
                            rf"by another canary-gate run \(pid {first.pid}, started \S+\): stop it, or use "
                            r"another directory\n", second.stderr), second.stderr
        assert not (tmp_path / "v.jsonl").exists() or "25%" not in (tmp_path / "v.jsonl").read_text()
    finally:
        first.kill()
        first.wait(timeout=30)
        if first.stderr is not None:
            first.stderr.close()
    # once the holder is gone (killed: the kernel drops its lock), the directory is free again
    res = _file_run(tmp_path, config)
    assert res.returncode == 0, res.stderr
