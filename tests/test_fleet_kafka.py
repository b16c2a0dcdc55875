"""Fleet mode end to end against a real Apache Kafka broker: `run --rollouts DIR` over one topic."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]
from conftest import ROOT, free_port

from pipeline import scenarios

pytestmark = pytest.mark.integration

# rollout name -> (scenario, its decision at the end)
FLEET = {"search": ("healthy", "promote"), "chat": ("schema_violations", "stop"),
         "docs": ("low_traffic", "insufficient_data")}


def _cli(*args: str, timeout: float = 300,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, check=False, env={**os.environ, **(env or {})})


def _topic(bootstrap: str, partitions: int = 4) -> str:
    name = f"fleet-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})  # kept until the topic exists
    admin.create_topics([NewTopic(name, partitions, 1)])[name].result(timeout=30)
    return name


def _config(name: str) -> str:
    scenario = FLEET[name][0]
    return (scenarios.scenario_config(scenario).replace('name = "chat-rag-v2"', f'name = "{name}"')
            + f'\n[match]\nx_exp = "exp-{name}"\n')


def _own(name: str, minutes: int = 12, start_minute: int = 0) -> list[bytes]:
    """The rollout's telemetry that carries its x_exp (user requests, probes, broken messages)."""
    start = scenarios.DEFAULT_START.replace(minute=start_minute)
    return [line for line in scenarios.generate(FLEET[name][0], 5, minutes, start=start,
                                                experiment=f"exp-{name}")
            if f'"exp-{name}"'.encode() in line]


def _produce(bootstrap: str, topic: str, lines: list[bytes]) -> None:
    """Each line keyed by its sticky key, so a line lands on the same partition in any topic."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20})
    for line in lines:
        try:
            key = str(orjson.loads(line).get("sticky", "")).encode()
        except orjson.JSONDecodeError:
            key = b"broken"
        producer.produce(topic, value=line, key=key)
        producer.poll(0)
    assert producer.flush(30) == 0


def _verdicts(path: Path) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        out.setdefault(record["rollout"], []).append(record)
    return out


def _first_difference(name: str, got: list[dict], want: list[dict]) -> str:
    """Where two verdict timelines first differ, compactly (the window, then each field that differs)."""
    for a, b in zip(got, want, strict=False):
        if a != b:
            fields = {k: (a.get(k), b.get(k)) for k in a if k != "gates" and a.get(k) != b.get(k)}
            gates = [(x["gate"], x["region"], {k: (x[k], y[k]) for k in x if x[k] != y[k]})
                     for x, y in zip(a["gates"], b["gates"], strict=False) if x != y]
            return f"{name} at {a['window_end']}: {fields} {gates}"
    return f"{name}: {len(got)} verdicts against {len(want)}"


def _directory(tmp_path: Path, names: list[str]) -> Path:
    rollouts = tmp_path / "rollouts"
    rollouts.mkdir(exist_ok=True)
    for name in names:
        (rollouts / f"{name}.toml").write_text(_config(name))
    return rollouts


def _single(bootstrap: str, tmp_path: Path, name: str, lines: list[bytes]) -> list[dict]:
    """A one-rollout run over just this rollout's messages, in a topic of its own (same keys)."""
    topic = _topic(bootstrap)
    _produce(bootstrap, topic, lines)
    config = tmp_path / f"{name}.toml"
    config.write_text(_config(name))
    out = tmp_path / f"{name}.single.jsonl"
    res = _cli("run", "--config", str(config), "--source", f"kafka://{bootstrap}/{topic}", "--until-end",
               "--verdicts", str(out), "--dead-letters", str(tmp_path / f"{name}.single.dl.jsonl"))
    assert res.returncode == 0, res.stderr
    return _verdicts(out).get(name, [])


def test_three_rollouts_interleaved_in_one_topic_judge_as_three_single_runs(kafka_bootstrap: str,
                                                                            tmp_path: Path) -> None:
    own = {name: _own(name) for name in FLEET}
    others = [line for line in scenarios.generate("healthy", 9, 3, experiment="exp-elsewhere")]
    mixed = [x for group in itertools.zip_longest(*own.values(), others) for x in group if x is not None]
    topic = _topic(kafka_bootstrap)
    _produce(kafka_bootstrap, topic, mixed)
    out = tmp_path / "fleet.jsonl"
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "run", "--rollouts", str(_directory(tmp_path, list(FLEET))),
         "--source", f"kafka://{kafka_bootstrap}/{topic}", "--until-end", "--verdicts", str(out),
         "--dead-letters", str(tmp_path / "fleet.dl.jsonl"), "--metrics-port", str(port),
         "--metrics-addr", "127.0.0.1"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    fleet = _verdicts(out)
    assert set(fleet) == set(FLEET)
    for name, (_, decision) in FLEET.items():
        single = _single(kafka_bootstrap, tmp_path, name, own[name])
        assert len(single) >= 10
        assert fleet[name] == single, _first_difference(name, fleet[name], single)
        assert fleet[name][-1]["decision"] == decision
    # two processes: the rollouts' judges spread over the workers, the same verdicts
    res = _cli("run", "--rollouts", str(tmp_path / "rollouts"), "--source", f"kafka://{kafka_bootstrap}/{topic}",
               "--until-end", "--verdicts", str(tmp_path / "two.jsonl"), "--dead-letters",
               str(tmp_path / "two.dl.jsonl"), "--processes", "2")
    assert res.returncode == 0, res.stderr
    assert _verdicts(tmp_path / "two.jsonl") == fleet
    assert "latest per rollout: chat stop, docs insufficient_data, search promote" in res.stderr
    # what matched no rollout was counted, not dead-lettered; the broken messages went to their rollout
    dead = [json.loads(x) for x in (tmp_path / "fleet.dl.jsonl").read_text().splitlines()]
    assert dead and {d["variant"] for d in dead} == {"canary-v2"}
    assert any(v["gates"] and any(g["gate"] == "schema_violations" and g["status"] == "fail"
                                  for g in v["gates"]) for v in fleet["chat"])


def _live_fleet(rollouts: str, source: str, out: Path, port: int) -> subprocess.Popen[str]:
    """A live fleet run (no --until-end) writing verdicts to `out`, serving metrics on `port`."""
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "run", "--rollouts", rollouts, "--source", source,
         "--verdicts", str(out), "--dead-letters", str(out.with_suffix(".dl.jsonl")),
         "--metrics-port", str(port), "--metrics-addr", "127.0.0.1", "--batch-size", "2000"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return resp.read().decode()


def _get(port: int, path: str) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
        return json.loads(resp.read())


def _wait(check, timeout: float = 90, what: str = "") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail(f"timed out waiting for {what}")


def test_a_rollout_added_mid_run_judges_from_its_first_event_and_a_removed_one_stops(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    topic = _topic(kafka_bootstrap)
    rollouts = _directory(tmp_path, ["search"])
    out = tmp_path / "fleet.jsonl"
    port = free_port()
    proc = _live_fleet(str(rollouts), f"kafka://{kafka_bootstrap}/{topic}", out, port)
    try:
        search = _own("search", minutes=20)
        half = len(search) // 2
        docs_early = _own("docs", minutes=3)  # before its file exists: no rollout's, counted as unmatched
        _produce(kafka_bootstrap, topic, search[:half] + docs_early)
        _wait(lambda: "search" in _verdicts(out) if out.exists() else False, what="search's first verdicts")
        _wait(lambda: 'canary_gate_unmatched_events_total{x_exp="exp-docs"}' in _metrics(port),
              what="docs' early events counted as unmatched")
        (rollouts / "docs.toml").write_text(_config("docs"))
        _wait(lambda: "canary_gate_fleet_rollouts 2.0" in _metrics(port), what="the new file loaded")
        docs = _own("docs", minutes=12, start_minute=5)
        _produce(kafka_bootstrap, topic, [x for pair in itertools.zip_longest(search[half:], docs)
                                          for x in pair if x is not None])
        _wait(lambda: len(_verdicts(out).get("docs", [])) >= 6, what="docs' verdicts")
        assert _get(port, "/verdicts/docs")["rollout"] == "docs"
        # docs' verdicts are those of a run over the events that came after its file: from its first one
        single = _single(kafka_bootstrap, tmp_path, "docs", docs)
        judged = _verdicts(out)["docs"]
        assert judged == single[:len(judged)]
        assert judged[0]["window_end"] == single[0]["window_end"]

        (rollouts / "search.toml").unlink()
        _wait(lambda: 'rollout="search"' not in _metrics(port), what="search's series removed")
        before = len(_verdicts(out)["search"])
        assert {v["rollout"] for v in _get(port, "/verdicts")["verdicts"]} == {"docs"}
        _produce(kafka_bootstrap, topic, _own("search", minutes=4, start_minute=30))
        time.sleep(4)
        assert len(_verdicts(out)["search"]) == before  # a removed rollout publishes nothing more
        assert 'canary_gate_fleet_rollouts 1.0' in _metrics(port)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "rollouts: + docs" in err and "rollouts: - search" in err


def test_a_bad_file_is_reported_and_skipped_while_the_others_run(tmp_path: Path) -> None:
    rollouts = _directory(tmp_path, ["search", "docs"])
    (rollouts / "broken.toml").write_text("[rollout]\nname = 3\n")
    source = tmp_path / "events.jsonl"
    source.write_bytes(b"\n".join([x for pair in itertools.zip_longest(_own("search", 6), _own("docs", 6))
                                   for x in pair if x is not None]) + b"\n")
    out = tmp_path / "v.jsonl"
    res = _cli("run", "--rollouts", str(rollouts), "--source", str(source), "--verdicts", str(out))
    assert res.returncode == 0, res.stderr
    assert "rollouts: skipped broken.toml: rollout.name:" in res.stderr
    assert set(_verdicts(out)) == {"search", "docs"}
    res = _cli("run", "--rollouts", str(tmp_path / "nowhere"), "--source", str(source))
    assert res.returncode == 2 and res.stderr.strip().endswith("not a directory")


def test_kill_9_and_resume_with_several_rollouts_gives_the_verdicts_of_an_uninterrupted_run(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    names = list(FLEET)
    mixed = [x for group in itertools.zip_longest(*(_own(n) for n in names)) for x in group if x is not None]
    topic = _topic(kafka_bootstrap)
    _produce(kafka_bootstrap, topic, mixed)
    rollouts = _directory(tmp_path, names)

    def run(name: str, *extra: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return _cli("run", "--rollouts", str(rollouts), "--source", f"kafka://{kafka_bootstrap}/{topic}",
                    "--until-end", "--verdicts", str(tmp_path / f"{name}.jsonl"),
                    "--dead-letters", str(tmp_path / f"{name}.dl.jsonl"), "--batch-size", "500", *extra,
                    env=env)

    whole = run("whole")
    assert whole.returncode == 0, whole.stderr
    recovery = ["--recovery-dir", str(tmp_path / "rec"), "--snapshot-interval", "0.05"]
    killed = run("resumed", *recovery, env={"CANARY_GATE_FAILPOINT": "window_close:25"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert 0 < len((tmp_path / "resumed.jsonl").read_text().splitlines()) < 60
    resumed = run("resumed", *recovery)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed" in resumed.stderr or "resum" in resumed.stderr
    expected = _verdicts(tmp_path / "whole.jsonl")
    got = _verdicts(tmp_path / "resumed.jsonl")
    assert set(got) == set(names)
    for name in names:
        # a verdict made again after the crash is the same record; none is missing
        unique = {v["window_end"]: v for v in got[name]}
        assert list(unique.values()) == expected[name], name


def test_replay_of_a_directory_gives_each_rollout_its_stream_timeline(tmp_path: Path) -> None:
    """`replay --rollouts DIR` over an archive of the shared stream: each rollout's timeline is that of
    `run --rollouts` over the same file, and of `replay --config` over its events alone."""
    own = {name: _own(name, 8) for name in FLEET}
    claimed_twice = own["search"][5].replace(b'"exp-search"', b'"exp-both"')
    mixed = [x for group in itertools.zip_longest(*own.values()) for x in group if x is not None]
    archive = tmp_path / "shared.jsonl"
    archive.write_bytes(b"\n".join([*mixed, claimed_twice, b'{"broken']) + b"\n")
    rollouts = _directory(tmp_path, list(FLEET))
    for name in ("search", "chat"):  # both claim exp-both
        path = rollouts / f"{name}.toml"
        path.write_text(path.read_text().replace(f'x_exp = "exp-{name}"',
                                                 f'x_exp = ["exp-{name}", "exp-both"]'))
    rep = tmp_path / "rep"
    res = _cli("replay", "--rollouts", str(rollouts), str(archive), "--out", str(rep), "--no-report")
    assert res.returncode == 0, res.stderr
    stream = tmp_path / "stream.jsonl"
    res = _cli("run", "--rollouts", str(rollouts), "--source", str(archive), "--verdicts", str(stream),
               "--dead-letters", str(tmp_path / "stream.dl.jsonl"))
    assert res.returncode == 0, res.stderr
    from_stream = _verdicts(stream)
    for name, (_, decision) in FLEET.items():
        replayed = [json.loads(x) for x in (rep / f"{name}.verdicts.jsonl").read_text().splitlines()]
        assert replayed == from_stream[name] and replayed[-1]["decision"] == decision
        alone = tmp_path / f"{name}.jsonl"
        alone.write_bytes(b"\n".join(own[name]) + b"\n")
        config = tmp_path / f"{name}.toml"
        config.write_text(_config(name))
        res = _cli("replay", "--config", str(config), str(alone), "--out", str(tmp_path / f"alone-{name}"),
                   "--no-report")
        assert res.returncode == 0, res.stderr
        single = (tmp_path / f"alone-{name}" / f"{name}.verdicts.jsonl").read_text().splitlines()
        assert [json.loads(x) for x in single] == replayed
    def letters(path: Path) -> list[dict]:
        return [json.loads(x) for x in path.read_text().splitlines()]

    fleet_dead = letters(rep / "fleet.dead-letters.jsonl")
    assert [d["reason"] for d in fleet_dead] == ["ambiguous_rollout", "invalid_json"]
    assert "rollouts chat, search" in fleet_dead[0]["detail"]  # by name
    # the stream's dead-letter output holds the fleet's and every rollout's (chat's broken messages)
    replayed_dead = fleet_dead + [d for name in FLEET for d in letters(rep / f"{name}.dead-letters.jsonl")]
    assert len(replayed_dead) > 10
    assert sorted((d["reason"], d["source"]) for d in letters(tmp_path / "stream.dl.jsonl")) == sorted(
        (d["reason"], d["source"]) for d in replayed_dead)


def test_verdicts_made_again_after_a_crash_keep_the_config_they_were_first_made_under(tmp_path: Path) -> None:
    """Each rollout's verdict journal: after kill -9, the windows emitted after the last snapshot are
    judged again under the config they were first judged under, though chat's file changed meanwhile."""
    names = list(FLEET)
    source = tmp_path / "events.jsonl"
    source.write_bytes(b"\n".join(x for group in itertools.zip_longest(*(_own(n) for n in names))
                                  for x in group if x is not None) + b"\n")
    rollouts = _directory(tmp_path, names)
    args = ["run", "--rollouts", str(rollouts), "--source", str(source),
            "--verdicts", str(tmp_path / "v.jsonl"), "--dead-letters", str(tmp_path / "dl.jsonl"),
            "--batch-size", "300",
            "--recovery-dir", str(tmp_path / "rec"), "--snapshot-interval", "30"]
    killed = _cli(*args, env={"CANARY_GATE_FAILPOINT": "window_close:20"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    before = _verdicts(tmp_path / "v.jsonl")
    chat = rollouts / "chat.toml"
    chat.write_text(chat.read_text().replace('stage = "50%"', 'stage = "25%"'))
    resumed = _cli(*args)
    assert resumed.returncode == 0, resumed.stderr
    after = _verdicts(tmp_path / "v.jsonl")
    assert set(after) == set(names)
    for name in names:
        first = {v["window_end"]: v for v in before.get(name, [])}
        for record in after[name]:
            if record["window_end"] in first:  # made again: the same record, under the first config
                assert record == first[record["window_end"]], name
        assert len({v["window_end"] for v in after[name]}) == 12
    # chat: every window judged before the crash (those in the file, and any journaled whose verdict the
    # kill cut off) at 50 %, then the new stage from the first window not judged before
    emitted = {v["window_end"] for v in before["chat"]}
    stages = [v["stage"] for v in sorted({v["window_end"]: v for v in after["chat"]}.values(),
                                          key=lambda v: v["window_end"])]
    switch = stages.index("25%")
    assert emitted and set(stages[:switch]) == {"50%"} and set(stages[switch:]) == {"25%"}
    assert max(emitted) < sorted({v["window_end"] for v in after["chat"]})[switch]


def test_rollouts_registered_on_a_compacted_topic_are_judged_and_a_tombstone_removes_one(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    registry = f"rollouts-{uuid.uuid4().hex[:8]}"
    producer = Producer({"bootstrap.servers": kafka_bootstrap})

    def register(name: str, value: bytes | None) -> None:
        producer.produce(registry, key=name.encode(), value=value)
        assert producer.flush(30) == 0

    # the run creates the topic (compacted) if missing; one rollout registered before it starts
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    admin.create_topics([NewTopic(registry, 1, 1, config={"cleanup.policy": "compact"})])[registry].result(30)
    register("search", _config("search").encode())
    topic = _topic(kafka_bootstrap)
    out = tmp_path / "fleet.jsonl"
    port = free_port()
    proc = _live_fleet(f"kafka://{kafka_bootstrap}/{registry}", f"kafka://{kafka_bootstrap}/{topic}", out,
                       port)
    try:
        search = _own("search", minutes=20)
        _produce(kafka_bootstrap, topic, search[: len(search) // 2])
        _wait(lambda: "search" in _verdicts(out) if out.exists() else False, what="search's verdicts")
        register("docs", _config("docs").encode())
        register("chat", b"[rollout\n")  # not TOML: reported, skipped
        _wait(lambda: "canary_gate_fleet_rollouts 2.0" in _metrics(port)
              and "canary_gate_fleet_files_refused 1.0" in _metrics(port),
              what="docs registered, chat refused")
        docs = _own("docs", minutes=12, start_minute=5)
        _produce(kafka_bootstrap, topic, [x for pair in itertools.zip_longest(search[len(search) // 2:], docs)
                                          for x in pair if x is not None])
        _wait(lambda: len(_verdicts(out).get("docs", [])) >= 6, what="docs' verdicts")
        register("search", None)  # a tombstone
        _wait(lambda: 'rollout="search"' not in _metrics(port), what="search removed")
        assert _get(port, "/verdicts/docs")["rollout"] == "docs"
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "rollouts: skipped key 'chat': toml: not valid TOML" in err
    assert "rollouts: + docs (key 'docs')" in err and "rollouts: - search" in err
