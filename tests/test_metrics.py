"""Prometheus exposition: exact text against a golden file, and the HTTP endpoint."""

from __future__ import annotations

import os
import socket
import urllib.request
from pathlib import Path

from conftest import BASE_TS, make_config, make_event, make_probe
from prometheus_client import CollectorRegistry, generate_latest

from pipeline.engine import Engine
from pipeline.io.http import serve
from pipeline.io.metrics import CanaryCollector
from pipeline.model import DeadLetterReason, DecodeError

GOLDEN = Path(__file__).parent / "golden" / "metrics.txt"


def _fed_collector() -> CanaryCollector:
    engine = Engine(make_config())
    events = []
    for i in range(60):
        ts = BASE_TS + i
        events.append(make_event(ts=ts, tfinal=1000.0 + i))
        events.append(make_event(ts=ts, variant="canary-v2", region="eu-west", tfinal=1500.0 + i,
                                 status=502 if i == 7 else 200, failure_phase="body" if i == 7 else None))
        events.append(make_probe(ts=ts, probe_question=f"q{i % 3}"))
    events.append(make_event(ts=BASE_TS + 3, x_warm=True))
    events.append(DecodeError(b"{", DeadLetterReason.INVALID_JSON, "bad", None))
    collector = CanaryCollector(clock=lambda: BASE_TS + 3600)
    for out in engine.feed(events) + engine.close():
        collector.observe(out)
    return collector


def test_exposition_matches_golden_text() -> None:
    registry = CollectorRegistry()
    registry.register(_fed_collector())
    text = generate_latest(registry).decode()
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text()


def test_decision_is_one_hot_and_labels_are_bounded() -> None:
    registry = CollectorRegistry()
    registry.register(_fed_collector())
    decisions = [s for m in registry.collect() if m.name == "canary_gate_decision" for s in m.samples]
    assert sorted(s.labels["decision"] for s in decisions) == ["hold", "insufficient_data", "promote", "stop"]
    assert sum(s.value for s in decisions) == 1
    assert all(s.labels["rollout"] == "chat-rag-v2" and s.labels["stage"] == "50%" for s in decisions)
    lag = registry.get_sample_value("canary_gate_event_time_lag_seconds")
    assert lag == 3600 - 60  # end of input moved the watermark to the last window end


def test_flood_of_regions_keeps_series_bounded() -> None:
    engine = Engine(make_config("[limits]\nmax_label_values = 8\n"))
    events = [make_event(ts=BASE_TS + i % 60, region=f"region-{i}") for i in range(5000)]
    collector = CanaryCollector(clock=lambda: BASE_TS)
    for out in engine.feed(events) + engine.close():
        collector.observe(out)
    registry = CollectorRegistry()
    registry.register(collector)
    regions = {s.labels["region"] for m in registry.collect() if m.name == "canary_gate_requests"
               for s in m.samples}
    assert len(regions) <= 9 and "other" in regions


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_http_endpoint_serves_the_collector() -> None:
    port = _free_port()
    serve(_fed_collector(), port, "127.0.0.1")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        body = resp.read().decode()
    assert 'canary_gate_decision{decision="' in body
    assert "canary_gate_latency_seconds{" in body


def test_dedupe_overflow_and_label_folds_are_published() -> None:
    engine = Engine(make_config("[limits]\ndedupe_max_ids = 1\nmax_label_values = 3\n"))
    events = [make_event(ts=BASE_TS + i, request_id=f"r{i}", region=f"r-{i}") for i in range(10)]
    collector = CanaryCollector(clock=lambda: BASE_TS)
    for out in engine.feed(events) + engine.close():
        collector.observe(out)
    registry = CollectorRegistry()
    registry.register(collector)
    assert registry.get_sample_value("canary_gate_dedupe_overflow_total") == 9
    assert registry.get_sample_value("canary_gate_label_values", {"label": "region"}) == 3
    assert registry.get_sample_value("canary_gate_label_overflow", {"label": "region"}) == 1
    assert registry.get_sample_value("canary_gate_label_overflow", {"label": "variant"}) == 0
