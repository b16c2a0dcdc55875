"""The /verdicts endpoints, and the Argo Rollouts / Flagger examples in docs/ against them."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml
from conftest import ROOT

from pipeline import scenarios

DOC = ROOT / "docs" / "rollout-controllers.md"


def _blocks() -> list[dict[str, Any]]:
    return [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", DOC.read_text(), re.S)]


def _get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def _json_path(expr: str, doc: Any) -> Any:
    """The `{$.a.b}` subset of JSONPath that the examples use."""
    m = re.fullmatch(r"\{\$((?:\.\w+)*)\}", expr)
    assert m, f"unsupported jsonPath {expr!r}"
    for key in filter(None, m.group(1).split(".")):
        doc = doc[key]
    return doc


def _condition(expr: str, result: Any) -> bool:
    m = re.fullmatch(r'result == "(\w+)"', expr)
    assert m, f"unsupported condition {expr!r}"
    return bool(result == m.group(1))


def test_endpoints_and_controller_examples_follow_the_verdicts(tmp_path: Path) -> None:
    argo, flagger = _blocks()
    metric = argo["spec"]["metrics"][0]
    hook = flagger["spec"]["analysis"]["webhooks"][0]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    argo_url = re.sub(r"^http://[^/]+", base, metric["provider"]["web"]["url"]).replace(
        "{{args.rollout}}", "chat-rag-v2")
    flagger_url = re.sub(r"^http://[^/]+", base, hook["url"])
    config = tmp_path / "rollout.toml"
    config.write_text(scenarios.scenario_config("healthy"))
    run = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "run", "--config", str(config), "--source", "-",
         "--verdicts", str(tmp_path / "v.jsonl"), "--metrics-port", str(port), "--metrics-addr", "127.0.0.1"],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert run.stdin is not None

    def until(decision: str) -> dict[str, Any]:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            time.sleep(0.5)
            try:
                code, body = _get(f"{base}/verdicts/chat-rag-v2")
            except OSError:
                continue
            if code == 200 and body.get("decision") == decision:
                return dict(body)
        raise AssertionError(f"never reached {decision}")

    try:
        deadline = time.monotonic() + 30
        while True:  # before the first window closes: known rollout, no decision yet
            try:
                pending = _get(f"{base}/verdicts/chat-rag-v2")
                assert pending == (200, {"rollout": "chat-rag-v2", "decision": None})
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.2)
        code, body = _get(f"{base}/verdicts/nope")
        assert code == 404 and body["rollouts"] == ["chat-rag-v2"]
        run.stdin.write(b"\n".join(scenarios.generate("healthy", 1, 12)) + b"\n")
        run.stdin.flush()
        record = until("promote")
        assert set(record) == {"id", "rollout", "stage", "window_end", "decision", "gates", "reasons"}
        result = _json_path(metric["provider"]["web"]["jsonPath"], record)
        assert _condition(metric["successCondition"], result)
        assert not _condition(metric["failureCondition"], result)
        assert _get(flagger_url)[0] == 200
        code, listing = _get(f"{base}/verdicts")
        assert code == 200 and [v["rollout"] for v in listing["verdicts"]] == ["chat-rag-v2"]
        # The canary breaks: a new 5xx class for the next 12 minutes.
        start = scenarios.DEFAULT_START + timedelta(minutes=12)
        run.stdin.write(b"\n".join(scenarios.generate("new_5xx_class", 1, 12, start=start)) + b"\n")
        run.stdin.flush()
        record = until("stop")
        result = _json_path(metric["provider"]["web"]["jsonPath"], _get(argo_url)[1])
        assert _condition(metric["failureCondition"], result)
        assert not _condition(metric["successCondition"], result)
        code, body = _get(flagger_url)
        assert code == 503 and body["ok"] is False and body["reasons"] == record["reasons"]
    finally:
        run.stdin.close()
        assert run.wait(timeout=60) == 0
