"""Dashboards as code: the committed JSON is what the generator makes, and every PromQL
expression of dashboards and rules parses and names only metrics a real run exposes."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml
from conftest import ROOT, free_port, poll_metrics, start_run

DASHBOARDS = ROOT / "dashboards" / "json"
RULES = ROOT / "deploy" / "prometheus" / "canary-gate.rules.yml"


def _dashboard_exprs() -> list[str]:
    exprs = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            exprs += [t["expr"] for t in panel.get("targets", [])]
    return exprs


def _rules() -> list[dict]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def test_committed_json_is_what_the_generator_makes() -> None:
    res = subprocess.run([sys.executable, str(ROOT / "dashboards" / "generate.py"), "--check"],
                         capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stderr
    titles = {json.loads(p.read_text())["title"] for p in DASHBOARDS.glob("*.json")}
    assert {"canary-gate / rollout overview", "canary-gate / latency", "canary-gate / errors",
            "canary-gate / RAG quality", "canary-gate / skew and cache",
            "canary-gate / pipeline health"} == titles


def test_every_expression_parses(tmp_path: Path) -> None:
    exprs = [e.replace("$rollout", ".*") for e in _dashboard_exprs()] + [r["expr"] for r in _rules()]
    rules = [{"record": f"check_{i}", "expr": e} for i, e in enumerate(exprs)]
    groups = [{"name": "parse", "rules": rules}]
    path = tmp_path / "exprs.yml"
    path.write_text(yaml.safe_dump({"groups": groups}))
    res = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True,
                         timeout=60, check=False)
    assert res.returncode == 0, res.stdout + res.stderr


def test_expressions_use_only_metrics_a_running_pipeline_exposes(kafka_bootstrap: str,
                                                                  tmp_path: Path) -> None:
    topic = f"dash-{int(time.time() * 1000)}"
    res = subprocess.run([sys.executable, "-m", "pipeline.cli", "generate", "--scenario",
                          "schema_violations", "--minutes", "4",
                          "--out", f"kafka://{kafka_bootstrap}/{topic}", "--partitions", "2"],
                         cwd=ROOT, capture_output=True, timeout=120, check=False)
    assert res.returncode == 0, res.stderr
    port = free_port()
    proc = start_run(tmp_path, "healthy", f"kafka://{kafka_bootstrap}/{topic}", port)
    try:
        # a verdict out (watermark metrics exist from then on) and partition health
        body = poll_metrics(port, lambda text: "canary_gate_partition_lag_messages" in text
                            and bool(re.search(r"^canary_gate_verdicts_total [1-9]", text, re.M)))
        exposed = set(re.findall(r"^# TYPE (\S+) ", body, re.M))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    recorded = {r["record"] for r in _rules() if "record" in r}
    used = set()
    for expr in _dashboard_exprs() + [r["expr"] for r in _rules()]:
        used |= set(re.findall(r"\bcanary_gate[_:][A-Za-z0-9_:]+", expr))
    unknown = sorted(n for n in used if n not in exposed and n not in recorded)
    assert not unknown, f"not exposed by a running canary-gate: {unknown}"
    assert recorded <= used  # every recording rule feeds a dashboard or an alert
