"""Against the real Prometheus tools from Debian: promtool lints the exposition, and a
Prometheus server scrapes a running `canary-gate run`."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, start_run
from test_metrics import GOLDEN

from pipeline import scenarios

RULES = ROOT / "deploy" / "prometheus" / "canary-gate.rules.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "canary-gate.rules.test.yml"
ALERTMANAGER = ROOT / "deploy" / "alertmanager" / "alertmanager.yml"


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
        f"rule_files:\n  - {RULES}\n"
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
    run = start_run(tmp_path, "new_5xx_class", "-", metrics_port, stdin=True)
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
        latency = _query(web_port, 'canary_gate_latency_seconds{phase="tfinal",q="0.95",temperature="warm"}')
        assert latency and {s["metric"]["rollout"] for s in latency} == {"chat-rag-v2"}
        # per-rollout health carries the rollout; the process's dead-letter output does not
        assert _query(web_port, 'canary_gate_verdicts_total{rollout="chat-rag-v2"}')
        assert not _query(web_port, 'canary_gate_dead_letters_total{rollout!=""}')
    finally:
        run.stdin.close()
        code = run.wait(timeout=60)
    assert code == 0, run.stderr.read() if run.stderr else b""


def test_promtool_checks_and_unit_tests_the_rules() -> None:
    promtool = _tool("promtool")
    for args in (["check", "rules", str(RULES)], ["test", "rules", str(RULE_TESTS)]):
        res = subprocess.run([promtool, *args], capture_output=True, text=True, timeout=120, check=False)
        assert res.returncode == 0, res.stdout + res.stderr
        assert "SUCCESS" in res.stdout


def test_every_alert_has_a_unit_test_and_a_runbook_section() -> None:
    rules = yaml.safe_load(RULES.read_text())
    alerts = {r["alert"]: r for g in rules["groups"] for r in g["rules"] if "alert" in r}
    tested = {t["alertname"] for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]
              for t in case.get("alert_rule_test", [])}
    assert set(alerts) == tested
    runbook = (ROOT / "docs" / "runbook.md").read_text()
    for name, rule in alerts.items():
        anchor = rule["annotations"]["runbook_url"].rsplit("#", 1)[1]
        assert anchor == name.lower() and f"## {name}" in runbook
        assert rule["labels"]["severity"] in ("critical", "warning")


def test_amtool_accepts_the_alertmanager_config_and_routes_by_severity() -> None:
    amtool = _tool("amtool")
    res = subprocess.run([amtool, "check-config", str(ALERTMANAGER)], capture_output=True, text=True,
                         timeout=60, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    for labels, receiver in ((["severity=critical", "alertname=CanaryHardStop"], "pager"),
                             (["severity=warning", "alertname=CanaryGateStalled"], "chat")):
        res = subprocess.run([amtool, "config", "routes", "test", f"--config.file={ALERTMANAGER}", *labels],
                             capture_output=True, text=True, timeout=60, check=False)
        assert res.stdout.strip() == receiver, res.stdout + res.stderr


def _alerts(port: int) -> list[dict]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/alerts", timeout=5) as resp:
        return list(json.load(resp)["data"]["alerts"])


def test_hard_stop_alert_fires_then_resolves(prometheus, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    metrics_port, web_port, log = prometheus
    run = start_run(tmp_path, "new_5xx_class", "-", metrics_port, stdin=True)
    assert run.stdin is not None

    def wait_for(predicate, what: str) -> list[dict]:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            time.sleep(1)
            try:
                alerts = [a for a in _alerts(web_port) if a["labels"]["alertname"] == "CanaryHardStop"]
            except OSError:
                continue
            if predicate(alerts):
                return alerts
        raise AssertionError(f"{what}: {log.read_text()[-2000:]}")

    try:
        run.stdin.write(b"\n".join(scenarios.generate("new_5xx_class", 1, 12)) + b"\n")
        run.stdin.flush()
        firing = wait_for(lambda a: any(x["state"] == "firing" for x in a), "the hard stop never fired")
        labels = firing[0]["labels"]
        assert (labels["severity"], labels["rollout"], labels["stage"], labels["gate"]) == (
            "critical", "chat-rag-v2", "50%", "new_5xx_class")
        assert "hard stop on new_5xx_class" in firing[0]["annotations"]["summary"]
        # The regression ends: 15 healthy minutes push it out of the 10-minute horizon.
        healthy_start = scenarios.DEFAULT_START + timedelta(minutes=12)
        run.stdin.write(b"\n".join(scenarios.generate("healthy", 1, 15, start=healthy_start)) + b"\n")
        run.stdin.flush()
        wait_for(lambda a: not a, "the hard stop never resolved")
    finally:
        run.stdin.close()
        code = run.wait(timeout=60)
    assert code == 0, run.stderr.read() if run.stderr else b""
