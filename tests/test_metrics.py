"""Prometheus exposition: exact text against a golden file, the `rollout` label, and the HTTP endpoint."""

from __future__ import annotations

import os
import socket
import urllib.request
from pathlib import Path

from conftest import BASE_TOML, BASE_TS, make_config, make_event, make_probe
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from pipeline import config as config_mod
from pipeline.engine import Engine, Output
from pipeline.io.http import serve
from pipeline.io.metrics import CanaryCollector
from pipeline.model import DeadLetterReason, DecodeError, Event

GOLDEN = Path(__file__).parent / "golden" / "metrics.txt"
ROLLOUT = "chat-rag-v2"  # the name in the test config
# The only families without a `rollout` label: what the process owns, not a rollout's judge.
PROCESS_WIDE = {"canary_gate_dead_letters", "canary_gate_partition_events_consumed",
                "canary_gate_partition_lag_messages"}


def _events() -> list[Event | DecodeError]:
    events: list[Event | DecodeError] = []
    for i in range(60):
        ts = BASE_TS + i
        events.append(make_event(ts=ts, tfinal=1000.0 + i))
        events.append(make_event(ts=ts, variant="canary-v2", region="eu-west", tfinal=1500.0 + i,
                                 status=502 if i == 7 else 200, failure_phase="body" if i == 7 else None))
        events.append(make_probe(ts=ts, probe_question=f"q{i % 3}"))
    events.append(make_event(ts=BASE_TS + 3, x_warm=True))
    events.append(DecodeError(b"{", DeadLetterReason.INVALID_JSON, "bad", None))
    return events


def _judged(cfg: config_mod.Config, events: list[Event | DecodeError]) -> list[Output]:
    engine = Engine(cfg)
    return engine.feed(events) + engine.close()


def _fed_collector() -> CanaryCollector:
    """A collector as `canary-gate run` builds it (rollouts from the config), fed one run."""
    cfg = make_config()
    collector = CanaryCollector(clock=lambda: BASE_TS + 3600, rollouts=(cfg.name,))
    for out in _judged(cfg, _events()):
        collector.observe(out)
    return collector


def _samples(collector: CanaryCollector) -> list[tuple[str, str, dict[str, str], float]]:
    """(family, sample name, labels, value) of every sample, parsed back from the text."""
    registry = CollectorRegistry()
    registry.register(collector)
    text = generate_latest(registry).decode()
    return [(f.name, s.name, s.labels, s.value) for f in text_string_to_metric_families(text)
            for s in f.samples]


def test_exposition_matches_golden_text() -> None:
    registry = CollectorRegistry()
    registry.register(_fed_collector())
    text = generate_latest(registry).decode()
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text()


def test_every_family_but_the_process_wide_ones_carries_the_rollout() -> None:
    samples = _samples(_fed_collector())
    families = {family for family, _, _, _ in samples}
    assert len(families) >= 25 and "canary_gate_dead_letters" in families
    for family, name, labels, _ in samples:
        if family in PROCESS_WIDE:
            assert "rollout" not in labels, name
        else:
            assert labels.get("rollout") == ROLLOUT, (name, labels)


def test_decision_is_one_hot_and_labels_are_bounded() -> None:
    registry = CollectorRegistry()
    registry.register(_fed_collector())
    decisions = [s for m in registry.collect() if m.name == "canary_gate_decision" for s in m.samples]
    assert sorted(s.labels["decision"] for s in decisions) == ["hold", "insufficient_data", "promote", "stop"]
    assert sum(s.value for s in decisions) == 1
    assert all(s.labels["rollout"] == ROLLOUT and s.labels["stage"] == "50%" for s in decisions)
    lag = registry.get_sample_value("canary_gate_event_time_lag_seconds", {"rollout": ROLLOUT})
    assert lag == 3600 - 60  # end of input moved the watermark to the last window end


def test_a_configured_rollout_counts_from_zero_before_its_first_verdict() -> None:
    registry = CollectorRegistry()
    registry.register(CanaryCollector(clock=lambda: BASE_TS, rollouts=(ROLLOUT,)))
    for name in ("events_processed_total", "verdicts_total", "dedupe_overflow_total"):
        assert registry.get_sample_value(f"canary_gate_{name}", {"rollout": ROLLOUT}) == 0, name
    assert registry.get_sample_value("canary_gate_label_folded_events_total",
                                     {"rollout": ROLLOUT, "label": "region"}) == 0
    assert not [s for m in registry.collect() if m.name == "canary_gate_decision" for s in m.samples]


def test_dropped_events_count_every_dead_letter_in_the_rollouts_windows() -> None:
    samples = _samples(_fed_collector())
    dropped = {labels["reason"]: value for _, name, labels, value in samples
               if name == "canary_gate_dropped_events_total"}
    dead = {labels["reason"]: value for _, name, labels, value in samples
            if name == "canary_gate_dead_letters_total"}
    assert dead == {"invalid_json": 1.0}
    assert dropped == {"invalid_json": 1.0, "x_warm": 1.0}


def test_two_rollouts_in_one_collector_keep_apart() -> None:
    """Fleet mode's shape: each rollout's series are what its run alone would expose."""
    other = config_mod.parse(BASE_TOML.replace(f'name = "{ROLLOUT}"', 'name = "search-v3"'))
    assert other.name == "search-v3"
    events = _events()
    shifted = [make_event(ts=BASE_TS + i, region="ap-south", tfinal=900.0) for i in range(30)]
    mine, theirs = _judged(make_config(), events), _judged(other, events[:-2] + shifted)
    both = CanaryCollector(clock=lambda: BASE_TS + 3600, rollouts=(ROLLOUT, "search-v3"))
    for a, b in zip(mine, theirs, strict=False):  # interleaved, as a fleet's outputs would arrive
        both.observe(a)
        both.observe(b)
    for out in mine[len(theirs):] + theirs[len(mine):]:
        both.observe(out)
    assert both.rollouts() == {ROLLOUT, "search-v3"}
    assert {r["rollout"] for r in both.latest().values()} == {ROLLOUT, "search-v3"}
    for name, outputs in ((ROLLOUT, mine), ("search-v3", theirs)):
        alone = CanaryCollector(clock=lambda: BASE_TS + 3600, rollouts=(name,))
        for out in outputs:
            alone.observe(out)
        want = [s for s in _samples(alone) if s[0] not in PROCESS_WIDE]
        got = [s for s in _samples(both) if s[2].get("rollout") == name]
        assert len(want) > 100 and got == want, name
    regions = {s[2]["region"] for s in _samples(both) if s[1] == "canary_gate_requests_total"
               and s[2]["rollout"] == "search-v3"}
    assert "ap-south" in regions


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
    assert f'canary_gate_latency_seconds{{phase="tffb",q="0.5",region="eu-west",rollout="{ROLLOUT}",' in body


def test_dedupe_overflow_and_label_folds_are_published() -> None:
    engine = Engine(make_config("[limits]\ndedupe_max_ids = 1\nmax_label_values = 3\n"))
    events = [make_event(ts=BASE_TS + i, request_id=f"r{i}", region=f"r-{i}") for i in range(10)]
    collector = CanaryCollector(clock=lambda: BASE_TS)
    for out in engine.feed(events) + engine.close():
        collector.observe(out)
    registry = CollectorRegistry()
    registry.register(collector)
    mine = {"rollout": ROLLOUT}
    assert registry.get_sample_value("canary_gate_dedupe_overflow_total", mine) == 9
    assert registry.get_sample_value("canary_gate_label_values", {**mine, "label": "region"}) == 3
    assert registry.get_sample_value("canary_gate_label_overflow", {**mine, "label": "region"}) == 1
    assert registry.get_sample_value("canary_gate_label_overflow", {**mine, "label": "variant"}) == 0
    assert registry.get_sample_value("canary_gate_label_folded_events_total",
                                     {**mine, "label": "region"}) == 7
