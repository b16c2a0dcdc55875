"""Against the real Prometheus tools from Debian: promtool lints the exposition, and a
Prometheus server scrapes a running `canary-gate run`."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from conftest import ROOT
from test_metrics import GOLDEN

from pipeline import scenarios


def _tool(name: str) -> str:
    path = shutil.which(name)
    # CI installs these (scripts/install-system-deps.sh); a missing one is a failure, not a skip.
    assert path, f"{name} not found: run scripts/install-system-deps.sh"
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_promtool_accepts_the_exposition() -> None:
    res = subprocess.run([_tool("promtool"), "check", "metrics"], input=GOLDEN.read_bytes(),
                         capture_output=True, timeout=60, check=False)
    assert res.returncode == 0, res.stdout + res.stderr


def _query(port: int, expr: str) -> list[dict]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=5) as resp:
        body = json.load(resp)
    assert body["status"] == "success", body
    return list(body["data"]["result"])


@pytest.fixture
def prometheus(tmp_path: Path):  # type: ignore[no-untyped-def]
    metrics_port, web_port = _free_port(), _free_port()
    (tmp_path / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: canary-gate\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{metrics_port}']\n")
    log = (tmp_path / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [_tool("prometheus"), f"--config.file={tmp_path / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{web_port}"],
        stdout=log, stderr=subprocess.STDOUT)
    try:
        yield metrics_port, web_port, tmp_path / "prometheus.log"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def test_prometheus_scrapes_a_running_pipeline(prometheus, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    metrics_port, web_port, log = prometheus
    config = tmp_path / "rollout.toml"
    config.write_text(scenarios.scenario_config("new_5xx_class"))
    run = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "run", "--config", str(config), "--source", "-",
         "--verdicts", str(tmp_path / "v.jsonl"), "--metrics-port", str(metrics_port),
         "--metrics-addr", "127.0.0.1"],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert run.stdin is not None
    try:
        run.stdin.write(b"\n".join(scenarios.generate("new_5xx_class", 1, 12)) + b"\n")
        run.stdin.flush()  # stdin stays open: the pipeline keeps serving /metrics
        deadline = time.monotonic() + 90
        decision: list[dict] = []
        while time.monotonic() < deadline and not decision:
            time.sleep(1)
            try:
                decision = _query(web_port, 'canary_gate_decision{job="canary-gate"} == 1')
            except OSError:
                continue  # Prometheus still starting
        assert decision, log.read_text()[-2000:]
        labels = decision[0]["metric"]
        assert labels["rollout"] == "chat-rag-v2" and labels["stage"] == "50%"
        assert labels["decision"] == "stop"
        stops = _query(web_port, "canary_gate_gate_hard_stop == 1")
        assert {s["metric"]["gate"] for s in stops} == {"new_5xx_class"}
        assert _query(web_port, 'up{job="canary-gate"}')[0]["value"][1] == "1"
        assert _query(web_port, 'canary_gate_latency_seconds{phase="tfinal",q="0.95",temperature="warm"}')
    finally:
        run.stdin.close()
        code = run.wait(timeout=60)
    assert code == 0, run.stderr.read() if run.stderr else b""
