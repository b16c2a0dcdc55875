"""The rollout-controller endpoints, and the Argo Rollouts / Flagger manifests in docs/, under each
controller's own rules.

Argo: every measurement is taken by tests/controllers (Go: expr and client-go's JSONPath, as Argo's
web provider and utils/evaluate use them) against a live `canary-gate run`; the measurements are
folded by `ArgoMetric`, a copy of Argo's limit rules (analysis/analysis.go assessMetricStatus,
utils/analysis/factory.go ValidateMetric).  Flagger: its webhook call is a POST of its JSON payload
that passes on 200-202 (pkg/controller/webhook.go), done here for real.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import ROOT

from pipeline import scenarios
from pipeline.io.http import BadRequest, assess, controller_answer, serve, wanted_stage
from pipeline.model import LADDER

DOC = ROOT / "docs" / "rollout-controllers.md"
GO_PROGRAM = ROOT / "tests" / "controllers"
ROLLOUT = "chat-rag-v2"  # rollout.name of the scenario configs
DOC_HOST = "http://canary-gate.monitoring:9464"


def _manifests() -> dict[str, dict[str, Any]]:
    """The YAML blocks of the doc, by kind (one of each)."""
    found: dict[str, dict[str, Any]] = {}
    for block in re.findall(r"```yaml\n(.*?)```", DOC.read_text(), re.S):
        doc = yaml.safe_load(block)
        assert doc["kind"] not in found, f"two {doc['kind']} blocks in {DOC}"
        found[doc["kind"]] = doc
    assert set(found) == {"AnalysisTemplate", "Rollout", "Canary"}, sorted(found)
    return found


# ---- Argo's limit rules ---------------------------------------------------------------------------

DEFAULT_CONSECUTIVE_ERROR_LIMIT = 4  # utils/defaults DefaultConsecutiveErrorLimit
COMPLETED = {"Successful", "Failed", "Error", "Inconclusive"}


def _int(metric: dict[str, Any], key: str, default: int) -> int:
    value = metric.get(key)
    return default if value is None else int(value)


def validate_metric(metric: dict[str, Any]) -> None:
    """Argo's ValidateMetric, for the limits and counts (raises ValueError as Argo refuses the template)."""
    count = _int(metric, "count", 0)
    failure_limit = _int(metric, "failureLimit", 0)
    success_limit = _int(metric, "consecutiveSuccessLimit", 0)
    inconclusive_limit = _int(metric, "inconclusiveLimit", 0)
    if success_limit < 0:
        raise ValueError("consecutiveSuccessLimit must be >= 0")
    if failure_limit < -1:
        raise ValueError("failureLimit must be >= 0, or -1 to be disabled")
    if success_limit == 0 and failure_limit == -1:
        raise ValueError("failureLimit and consecutiveSuccessLimit cannot both be disabled")
    if inconclusive_limit < 0:
        raise ValueError("inconclusiveLimit must be >= 0")
    if _int(metric, "consecutiveErrorLimit", 0) < 0:
        raise ValueError("consecutiveErrorLimit must be >= 0")
    if count > 0:
        if success_limit >= 0 and failure_limit >= 0 and count < failure_limit + success_limit:
            raise ValueError("count must be >= failureLimit + consecutiveSuccessLimit")
        if success_limit >= 0 and failure_limit < 0 and count < success_limit:
            raise ValueError("count must be >= consecutiveSuccessLimit")
        if count < inconclusive_limit:
            raise ValueError("count must be >= inconclusiveLimit")
    if count > 1 and not metric.get("interval"):
        raise ValueError("interval must be specified when count > 1")


@dataclass
class ArgoMetric:
    """One metric of an AnalysisRun: its counters and phase, updated as Argo updates them."""

    spec: dict[str, Any]
    phase: str = "Pending"
    count: int = 0
    successful: int = 0
    failed: int = 0
    inconclusive: int = 0
    error: int = 0
    consecutive_error: int = 0
    consecutive_success: int = 0
    measurements: list[str] = field(default_factory=list)

    def measure(self, phase: str) -> str:
        """Record one measurement's phase (runMeasurements) and return the metric's phase after it."""
        assert phase in COMPLETED, phase
        assert self.phase not in COMPLETED, f"the metric already ended {self.phase}: no more measurements"
        self.measurements.append(phase)
        if phase == "Successful":
            self.successful += 1
            self.count += 1
            self.consecutive_error = 0
            self.consecutive_success += 1
        elif phase == "Failed":
            self.failed += 1
            self.count += 1
            self.consecutive_error = 0
            self.consecutive_success = 0
        elif phase == "Inconclusive":
            self.inconclusive += 1
            self.count += 1
            self.consecutive_error = 0
            self.consecutive_success = 0
        else:
            self.error += 1
            self.consecutive_error += 1
            self.consecutive_success = 0
        self.phase = self._assess()
        return self.phase

    def _effective_count(self) -> int | None:
        count = _int(self.spec, "count", 0)
        if count == 0:
            return None if self.spec.get("interval") else 1
        return count

    def _assess(self) -> str:
        """assessMetricStatus after a completed measurement (not terminating)."""
        m = self.spec
        failure_limit = _int(m, "failureLimit", 0)
        phase = ""
        if failure_limit >= 0 and self.failed > failure_limit:
            phase = "Failed"
        if self.inconclusive > _int(m, "inconclusiveLimit", 0):
            phase = "Inconclusive"
        if self.consecutive_error > _int(m, "consecutiveErrorLimit", DEFAULT_CONSECUTIVE_ERROR_LIMIT):
            phase = "Error"
        if phase:
            return phase
        success_limit = _int(m, "consecutiveSuccessLimit", 0)
        if success_limit > 0 and self.consecutive_success >= success_limit:
            return "Successful"
        count = self._effective_count()
        if count is not None and self.count >= count:
            if success_limit > 0:
                return "Inconclusive" if failure_limit >= 0 else "Failed"
            return "Successful"
        return "Running"


def _shipped_metric() -> dict[str, Any]:
    metrics = _manifests()["AnalysisTemplate"]["spec"]["metrics"]
    assert len(metrics) == 1, "one metric: another metric's end would terminate the run (Successful)"
    return dict(metrics[0])


def _fold(spec: dict[str, Any], phases: list[str]) -> ArgoMetric:
    metric = ArgoMetric(spec)
    for phase in phases:
        if metric.measure(phase) in COMPLETED:
            break
    return metric


def test_argo_limit_copy_reproduces_the_inconclusive_promotion() -> None:
    # The template this doc used to ship: count 90 and inconclusiveLimit 90 let 90 holds promote,
    # and a promote halfway does not end the step.  The copy of Argo's rules must show both.
    old = {"interval": "1m", "count": 90, "failureLimit": 0, "inconclusiveLimit": 90}
    validate_metric(old)
    assert _fold(old, ["Inconclusive"] * 90).phase == "Successful"
    halfway = _fold(old, ["Inconclusive"] * 10 + ["Successful"] + ["Inconclusive"] * 10)
    assert halfway.phase == "Running" and halfway.count == 21


def test_shipped_template_cannot_succeed_on_inconclusive_measurements() -> None:
    metric = _shipped_metric()
    validate_metric(metric)
    assert "count" not in metric and metric["interval"]
    limit = int(metric["inconclusiveLimit"])
    waiting = _fold(metric, ["Inconclusive"] * 10_000)
    assert waiting.phase == "Inconclusive" and len(waiting.measurements) == limit + 1
    assert _fold(metric, ["Inconclusive"] * limit).phase == "Running"
    # Errors between inconclusive measurements neither count nor succeed.
    mixed = ["Inconclusive", "Error", "Error", "Inconclusive"] * 200
    assert _fold(metric, mixed).phase == "Inconclusive"


def test_shipped_template_ends_at_the_first_promote_or_stop() -> None:
    metric = _shipped_metric()
    promoted = _fold(metric, ["Inconclusive"] * 30 + ["Successful"])
    assert promoted.phase == "Successful" and len(promoted.measurements) == 31
    stopped = _fold(metric, ["Inconclusive"] * 30 + ["Failed"])
    assert stopped.phase == "Failed" and len(stopped.measurements) == 31
    assert _fold(metric, ["Failed"]).phase == "Failed"
    unreachable = _fold(metric, ["Inconclusive"] + ["Error"] * 10)
    assert unreachable.phase == "Error" and len(unreachable.measurements) == 1 + 5
    assert _fold(metric, ["Error"] * 4 + ["Inconclusive"]).phase == "Running"


# ---- the endpoints' own rules ---------------------------------------------------------------------

def _record(decision: str, stage: str) -> dict[str, Any]:
    return {"id": f"{ROLLOUT}/2025-08-27T06:31:00Z", "rollout": ROLLOUT, "stage": stage,
            "window_end": "2025-08-27T06:31:00Z", "decision": decision, "gates": [],
            "reasons": ["p95_warm_latency us-east: ..."] if decision == "stop" else []}


@pytest.mark.parametrize(("decision", "stage", "check", "gate"), [
    ("promote", "25%", 200, 200),
    ("promote", "10%", 200, 409),
    ("stop", "25%", 409, 409),
    ("stop", "10%", 200, 409),
    ("hold", "25%", 200, 409),
    ("insufficient_data", "25%", 200, 409),
    (None, None, 200, 409),
])
def test_check_fails_only_on_stop_and_gate_passes_only_on_promote_at_the_wanted_stage(
        decision: str | None, stage: str | None, check: int, gate: int) -> None:
    record = _record(decision, stage) if decision and stage else None
    body = assess(ROLLOUT, record, "25%")
    assert controller_answer("check", body)[0] == check
    assert controller_answer("gate", body)[0] == gate
    assert controller_answer("status", body) == (200, body)
    assert body["wanted_stage"] == "25%" and body["stage"] == stage and body["decision"] == decision
    assert stage in body["why"] if stage else "no window" in body["why"]
    if record:
        assert body["id"] == record["id"] and body["reasons"] == record["reasons"]


def test_wanted_stage_comes_from_the_query_then_flagger_metadata_then_the_run() -> None:
    flagger = json.dumps({"name": "chat-rag", "namespace": "prod", "phase": "Progressing",
                          "checksum": "abc", "metadata": {"stage": "10%"}}).encode()
    assert wanted_stage("", b"", "50%") == "50%"
    assert wanted_stage("stage=25%25", b"", "50%") == "25%"
    assert wanted_stage("stage=25%", b"", "50%") == "25%"  # a bare % as Go's client sends it
    assert wanted_stage("", flagger, "50%") == "10%"
    assert wanted_stage("stage=10%25", flagger, "50%") == "10%"
    assert wanted_stage("", b'{"name": "chat-rag", "phase": "Progressing"}', "50%") == "50%"
    assert wanted_stage("stage=shadow", b"  ", None) == "shadow"


@pytest.mark.parametrize(("query", "body", "message"), [
    ("stage=25", b"", "'25' (write % as %25"),
    ("stage=", b"", "got ''"),
    ("stag=25%25", b"", "unknown query parameter 'stag'"),
    ("stage=5%25&stage=10%25", b"", "stage given 2 times"),
    ("", b"{not json", "body is not JSON"),
    ("", b"[1, 2]", "got list"),
    ("", b'{"metadata": "stage=5%"}', "metadata must be an object, got 'stage=5%'"),
    ("", b'{"metadata": {"stage": 5}}', "metadata.stage must be a string, got 5"),
    ("", b'{"metadata": {"stage": "5"}}', "metadata.stage must be one of"),
    ("stage=5%25", b'{"metadata": {"stage": "10%"}}', "disagree"),
    ("", b"", "no stage"),
])
def test_questions_that_cannot_be_read_are_refused_with_the_bad_value(
        query: str, body: bytes, message: str) -> None:
    with pytest.raises(BadRequest, match=re.escape(message)) as caught:
        wanted_stage(query, body, None if message == "no stage" else "50%")
    assert caught.value.code == 400


class _Collector:
    """What the handler reads of a CanaryCollector."""

    def __init__(self, records: dict[str, dict[str, Any]], rollouts: set[str]) -> None:
        self.records = records
        self.known = rollouts

    def latest(self) -> dict[str, dict[str, Any]]:
        return dict(self.records)

    def rollouts(self) -> set[str]:
        return self.known | set(self.records)

    def collect(self) -> Iterator[Any]:
        return iter(())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _call(url: str, method: str = "GET", body: bytes | None = None,
          headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _json(url: str, method: str = "GET", body: bytes | None = None) -> tuple[int, Any]:
    code, raw = _call(url, method, body, {"Content-Type": "application/json"} if body is not None else None)
    return code, json.loads(raw) if raw else None


def test_http_methods_bodies_and_errors() -> None:
    port = _free_port()
    stage = ["25%"]
    collector = _Collector({ROLLOUT: _record("stop", "25%")}, {ROLLOUT, "pending-v1"})
    serve(collector, port, "127.0.0.1", stage=lambda _: stage[0])  # type: ignore[arg-type]
    base = f"http://127.0.0.1:{port}"
    for method in ("GET", "POST"):
        code, body = _json(f"{base}/verdicts/{ROLLOUT}/check", method, b"" if method == "POST" else None)
        assert (code, body["pass"], body["rollback"], body["wanted_stage"]) == (409, False, True, "25%")
    code, raw = _call(f"{base}/verdicts/{ROLLOUT}/check", "HEAD")
    assert (code, raw) == (409, b"")
    stage[0] = "50%"  # a SIGHUP moved the run on: the stop is from before the change
    assert _json(f"{base}/verdicts/{ROLLOUT}/check")[0] == 200
    assert _call(f"{base}/verdicts/{ROLLOUT}/check", "HEAD") == (200, b"")
    code, body = _json(f"{base}/verdicts/pending-v1/gate", "POST", b'{"metadata": {"stage": "1%"}}')
    assert (code, body["decision"], body["wanted_stage"]) == (409, None, "1%")
    assert _json(f"{base}/verdicts/pending-v1/check")[0] == 200
    assert _json(f"{base}/verdicts/pending-v1")[1] == {"rollout": "pending-v1", "decision": None}
    for path in ("check", "gate", "status"):
        code, body = _json(f"{base}/verdicts/nope/{path}", "POST", b"{}")
        assert code == 404 and body["rollouts"] == ["chat-rag-v2", "pending-v1"], body
    code, body = _json(f"{base}/verdicts/{ROLLOUT}/gate", "POST", b"{oops")
    assert code == 400 and body["error"].startswith("body is not JSON"), body
    code, body = _json(f"{base}/verdicts/{ROLLOUT}/gate?stage=25")
    assert code == 400 and "'25'" in body["error"]
    code, body = _json(f"{base}/verdicts/{ROLLOUT}/status", "POST", b"x" * (64 * 1024 + 1))
    assert code == 413 and str(64 * 1024) in body["error"]
    chunks = iter([b'{"metadata": ', b'{"stage": "25%"}}'])  # no length: urllib sends it chunked
    code, raw = _call(f"{base}/verdicts/{ROLLOUT}/check", "POST", chunks)  # type: ignore[arg-type]
    assert (code, json.loads(raw)["wanted_stage"]) == (409, "25%")
    code, raw = _call(f"{base}/verdicts", "POST", b"{}")
    assert code == 405 and b"POST is for" in raw
    code, raw = _call(f"{base}/verdicts/{ROLLOUT}/approve")
    assert code == 404 and b"no such path" in raw
    assert _call(f"{base}/metrics", "HEAD") == (200, b"")


# ---- the manifests against a live run -------------------------------------------------------------

def _go() -> str:
    go = shutil.which("go") or "/usr/local/go/bin/go"
    assert Path(go).is_file(), "Go is needed to measure the Argo template (tests/controllers); not found"
    return go


@pytest.fixture(scope="session")
def argo_measure(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/controllers built once per session (go.mod/go.sum pin expr and client-go)."""
    out = tmp_path_factory.mktemp("controllers") / "argo-measure"
    # go.sum must already hold every module (-mod=readonly); the toolchain is the one installed.
    env = {**os.environ, "GOTOOLCHAIN": "local", "GOFLAGS": "-mod=readonly -buildvcs=false",
           "CGO_ENABLED": "0"}
    build = subprocess.run([_go(), "build", "-o", str(out), "."], cwd=GO_PROGRAM, env=env, check=False,
                           capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr
    return out


@dataclass
class Live:
    """A `canary-gate run` fed scenario traffic on stdin, one chunk at a time."""

    run: subprocess.Popen[bytes]
    config: Path
    base: str
    measure_bin: Path
    template: dict[str, Any]
    minute: int = 0

    def feed(self, scenario: str, minutes: int) -> Iterator[dict[str, Any]]:
        """Send `minutes` of a scenario one minute at a time; yield the verdict each minute closes."""
        assert self.run.stdin is not None
        start = scenarios.DEFAULT_START + timedelta(minutes=self.minute)
        by_minute: list[list[bytes]] = [[] for _ in range(minutes)]
        for line in scenarios.generate(scenario, 7, minutes, start=start):
            ts = datetime.fromisoformat(json.loads(line)["ts"])
            by_minute[min(int((ts - start).total_seconds() // 60), minutes - 1)].append(line)
        for lines in by_minute:
            self.run.stdin.write(b"\n".join(lines) + b"\n")
            self.run.stdin.flush()
            self.minute += 1
            if self.minute > 1:  # the first minute closes no window: the watermark is 30 s behind
                yield self._verdict()

    def _verdict(self) -> dict[str, Any]:
        # The watermark trails the last event by the allowed lateness (30 s): the window that
        # ends one minute before the last minute's end is the last one that closes.
        last = scenarios.DEFAULT_START + timedelta(minutes=self.minute - 1)
        want = last.strftime("%Y-%m-%dT%H:%M:%SZ")
        deadline = time.monotonic() + 60
        record: dict[str, Any] = {}
        while time.monotonic() < deadline:
            code, record = _json(f"{self.base}/verdicts/{ROLLOUT}")
            if code == 200 and record.get("window_end") == want:
                return record
            time.sleep(0.05)
        raise AssertionError(f"no verdict for the window ending {want}; last: {record}")

    def stage(self, stage: str) -> None:
        """Rewrite the config's stage and SIGHUP the run, as an operator moving the rollout does."""
        text = self.config.read_text()
        self.config.write_text(re.sub(r'(?m)^stage = ".*"$', f'stage = "{stage}"', text, count=1))
        self.run.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while _json(f"{self.base}/verdicts/{ROLLOUT}/status")[1]["wanted_stage"] != stage:
            assert time.monotonic() < deadline, f"SIGHUP did not move the run to {stage}"
            time.sleep(0.05)

    def argo(self, stage: str, rollout: str = ROLLOUT) -> dict[str, Any]:
        """One measurement of the shipped AnalysisTemplate, as Argo takes it at a step of `stage`."""
        request = json.dumps({"template": self.template, "args": {"rollout": rollout, "stage": stage}})
        host = self.base.removeprefix("http://")
        done = subprocess.run([str(self.measure_bin), "-host", host], input=request, check=False,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        lines = [json.loads(line) for line in done.stdout.splitlines()]
        assert len(lines) == 1 and lines[0]["metric"] == "canary-gate-verdict", lines
        return dict(lines[0])


def _flagger(hook: dict[str, Any], canary: dict[str, Any], base: str) -> dict[str, Any]:
    """Call one Canary webhook as Flagger does, and with HEAD and GET; pass means 200-202."""
    url = hook["url"].replace(DOC_HOST, base)
    meta = canary["metadata"]
    payload: dict[str, Any] = {"name": meta["name"], "namespace": meta["namespace"], "phase": "Progressing",
                               "checksum": "7c9f5d"}
    if hook.get("metadata"):
        payload["metadata"] = hook["metadata"]
    post, body = _call(url, "POST", json.dumps(payload).encode(), {"Content-Type": "application/json"})
    head, _ = _call(url, "HEAD")
    get, _ = _call(url, "GET")
    if not hook.get("metadata"):  # without metadata the three ask the same question
        assert post == head == get, (url, post, head, get)
    return {"passes": 200 <= post <= 202, "code": post, "body": json.loads(body)}


def test_manifests_follow_the_verdicts_under_each_controllers_rules(tmp_path: Path,
                                                                    argo_measure: Path) -> None:
    manifests = _manifests()
    template = manifests["AnalysisTemplate"]
    web = template["spec"]["metrics"][0]["provider"]["web"]
    assert web["url"].startswith(DOC_HOST + "/")
    step_args = {a["value"] for s in manifests["Rollout"]["spec"]["strategy"]["canary"]["steps"]
                 if "analysis" in s for a in s["analysis"]["args"]}
    assert {ROLLOUT, "25%", "50%"} <= step_args and step_args - {ROLLOUT} <= set(LADDER)
    canary = manifests["Canary"]
    hooks = {h["type"]: h for h in canary["spec"]["analysis"]["webhooks"]}
    # confirm-rollout runs before the canary has traffic: a gate there would wait forever.
    assert set(hooks) == {"rollout", "confirm-promotion"}, sorted(hooks)
    assert canary["spec"]["analysis"]["maxWeight"] == 50 and hooks["confirm-promotion"]["url"].endswith(
        "?stage=50%25")

    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    config = tmp_path / "rollout.toml"
    config.write_text(scenarios.scenario_config("healthy"))  # stage 50%, sustain 300 s, 60 s windows
    run = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "run", "--config", str(config), "--source", "-",
         "--verdicts", str(tmp_path / "v.jsonl"), "--metrics-port", str(port), "--metrics-addr", "127.0.0.1"],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    live = Live(run, config, base, argo_measure, template)
    step50, step25 = ArgoMetric(_shipped_metric()), ArgoMetric(_shipped_metric())

    def flagger() -> tuple[dict[str, Any], dict[str, Any]]:
        return _flagger(hooks["rollout"], canary, base), _flagger(hooks["confirm-promotion"], canary, base)

    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                pending = _json(f"{base}/verdicts/{ROLLOUT}")
                break
            except OSError:
                assert time.monotonic() < deadline, "the run never served HTTP"
                time.sleep(0.1)
        # Before the first window: nothing to roll back, nothing to promote.
        assert pending == (200, {"rollout": ROLLOUT, "decision": None})
        assert live.argo("50%")["phase"] == "Inconclusive"
        rollback, promotion = flagger()
        assert rollback["passes"] and not promotion["passes"] and promotion["body"]["decision"] is None
        unknown = live.argo("50%", rollout="chat-rag-v3")
        assert unknown["phase"] == "Error" and "404" in unknown["message"]

        # Healthy traffic at 50%: insufficient_data, then hold, then promote after 300 s clean.
        seen = set()
        for record in live.feed("healthy", 15):
            measured = live.argo("50%")
            step50.measure(measured["phase"])
            rollback, promotion = flagger()
            assert rollback["passes"], rollback
            if record["decision"] == "promote":
                break
            seen.add(record["decision"])
            assert measured["phase"] == "Inconclusive", (record["decision"], measured)
            assert not promotion["passes"] and promotion["body"]["why"].endswith("wait"), promotion
            assert step50.phase == "Running"
        assert seen == {"insufficient_data", "hold"}, seen
        assert measured["phase"] == "Successful" and step50.phase == "Successful", measured
        assert json.loads(measured["value"])["decision"] == "promote"
        assert promotion["passes"] and promotion["code"] == 200 and promotion["body"]["advance"] is True
        # The same promote is no promote for a step at another weight.
        assert live.argo("25%")["phase"] == "Inconclusive"
        assert _json(f"{base}/verdicts/{ROLLOUT}/gate?stage=25%25")[0] == 409

        # The operator moves the run to 25%: the promote at 50% no longer opens the 25% step.
        live.stage("25%")
        assert live.argo("25%")["phase"] == "Inconclusive"
        code, body = _json(f"{base}/verdicts/{ROLLOUT}/gate")
        assert (code, body["stage"], body["wanted_stage"]) == (409, "50%", "25%")
        for record in live.feed("healthy", 15):
            assert record["stage"] == "25%"
            measured = live.argo("25%")
            step25.measure(measured["phase"])
            if record["decision"] == "promote":
                break
            assert measured["phase"] == "Inconclusive" and step25.phase == "Running"
        assert len(step25.measurements) >= 5, "the promotion clock must start afresh at the new stage"
        assert measured["phase"] == "Successful" and step25.phase == "Successful", measured
        assert live.argo("50%")["phase"] == "Inconclusive"
        assert _json(f"{base}/verdicts/{ROLLOUT}/gate")[0] == 200
        rollback, promotion = flagger()
        assert rollback["passes"] and not promotion["passes"]  # Flagger's promotion waits for 50%

        # The next step, 50%, and the canary breaks: a new 5xx class from two minutes in.
        live.stage("50%")
        step50 = ArgoMetric(_shipped_metric())
        for record in live.feed("new_5xx_class", 8):
            measured = live.argo("50%")
            step50.measure(measured["phase"])
            if record["decision"] == "stop":
                break
            assert measured["phase"] == "Inconclusive" and step50.phase == "Running", (record, measured)
        assert (record["decision"], record["stage"]) == ("stop", "50%"), record
        assert measured["phase"] == "Failed" and step50.phase == "Failed", measured
        assert step50.measurements[:-1] and set(step50.measurements[:-1]) == {"Inconclusive"}
        assert live.argo("25%")["phase"] == "Failed"  # a fresh stop fails whatever step Argo is at
        rollback, promotion = flagger()
        assert not rollback["passes"] and rollback["code"] == 409 and not promotion["passes"]
        assert rollback["body"]["reasons"] == record["reasons"] and rollback["body"]["id"] == record["id"]
        assert _json(f"{base}/verdicts/{ROLLOUT}/check?stage=25%25")[0] == 200

        # The stage moves on before a window closes: that stop is from before the change.
        live.stage("10%")
        rollback, _ = flagger()
        assert rollback["passes"] and rollback["body"]["stage"] == "50%", rollback
        assert live.argo("10%")["phase"] == "Inconclusive"
    finally:
        if run.stdin:
            run.stdin.close()
        code = run.wait(timeout=60)
        stderr = run.stderr.read().decode() if run.stderr else ""
    assert code == 0, stderr
    for change in ("50% -> 25%", "25% -> 50%", "50% -> 10%"):
        assert f"SIGHUP: stage {change}" in stderr, stderr
