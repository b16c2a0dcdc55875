"""Self-monitoring alerts and where alerts go, against the real tools: promtool for the rules, the
real Alertmanager (Debian's prometheus-alertmanager) for routing and inhibition, and the receiver
of deploy/alert-receiver/ for delivery; a real Prometheus for a target that is down and for a hard
stop that pages end to end."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import yaml
from conftest import ROOT, free_port, start_run
from test_prometheus import ALERTMANAGER, RULE_TESTS, RULES, _tool

from pipeline import scenarios

PROMETHEUS_YML = ROOT / "deploy" / "prometheus" / "prometheus.yml"
RECEIVER = ROOT / "deploy" / "alert-receiver" / "receiver.py"
SELF_MONITORING = ("CanaryGateDown", "CanaryGateAbsent", "CanaryVerdictsStale")
MATCHER = re.compile(r'^(\w+)(=|!=)"(.*)"$')


def _rules() -> dict[str, dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {r["alert"]: r for g in groups for r in g["rules"] if "alert" in r}


def _tested_labels() -> dict[str, list[dict[str, str]]]:
    """Every label set the promtool unit tests expect of each alert (alertname included): promtool
    compares them exactly, so these are the labels the rules really give."""
    found: dict[str, list[dict[str, str]]] = {}
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            for alert in check["exp_alerts"]:
                labels = {k: str(v) for k, v in alert["exp_labels"].items()}
                found.setdefault(check["alertname"], []).append({"alertname": check["alertname"], **labels})
    return found


def _matches(matchers: list[str], labels: dict[str, str]) -> bool:
    for matcher in matchers:
        m = MATCHER.match(matcher)
        assert m, f"unexpected matcher {matcher!r}"
        name, op, value = m.groups()
        if (labels.get(name, "") == value) != (op == "="):
            return False
    return True


# --------------------------------------------------------------------------- rules


def test_the_rules_select_the_scrape_job_prometheus_yml_defines() -> None:
    jobs = {job["job_name"] for job in yaml.safe_load(PROMETHEUS_YML.read_text())["scrape_configs"]}
    selected = set(re.findall(r'up\{job="([^"]+)"\}', RULES.read_text()))
    assert selected == jobs == {"canary-gate"}
    rules = _rules()
    assert rules["CanaryGateDown"]["expr"].strip() == 'up{job="canary-gate"} == 0'
    assert rules["CanaryGateAbsent"]["expr"].strip() == 'absent(up{job="canary-gate"})'
    assert rules["CanaryGateDown"]["labels"]["severity"] == rules["CanaryGateAbsent"]["labels"]["severity"] \
        == "critical"


def _promtool_test(rules: dict[str, Any], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    (tmp_path / RULES.name).write_text(yaml.safe_dump(rules, sort_keys=False))
    (tmp_path / RULE_TESTS.name).write_text(RULE_TESTS.read_text())
    return subprocess.run([_tool("promtool"), "test", "rules", RULE_TESTS.name], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, check=False)


def _without(alert: str) -> Callable[[list[dict[str, Any]]], list[dict[str, Any]]]:
    return lambda rules: [r for r in rules if r.get("alert") != alert]


def _with_for(alert: str, duration: str) -> Callable[[list[dict[str, Any]]], list[dict[str, Any]]]:
    return lambda rules: [{**r, "for": duration} if r.get("alert") == alert else r for r in rules]


def _stalled_even_when_down(rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
    expr = "sum by (job, instance) (increase(canary_gate_verdicts_total[10m])) < 1"
    return [{**r, "expr": expr} if r.get("alert") == "CanaryGateStalled" else r for r in rules]


@pytest.mark.parametrize(("alert", "mutate"), [
    *[(name, _without(name)) for name in SELF_MONITORING],
    ("CanaryGateDown", _with_for("CanaryGateDown", "15m")),  # would not page at minute 14
    ("CanaryGateStalled", _stalled_even_when_down),  # would warn about a process that is down
])
def test_the_unit_tests_fail_on_rules_without_self_monitoring(alert: str, mutate: Callable[..., Any],
                                                             tmp_path: Path) -> None:
    doc = yaml.safe_load(RULES.read_text())
    assert _promtool_test(doc, tmp_path).returncode == 0
    for group in doc["groups"]:
        group["rules"] = mutate(group["rules"])
    res = _promtool_test(doc, tmp_path)
    assert res.returncode != 0 and f"alertname: {alert}," in res.stdout + res.stderr, res.stdout


def test_every_alert_carries_the_labels_its_inhibit_rules_compare() -> None:
    tested = _tested_labels()
    assert set(tested) == set(_rules())
    for name, label_sets in tested.items():
        for labels in label_sets:
            assert "job" in labels, (name, labels)
            assert "instance" in labels or name == "CanaryGateAbsent", (name, labels)
    inhibit = yaml.safe_load(ALERTMANAGER.read_text())["inhibit_rules"]
    warnings = [labels for sets in tested.values() for labels in sets if labels["severity"] == "warning"]
    for rule in inhibit:
        sources = [ls for sets in tested.values() for ls in sets if _matches(rule["source_matchers"], ls)]
        targets = [ls for ls in warnings if _matches(rule["target_matchers"], ls)]
        assert sources and targets, rule
        for labels in sources + targets:
            missing = [label for label in rule["equal"] if label not in labels]
            assert not missing, f"{labels['alertname']} lacks {missing}, compared by {rule}"
    # every warning can be inhibited by a hard stop of its rollout or of its process, and by each
    # self-monitoring page of its process
    for labels in warnings:
        for source in ("CanaryHardStop", "CanaryGateDown", "CanaryGateAbsent"):
            assert any(_matches(r["source_matchers"], {"alertname": source})
                       and _matches(r["target_matchers"], labels) for r in inhibit), (source, labels)


def test_amtool_routes_pages_to_the_pager_and_warnings_to_chat() -> None:
    for name, rule in _rules().items():
        receiver = {"critical": "pager", "warning": "chat"}[rule["labels"]["severity"]]
        res = subprocess.run([_tool("amtool"), "config", "routes", "test", f"--config.file={ALERTMANAGER}",
                              f"alertname={name}", f"severity={rule['labels']['severity']}"],
                             capture_output=True, text=True, timeout=60, check=False)
        assert res.stdout.strip() == receiver, (name, res.stdout + res.stderr)
    assert {r for r, rule in _rules().items() if rule["labels"]["severity"] == "critical"} == {
        "CanaryHardStop", "CanaryGateDown", "CanaryGateAbsent"}


# --------------------------------------------------------------------------- Alertmanager + receiver


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.load(resp)


def _poll(check: Callable[[], Any], timeout: float = 60) -> Any:
    """check() every half second until it is true or time runs out; its last result."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except OSError as exc:  # not listening yet
            last = exc
        else:
            if last:
                return last
        time.sleep(0.5)
    return last


def _wait_until(check: Callable[[], Any], what: Callable[[], str], timeout: float = 60) -> Any:
    """check()'s first true result; fails with what() (e.g. a log tail) if none comes in time."""
    last = _poll(check, timeout)
    if not last or isinstance(last, OSError):
        raise AssertionError(f"{what()}; last: {last!r}")
    return last


def _healthy(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as resp:
        return bool(resp.status == 200)


def _start(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def _pages(log: Path) -> list[dict[str, Any]]:
    """The notifications the receiver logged."""
    return [json.loads(line) for line in log.read_text().splitlines() if line.startswith('{"alertname"')]


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """deploy/alert-receiver/receiver.py on a free port: (port, its stdout)."""
    port, log = free_port(), tmp_path / "receiver.log"
    proc = _start([sys.executable, str(RECEIVER), "--host", "127.0.0.1", "--port", str(port)], log)
    try:
        _wait_until(lambda: _healthy(f"http://127.0.0.1:{port}/-/healthy"),
                    lambda: f"the receiver did not start: {log.read_text()}")
        yield port, log
    finally:
        _stop(proc)


@pytest.fixture
def alertmanager(tmp_path: Path, receiver: tuple[int, Path]) -> Iterator[tuple[int, Path]]:
    """The real Alertmanager with deploy/alertmanager/alertmanager.yml, its webhooks sent to the
    receiver fixture instead of the compose service: (web port, receiver log)."""
    receiver_port, receiver_log = receiver
    config = yaml.safe_load(ALERTMANAGER.read_text())
    for rcv in config["receivers"]:
        for hook in rcv["webhook_configs"]:
            url = urlsplit(hook["url"])
            assert (url.hostname, url.port) == ("alert-receiver", 9095), hook["url"]
            hook["url"] = urlunsplit(url._replace(netloc=f"127.0.0.1:{receiver_port}"))
    path = tmp_path / "alertmanager.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    port, log = free_port(), tmp_path / "alertmanager.log"
    proc = _start([_tool("prometheus-alertmanager"), f"--config.file={path}",
                   f"--storage.path={tmp_path / 'am-data'}", f"--web.listen-address=127.0.0.1:{port}",
                   "--cluster.listen-address="], log)
    try:
        _wait_until(lambda: _healthy(f"http://127.0.0.1:{port}/-/ready"),
                    lambda: f"Alertmanager did not start: {log.read_text()[-2000:]}")
        yield port, receiver_log
    finally:
        _stop(proc)


def _post_alerts(port: int, label_sets: list[dict[str, str]]) -> None:
    now = datetime.now(UTC)
    body = json.dumps([{"labels": labels, "annotations": {"summary": labels["alertname"]},
                        "startsAt": now.isoformat(), "endsAt": (now + timedelta(hours=1)).isoformat()}
                       for labels in label_sets]).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/api/v2/alerts", data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        assert resp.status == 200


def _as(labels: dict[str, str], job: str, instance: str, rollout: str) -> dict[str, str]:
    """A tested label set moved onto another process and rollout (labels it lacks stay absent)."""
    moved = dict(labels)
    for name, value in (("job", job), ("instance", instance), ("rollout", rollout)):
        if name in moved:
            moved[name] = value
    return moved


def _key(labels: dict[str, str]) -> tuple[str, ...]:
    return tuple(labels.get(k, "") for k in ("alertname", "job", "instance", "rollout"))


def test_alertmanager_inhibits_every_warning_under_its_page_and_delivers_the_rest(alertmanager) -> None:  # type: ignore[no-untyped-def]
    port, receiver_log = alertmanager
    tested = _tested_labels()
    warnings = [sets[0] for sets in tested.values() if sets[0]["severity"] == "warning"]
    stop, down, absent = (tested[n][0] for n in ("CanaryHardStop", "CanaryGateDown", "CanaryGateAbsent"))
    # Each case on its own job, processes and rollouts, so that no case's page reaches another case.
    sources = [_as(down, "job-down", "down-1", ""), _as(absent, "job-absent", "", ""),
               _as(stop, "job-stop", "stop-1", "rollout-stopped"),
               _as(stop, "job-down", "down-1", "rollout-down-1")]  # a page is never inhibited
    inhibited = ([_as(w, "job-down", "down-1", "rollout-down-1") for w in warnings]
                 + [_as(w, "job-absent", "absent-1", "rollout-absent-1") for w in warnings]
                 + [_as(w, "job-absent", "absent-2", "rollout-absent-2") for w in warnings]
                 + [_as(w, "job-stop", "stop-1", "rollout-stopped") for w in warnings]
                 # another process judging the stopped rollout: its warnings about the rollout
                 + [_as(w, "job-stop", "stop-2", "rollout-stopped") for w in warnings if "rollout" in w])
    delivered = ([_as(w, "job-down", "down-2", "rollout-down-2") for w in warnings]
                 + [_as(w, "job-other", "other-1", "rollout-other") for w in warnings]
                 + [_as(w, "job-stop", "stop-2", "rollout-stopped") for w in warnings if "rollout" not in w]
                 + [_as(w, "job-stop", "stop-3", "rollout-running") for w in warnings])
    assert len({_key(a) for a in inhibited + delivered}) == len(inhibited + delivered)
    _post_alerts(port, sources + inhibited + delivered)

    expected = {_key(a): True for a in inhibited} | {_key(a): False for a in sources + delivered}

    def inhibition() -> dict[tuple[str, ...], bool]:
        """Whether Alertmanager holds each alert inhibited (by one or more others)."""
        return {_key(a["labels"]): bool(a["status"]["inhibitedBy"])
                for a in _get(f"http://127.0.0.1:{port}/api/v2/alerts")}

    # the inhibitor learns of the sources asynchronously: wait until it agrees, then compare
    _poll(lambda: inhibition() == expected, timeout=20)
    found = inhibition()
    assert {k for k, v in found.items() if v != expected.get(k)} == set(), found
    assert sum(found.values()) == len(inhibited)

    # Delivery: pages at once (group_wait 0s), warnings after group_wait; inhibited ones never.
    want = {("pager", _key(a)) for a in sources} | {("chat", _key(a)) for a in delivered}

    def delivered_so_far() -> set[tuple[str, tuple[str, ...]]]:
        return {(p["channel"], _key(p["labels"])) for p in _pages(receiver_log)}

    _poll(lambda: delivered_so_far() >= want, timeout=60)
    time.sleep(2)  # anything inhibited would have come with its group
    assert delivered_so_far() == want
    assert all(p["status"] == "firing" and p["summary"] == p["alertname"] for p in _pages(receiver_log))


def test_the_receiver_refuses_what_is_not_a_webhook_payload(receiver: tuple[int, Path]) -> None:
    port, log = receiver
    for body in (b"not json", b'{"alerts": "x"}', b"[1, 2]", b'{"alerts": [1]}'):
        req = urllib.request.Request(f"http://127.0.0.1:{port}/pager", data=body, method="POST")
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req, timeout=5)
        assert err.value.code == 400
    assert _pages(log) == []


# --------------------------------------------------------------------------- a real Prometheus


def _prometheus_config(tmp_path: Path, metrics_port: int, alertmanager_port: int | None) -> Path:
    """deploy/prometheus/prometheus.yml moved onto loopback: same job, the real rules, 1 s intervals."""
    config = yaml.safe_load(PROMETHEUS_YML.read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(RULES)]
    config["scrape_configs"][0]["static_configs"] = [{"targets": [f"127.0.0.1:{metrics_port}"]}]
    if alertmanager_port is None:
        del config["alerting"]
    else:
        config["alerting"]["alertmanagers"][0]["static_configs"] = [
            {"targets": [f"127.0.0.1:{alertmanager_port}"]}]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture
def start_prometheus(tmp_path: Path) -> Iterator[Callable[[int, int | None], int]]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(metrics_port: int, alertmanager_port: int | None) -> int:
        web = free_port()
        config = _prometheus_config(tmp_path, metrics_port, alertmanager_port)
        procs.append(_start([_tool("prometheus"), f"--config.file={config}",
                             f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{web}"], tmp_path / "prometheus.log"))
        return web

    try:
        yield start
    finally:
        for proc in procs:
            _stop(proc)


def _prometheus_alerts(port: int) -> list[dict[str, Any]]:
    return list(_get(f"http://127.0.0.1:{port}/api/v1/alerts")["data"]["alerts"])


def test_a_target_that_is_down_is_pending_as_canary_gate_down(start_prometheus, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    dead = free_port()  # nothing listens there
    web = start_prometheus(dead, None)
    log = tmp_path / "prometheus.log"
    pending = _wait_until(
        lambda: [a for a in _prometheus_alerts(web) if a["labels"]["alertname"] == "CanaryGateDown"],
        lambda: f"CanaryGateDown never pending: {log.read_text()[-2000:]}")
    (alert,) = pending
    assert alert["state"] == "pending"  # for 5 minutes before it pages
    assert alert["labels"] == {"alertname": "CanaryGateDown", "severity": "critical", "job": "canary-gate",
                               "instance": f"127.0.0.1:{dead}"}
    assert {a["labels"]["alertname"] for a in _prometheus_alerts(web)} == {"CanaryGateDown"}


def test_a_hard_stop_pages_through_alertmanager_to_the_receiver(start_prometheus, alertmanager,  # type: ignore[no-untyped-def]
                                                                 tmp_path: Path) -> None:
    am_port, receiver_log = alertmanager
    metrics_port = free_port()
    start_prometheus(metrics_port, am_port)
    run = start_run(tmp_path, "new_5xx_class", "-", metrics_port, stdin=True)
    assert run.stdin is not None
    try:
        run.stdin.write(b"\n".join(scenarios.generate("new_5xx_class", 1, 12)) + b"\n")
        run.stdin.flush()  # stdin stays open: the pipeline keeps serving /metrics
        pages = _wait_until(lambda: [p for p in _pages(receiver_log) if p["alertname"] == "CanaryHardStop"],
                            lambda: f"no page: {(tmp_path / 'prometheus.log').read_text()[-1500:]}",
                            timeout=120)
    finally:
        run.stdin.close()
        run.wait(timeout=60)
    labels = pages[0]["labels"]
    assert pages[0]["channel"] == "pager" and pages[0]["status"] == "firing"
    assert (labels["severity"], labels["rollout"], labels["gate"], labels["job"]) == (
        "critical", "chat-rag-v2", "new_5xx_class", "canary-gate")
    assert labels["instance"] == f"127.0.0.1:{metrics_port}"
