"""Bytewax cluster mode: several worker processes judge exactly like one."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, free_port, poll_metrics, start_run

from pipeline import scenarios

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
