"""Bytewax cluster mode: several worker processes judge exactly like one."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.testing import TestingSource, cluster_main
from conftest import ROOT, free_port, poll_metrics, start_run

from pipeline import scenarios
from pipeline.flow import MAX_WORKERS, judge_key, worker_of

VERDICTS = re.compile(r'^canary_gate_verdicts_total\{rollout="[^"]+"\} [1-9]', re.M)
CONSUMED = re.compile(r'^canary_gate_partition_events_consumed_total\{partition="(\d)"\} [1-9]', re.M)


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", "run", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, check=False)


def _generate(kafka_bootstrap: str, topic: str, scenario: str, minutes: int) -> None:
    res = subprocess.run([sys.executable, "-m", "pipeline.cli", "generate", "--scenario", scenario,
                          "--minutes", str(minutes), "--out", f"kafka://{kafka_bootstrap}/{topic}",
                          "--partitions", "4"], cwd=ROOT, capture_output=True, timeout=120, check=False)
    assert res.returncode == 0, res.stderr


class _Placement(DynamicSink[tuple[str, str]]):
    """Records the worker each (key, value) reaches the sink on."""

    def __init__(self) -> None:
        self.worker: dict[str, int] = {}

    def build(self, step_id: str, worker_index: int, worker_count: int) -> StatelessSinkPartition[Any]:
        placement = self

        class _Part(StatelessSinkPartition[tuple[str, str]]):
            def write_batch(self, items: list[tuple[str, str]]) -> None:
                for key, _ in items:
                    placement.worker[key] = worker_index

        return _Part()


def test_the_judge_key_lands_on_worker_zero_for_every_worker_count() -> None:
    """Bytewax itself places each key where `worker_of` says, for every count 1..MAX_WORKERS.

    One in-process run per worker count (threads): a stateful step keeps each key
    on its worker, and the sink after it records where the key arrived.
    """
    assert MAX_WORKERS == 32
    for workers in range(1, MAX_WORKERS + 1):
        keys = sorted({judge_key(workers), *(f"judge-{i}" for i in range(24)), "", "ü-é", "x" * 40})
        flow = Dataflow("placement")
        keyed = op.key_on("key", op.input("keys", flow, TestingSource(keys)), lambda k: k)
        placed = op.stateful_map("place", keyed, lambda state, value: (None, value))
        sink = _Placement()
        op.output("where", placed, sink)
        cluster_main(flow, [], 0, worker_count_per_proc=workers)
        assert sink.worker == {k: worker_of(k, workers) for k in keys}, workers
        assert sink.worker[judge_key(workers)] == 0


def test_judge_keys_are_the_first_of_their_kind_and_counts_are_bounded() -> None:
    for workers in range(1, MAX_WORKERS + 1):
        key = judge_key(workers)
        assert key.startswith("judge-")
        assert all(worker_of(f"judge-{i}", workers) != 0 for i in range(int(key.removeprefix("judge-"))))
    assert judge_key(1) == "judge-0" and judge_key(5) == "judge-3" and judge_key(31) == "judge-52"
    for bad in (0, MAX_WORKERS + 1):
        with pytest.raises(ValueError, match=f"1..{MAX_WORKERS}"):
            judge_key(bad)


@pytest.mark.integration
def test_two_processes_judge_a_file_like_one(tmp_path: Path) -> None:
    source = tmp_path / "s.jsonl"
    source.write_bytes(b"\n".join(scenarios.generate("schema_violations", 2, 8)) + b"\n")
    config = tmp_path / "c.toml"
    config.write_text(scenarios.scenario_config("schema_violations"))
    outs = []
    for n in ("1", "2"):
        res = _run(["--config", str(config), "--source", str(source), "--processes", n, "--board", "off",
                    "--verdicts", str(tmp_path / f"v{n}.jsonl"),
                    "--dead-letters", str(tmp_path / f"d{n}.jsonl")])
        assert res.returncode == 0, res.stderr
        assert re.search(r"8 verdicts", res.stderr), res.stderr  # process 0 reports the run
        outs.append(((tmp_path / f"v{n}.jsonl").read_text(), (tmp_path / f"d{n}.jsonl").read_text()))
    assert outs[0] == outs[1]
    assert outs[0][1]  # the dead letters went through too


def test_two_processes_from_kafka_equal_one(kafka_bootstrap: str, tmp_path: Path) -> None:
    topic = f"cluster-{int(time.time() * 1000)}"
    _generate(kafka_bootstrap, topic, "new_5xx_class", 10)
    config = tmp_path / "c.toml"
    config.write_text(scenarios.scenario_config("new_5xx_class"))
    records = []
    for n in ("1", "2"):
        res = _run(["--config", str(config), "--source", f"kafka://{kafka_bootstrap}/{topic}", "--until-end",
                    "--processes", n, "--board", "off", "--verdicts", str(tmp_path / f"v{n}.jsonl"),
                    "--dead-letters", str(tmp_path / f"d{n}.jsonl")])
        assert res.returncode == 0, res.stderr
        records.append((tmp_path / f"v{n}.jsonl").read_text().splitlines())
    assert len(records[0]) == 10
    assert records[0] == records[1]
    assert '"decision":"stop"' in records[1][-1]


def test_judge_and_metrics_live_in_process_zero(kafka_bootstrap: str, tmp_path: Path) -> None:
    """With 2 processes x 2 threads the verdicts and every partition's health reach process 0's port."""
    topic = f"cluster-live-{int(time.time() * 1000)}"
    _generate(kafka_bootstrap, topic, "healthy", 4)
    port = free_port()
    proc = start_run(tmp_path, "healthy", f"kafka://{kafka_bootstrap}/{topic}", port,
                     extra=("--processes", "2", "--workers", "2"))
    try:
        body = poll_metrics(port, lambda text: bool(VERDICTS.search(text))
                            and len(CONSUMED.findall(text)) == 4,
                            timeout=90)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert VERDICTS.search(body), body[-2000:]
    assert sorted(CONSUMED.findall(body)) == ["0", "1", "2", "3"], body[-2000:]
    assert proc.returncode == 0, err


@pytest.mark.integration
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--processes", "0"], "--processes must be >= 1"),
        (["--addresses", "127.0.0.1:5001;127.0.0.1:5002"], "--addresses and --process-id go together"),
        (["--addresses", "nohost", "--process-id", "0"], "is not HOST:PORT"),
        (["--addresses", "127.0.0.1:5001", "--process-id", "3"], "--process-id must be 0..0"),
        (["--processes", "2", "--addresses", "127.0.0.1:5001", "--process-id", "0"], "give one or the other"),
        (["--processes", "17", "--workers", "2"], "at most 32 workers in total"),
    ],
)
def test_cluster_options_are_checked(tmp_path: Path, args: list[str], message: str) -> None:
    source = tmp_path / "s.jsonl"
    source.write_bytes(b"\n".join(scenarios.generate("healthy", 1, 1)) + b"\n")
    config = tmp_path / "c.toml"
    config.write_text(scenarios.scenario_config("healthy"))
    res = _run(["--config", str(config), "--source", str(source), "--verdicts", str(tmp_path / "v.jsonl"),
                *args])
    assert res.returncode == 2
    assert message in res.stderr and res.stderr.count("\n") == 1, res.stderr
