"""Dashboards as code: the committed JSON is what the generator makes; it imports into Grafana's
dashboard schema (the pinned grafana-foundation-sdk, tests/grafana/); every query has a refId and
follows `$rollout`, every panel an id, every dashboard the stop and promote annotations; and every
PromQL expression of dashboards and rules parses, names only metrics a real run exposes, and,
evaluated by a real Prometheus scraping a run, returns nothing for a rollout that does not exist."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from confluent_kafka import Producer
from conftest import ROOT, free_port, poll_metrics, start_run

from pipeline import scenarios

DASHBOARDS = ROOT / "dashboards" / "json"
RULES = ROOT / "deploy" / "prometheus" / "canary-gate.rules.yml"
CHECKER = ROOT / "tests" / "grafana"
ROLLOUT = 'rollout=~"$rollout"'
SCENARIO_ROLLOUT = "chat-rag-v2"  # the rollout name in every scenario's config


def _boards() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text()) for p in sorted(DASHBOARDS.glob("*.json"))}


def _panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows and the panels of collapsed rows included."""
    for panel in board["panels"]:
        yield panel
        yield from panel.get("panels", [])


def _targets() -> list[tuple[str, str, dict[str, Any]]]:
    """(dashboard, panel title, target) of every panel query."""
    return [(name, panel.get("title", ""), t) for name, board in _boards().items()
            for panel in _panels(board) for t in panel.get("targets", [])]


def _annotation_exprs() -> list[str]:
    return [a["target"]["expr"] for board in _boards().values() for a in board["annotations"]["list"]
            if a.get("target", {}).get("expr")]


def _dashboard_exprs() -> list[str]:
    return [t["expr"] for _, _, t in _targets()] + _annotation_exprs()


def _rules() -> list[dict]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def _tool(name: str) -> str:
    path = shutil.which(name) or (f"/usr/local/go/bin/{name}" if name == "go" else None)
    # CI installs these; a missing one is a failure, not a skip.
    assert path and Path(path).exists(), f"{name} not found: install it (see scripts/install-system-deps.sh)"
    return path


# -- the generated JSON --------------------------------------------------------------------------
def test_committed_json_is_what_the_generator_makes() -> None:
    res = subprocess.run([sys.executable, str(ROOT / "dashboards" / "generate.py"), "--check"],
                         capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stderr
    titles = {b["title"] for b in _boards().values()}
    assert {"canary-gate / rollout overview", "canary-gate / latency", "canary-gate / errors",
            "canary-gate / RAG quality", "canary-gate / skew and cache",
            "canary-gate / pipeline health"} == titles


def test_every_query_follows_rollout_and_has_its_own_ref_id() -> None:
    targets = _targets()
    assert len(targets) >= 27
    for name, title, target in targets:
        assert ROLLOUT in target["expr"], (name, title, target["expr"])
        assert target["datasource"] == {"type": "prometheus", "uid": "prometheus"}, (name, title)
    for name, board in _boards().items():
        for panel in _panels(board):
            refs = [t.get("refId") for t in panel.get("targets", [])]
            assert all(isinstance(r, str) and r for r in refs), (name, panel.get("title"), refs)
            assert len(set(refs)) == len(refs), (name, panel.get("title"), refs)
        variable = board["templating"]["list"][0]
        assert variable["name"] == "rollout" and variable["multi"] and variable["includeAll"]
        # a series every configured rollout has from the start of a run, not only after a verdict
        assert variable["query"] == "label_values(canary_gate_verdicts_total, rollout)"


def test_every_panel_has_a_unique_id() -> None:
    for name, board in _boards().items():
        ids = [p.get("id") for p in _panels(board)]
        assert all(isinstance(i, int) and i > 0 for i in ids), (name, ids)
        assert len(set(ids)) == len(ids), (name, ids)


def test_stops_and_promotions_are_annotations_on_every_panel() -> None:
    for name, board in _boards().items():
        marks = {a["name"]: a for a in board["annotations"]["list"]}
        assert set(marks) == {"Stop", "Promote"}, (name, set(marks))
        for mark, decision in (("Stop", "stop"), ("Promote", "promote")):
            a = marks[mark]
            assert a["enable"] is True and a["hide"] is False, (name, mark)
            assert a["datasource"]["type"] == a["target"]["datasource"]["type"] == "prometheus"
            expr = a["target"]["expr"]
            assert ROLLOUT in expr and f'decision="{decision}"' in expr and "canary_gate_decision" in expr
            assert expr.endswith("== 1"), expr  # only while the decision holds
            assert a["target"]["refId"]
            # no panel filter (or one that excludes no panel): Grafana draws it on every panel
            panel_filter = a.get("filter")
            assert panel_filter is None or (panel_filter.get("exclude") and not panel_filter.get("ids")), (
                name, mark, panel_filter)
        assert marks["Stop"]["iconColor"] != marks["Promote"]["iconColor"]


# -- Grafana's dashboard schema, from the pinned Go SDK ------------------------------------------
@pytest.fixture(scope="session")
def dashcheck(tmp_path_factory: pytest.TempPathFactory) -> str:
    """tests/grafana built once: the strict import check against grafana-foundation-sdk's schema."""
    binary = tmp_path_factory.mktemp("dashcheck") / "dashcheck"
    # -mod=readonly: go.mod and go.sum pin the SDK; a build that would change them fails.
    env = {**os.environ, "GOFLAGS": "-mod=readonly -buildvcs=false", "GOTOOLCHAIN": "local"}
    res = subprocess.run([_tool("go"), "build", "-o", str(binary), "."], cwd=CHECKER, env=env,
                         capture_output=True, text=True, timeout=600, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    return str(binary)


def _dashcheck(binary: str, *paths: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([binary, *map(str, paths)], capture_output=True, text=True, timeout=60, check=False)


def test_generated_dashboards_import_into_the_sdk_schema_strictly(dashcheck: str) -> None:
    paths = sorted(DASHBOARDS.glob("*.json"))
    assert len(paths) == 6
    res = _dashcheck(dashcheck, *paths)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.splitlines() == [f"{p}: ok" for p in paths]


def _first_timeseries(board: dict[str, Any]) -> dict[str, Any]:
    return next(p for p in board["panels"] if p["type"] == "timeseries")


def _set(path: tuple[Any, ...], value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(board: dict[str, Any]) -> None:
        node: Any = _first_timeseries(board)
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return mutate


BROKEN: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    # what is done to the first time-series panel -> what the check must say
    "wrong-typed gridPos.h": (_set(("gridPos", "h"), "8"), r"gridPos\.h: .*cannot unmarshal string"),
    "wrong-typed option": (_set(("options", "legend", "showLegend"), "yes"),
                           r"options\.legend\.showLegend: .*cannot unmarshal string"),
    "unknown panel field": (_set(("colour",), "red"), r"unexpected field 'colour'"),
    "unknown option": (_set(("options", "lgend"), {}), r"options.*unexpected field 'lgend'"),
    "unknown field default": (_set(("fieldConfig", "defaults", "unti"), "s"), r"unexpected field 'unti'"),
    "wrong-typed query": (_set(("targets", 0, "expr"), 3), r"targets\[0\]\.expr: .*cannot unmarshal number"),
    "unknown query field": (_set(("targets", 0, "exprr"), "up"), r"targets\[0\].*unexpected field 'exprr'"),
    "query of another datasource": (_set(("targets", 0, "datasource"), {"type": "loki", "uid": "x"}),
                                    r'targets\[0\]: datasource type "loki"'),
    "unknown panel type": (_set(("type",), "timeserie"), r'panel type "timeserie" has no schema'),
    "wrong-typed annotation": (lambda b: b["annotations"]["list"][0].__setitem__("enable", "yes"),
                               r"annotations\.list\[0\]\.enable: .*cannot unmarshal string"),
    "unknown annotation query field": (
        lambda b: b["annotations"]["list"][0]["target"].__setitem__("exp", "up"),
        r"annotations\.list\[0\]\.target.*unexpected field 'exp'"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_the_schema_check_rejects_a_broken_dashboard(dashcheck: str, tmp_path: Path, case: str) -> None:
    mutate, message = BROKEN[case]
    board = copy.deepcopy(_boards()["latency.json"])
    mutate(board)
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(board))
    res = _dashcheck(dashcheck, path)
    assert res.returncode == 1, res.stdout + res.stderr
    assert re.search(message, res.stdout), res.stdout
    assert not res.stdout.endswith(": ok\n")


# -- PromQL against the real tools ---------------------------------------------------------------
def test_every_expression_parses(tmp_path: Path) -> None:
    exprs = [e.replace("$rollout", ".*") for e in _dashboard_exprs()] + [r["expr"] for r in _rules()]
    rules = [{"record": f"check_{i}", "expr": e} for i, e in enumerate(exprs)]
    groups = [{"name": "parse", "rules": rules}]
    path = tmp_path / "exprs.yml"
    path.write_text(yaml.safe_dump({"groups": groups}))
    res = subprocess.run([_tool("promtool"), "check", "rules", str(path)], capture_output=True, text=True,
                         timeout=60, check=False)
    assert res.returncode == 0, res.stdout + res.stderr


def test_every_recording_rule_feeds_a_dashboard_or_an_alert() -> None:
    recorded = {r["record"] for r in _rules() if "record" in r}
    used: set[str] = set()
    for expr in _dashboard_exprs() + [r["expr"] for r in _rules()]:
        used |= set(re.findall(r"\bcanary_gate:[A-Za-z0-9_:]+", expr))
    assert recorded <= used, f"recorded but used nowhere: {sorted(recorded - used)}"


def _query(port: int, expr: str, at: float) -> list[dict[str, Any]]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr, "time": at})
    with urllib.request.urlopen(url, timeout=10) as resp:
        body = json.load(resp)
    assert body["status"] == "success", body
    return list(body["data"]["result"])


def _start_prometheus(tmp_path: Path, metrics_port: int, web_port: int) -> subprocess.Popen[bytes]:
    (tmp_path / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"rule_files:\n  - {RULES}\n"
        "scrape_configs:\n  - job_name: canary-gate\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{metrics_port}']\n")
    with (tmp_path / "prometheus.log").open("wb") as log:
        return subprocess.Popen(
            [_tool("prometheus"), f"--config.file={tmp_path / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{web_port}"],
            stdout=log, stderr=subprocess.STDOUT)


# Families only a fleet run (run --rollouts DIR) exposes.
FLEET_ONLY = frozenset({"canary_gate_unmatched_events_total", "canary_gate_fleet_rollouts",
                        "canary_gate_fleet_files_refused", "canary_gate_fleet_reloads_total"})


def _start_fleet_run(tmp_path: Path, source: str, port: int) -> subprocess.Popen[bytes]:
    """A fleet of one rollout (the healthy scenario's, matching its two variants) serving on `port`."""
    rollouts = tmp_path / "rollouts"
    rollouts.mkdir()
    (rollouts / "rollout.toml").write_text(scenarios.scenario_config("healthy")
                                           + '\n[match]\nvariants = ["control", "canary-v2"]\n')
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "run", "--rollouts", str(rollouts), "--source", source,
         "--verdicts", str(tmp_path / "v.jsonl"), "--dead-letters", str(tmp_path / "d.jsonl"),
         "--metrics-port", str(port), "--metrics-addr", "127.0.0.1"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@pytest.mark.parametrize("mode", ["one rollout", "fleet"])
def test_expressions_name_exposed_metrics_and_follow_rollout_in_a_real_prometheus(
        kafka_bootstrap: str, tmp_path: Path, mode: str) -> None:
    topic = f"dash-{int(time.time() * 1000)}"
    res = subprocess.run([sys.executable, "-m", "pipeline.cli", "generate", "--scenario",
                          "schema_violations", "--minutes", "4",
                          "--out", f"kafka://{kafka_bootstrap}/{topic}", "--partitions", "2"],
                         cwd=ROOT, capture_output=True, timeout=120, check=False)
    assert res.returncode == 0, res.stderr
    fleet = mode == "fleet"
    if fleet:  # traffic of a variant no rollout matches: counted as unmatched
        res = subprocess.run([sys.executable, "-m", "pipeline.cli", "generate", "--scenario", "healthy",
                              "--minutes", "1", "--experiment", "exp-shadow", "--out",
                              str(tmp_path / "other.jsonl")], cwd=ROOT, capture_output=True, timeout=120,
                             check=False)
        assert res.returncode == 0, res.stderr
        producer = Producer({"bootstrap.servers": kafka_bootstrap})
        for line in (tmp_path / "other.jsonl").read_bytes().splitlines()[:200]:
            producer.produce(topic, line.replace(b'"variant":"', b'"variant":"shadow-'))
        assert producer.flush(30) == 0
    port, web_port = free_port(), free_port()
    source = f"kafka://{kafka_bootstrap}/{topic}"
    proc = _start_fleet_run(tmp_path, source, port) if fleet else start_run(tmp_path, "healthy", source, port)
    prometheus = _start_prometheus(tmp_path, port, web_port)
    try:
        # a verdict out (watermark metrics exist from then on) and partition health
        body = poll_metrics(port, lambda text: "canary_gate_partition_lag_messages" in text
                            and bool(re.search(r'^canary_gate_verdicts_total\{rollout="[^"]+"\} [1-9]',
                                               text, re.M)))
        exposed = set(re.findall(r"^# TYPE (\S+) ", body, re.M))
        recorded = {r["record"] for r in _rules() if "record" in r}
        used = set()
        for expr in _dashboard_exprs() + [r["expr"] for r in _rules()]:
            used |= set(re.findall(r"\bcanary_gate[_:][A-Za-z0-9_:]+", expr))
        unknown = sorted(n for n in used if n not in exposed and n not in recorded
                         and (fleet or n not in FLEET_ONLY))
        assert not unknown, f"not exposed by a running canary-gate: {unknown}"

        # Prometheus has scraped the run twice (rates) and evaluated the rules once.
        ready = ["rate(canary_gate_dead_letters_total[5m])", "canary_gate:rollout_stopped",
                 "rate(canary_gate_verdicts_total[5m])"]
        deadline = time.monotonic() + 90
        while True:
            time.sleep(1)
            try:
                if all(_query(web_port, e, time.time()) for e in ready):
                    break
            except OSError:
                pass  # still starting
            assert time.monotonic() < deadline, (tmp_path / "prometheus.log").read_text()[-2000:]
        at = time.time()
        variable = (f"http://127.0.0.1:{web_port}/api/v1/label/rollout/values?"
                    + urllib.parse.urlencode({"match[]": "canary_gate_verdicts_total"}))
        with urllib.request.urlopen(variable, timeout=10) as resp:  # what the $rollout variable lists
            assert json.load(resp)["data"] == [SCENARIO_ROLLOUT]

        def result(expr: str, rollout: str) -> list[str]:
            return sorted(json.dumps(r, sort_keys=True)
                          for r in _query(web_port, expr.replace("$rollout", rollout), at))

        exprs = sorted(set(_dashboard_exprs()))
        data = {e: result(e, SCENARIO_ROLLOUT) for e in exprs}
        for e in exprs:  # a rollout no process judges shows nothing: every query follows $rollout
            assert result(e, "no-such-rollout") == [], e
            assert data[e] == result(e, ".*"), e  # and the one rollout there is shows in full
        empty = [e for e in exprs if not data[e] and (fleet or not any(n in e for n in FLEET_ONLY))]
        # Not vacuous: the queries show this run (it stops, so the promote annotation has nothing),
        # the process-wide ones joined to the rollout too.
        assert len(exprs) >= 29 and len(empty) <= 3, empty
        for needle in ("canary_gate_partition_lag_messages", "canary_gate_dead_letters_total",
                       "canary_gate_requests_total", "canary_gate_latency_seconds", "canary_gate_decision",
                       *(sorted(FLEET_ONLY - {"canary_gate_fleet_reloads_total"}) if fleet else [])):
            assert any(needle in e and data[e] for e in exprs), (needle, empty)
    finally:
        prometheus.terminate()
        prometheus.wait(timeout=30)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
