"""Shared test helpers: event factories and configs."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any

import pytest
from msgspec.structs import replace

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline import config as config_mod  # noqa: E402
from pipeline import scenarios  # noqa: E402
from pipeline.model import Event  # noqa: E402

BASE_TS = 1_756_274_400.0  # 2025-08-27T06:00:00Z

# The rollout config the scenarios are judged under: stage 50%, 60 s windows,
# 10-minute horizon, 30 s lateness, 300 s sustain, both variants' index and cache configured.
BASE_TOML = scenarios.scenario_config("healthy")


def make_config(extra: str = "", stage: str | None = None) -> config_mod.Config:
    """The base test config, with extra TOML appended (e.g. a [thresholds] table)."""
    cfg = config_mod.parse(BASE_TOML + extra)
    return cfg.with_stage(stage) if stage else cfg


def make_event(**kw: Any) -> Event:
    """A healthy warm control user request; override any field."""
    variant = kw.get("variant", "control")
    canary = variant == "canary-v2"
    ev = Event(
        ts=BASE_TS, route="chat.rag.answer", variant=variant, sticky="s-1", region="us-east",
        cold_start=False, x_warm=False, request_id=None, tffb=150.0, tusable=400.0, tfinal=1300.0,
        status=200, failure_phase=None, has_retrieval=True,
        index_hash="0x9a77" if canary else "0x9a76", metric="cosine", analyzer="bilstem",
        delta_s=None, coverage=None, lambda_state=-1, probe_question=None, probe_topic=None,
        probe_paraphrase=0, probe_seed=0, cache_prefix="v2-cnr:" if canary else "v1:", cache_hit=True,
    )
    return replace(ev, **kw)


def make_probe(**kw: Any) -> Event:
    """A healthy probe event (ΔS 0.3, coverage 0.8, λ →) of the canary by default."""
    base: dict[str, Any] = dict(variant="canary-v2", probe_question="q1", probe_topic="billing",
                                delta_s=0.3, coverage=0.8, lambda_state=0)
    base.update(kw)
    return make_event(**base)


@pytest.fixture
def cfg() -> config_mod.Config:
    return make_config()


def _broker_module():  # type: ignore[no-untyped-def]
    import importlib.util

    spec = importlib.util.spec_from_file_location("kafka_broker", ROOT / "kafka-broker" / "broker.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look themselves up there
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def running_broker(directory: Path):  # type: ignore[no-untyped-def]
    """A real single-node Kafka broker in `directory` (fresh log dir, free ports), stopped at the end.

    If it cannot start, the test fails with the broker's log tail; it never skips.
    """
    broker_mod = _broker_module()
    try:
        broker = broker_mod.start(directory)
    except broker_mod.BrokerError as exc:
        pytest.fail(f"Kafka broker did not start: {exc}", pytrace=False)
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """The broker shared by this test session."""
    with running_broker(tmp_path_factory.mktemp("kafka")) as broker:
        yield broker.bootstrap


def free_port() -> int:
    """An unused TCP port on 127.0.0.1."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_run(tmp_path: Path, scenario: str, source: str, port: int,
              stdin: bool = False, extra: tuple[str, ...] = ()):  # type: ignore[no-untyped-def]
    """`canary-gate run` in the background under a scenario's config, serving on `port`."""
    import subprocess

    config = tmp_path / "rollout.toml"
    config.write_text(scenarios.scenario_config(scenario))
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "run", "--config", str(config), "--source", source,
         "--verdicts", str(tmp_path / "v.jsonl"), "--dead-letters", str(tmp_path / "d.jsonl"),
         "--metrics-port", str(port), "--metrics-addr", "127.0.0.1", *extra],
        cwd=ROOT, stdin=subprocess.PIPE if stdin else None, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE)


def poll_metrics(port: int, done, timeout: float = 60) -> str:  # type: ignore[no-untyped-def]
    """Scrape /metrics every second until `done(text)` holds or time runs out; the last text."""
    import time
    import urllib.request

    body = ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(1)
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
                body = resp.read().decode()
        except OSError:
            continue
        if done(body):
            break
    return body


# Modules whose tests run canary-gate in a subprocess or need a broker, Prometheus or a
# browser, and do not mark themselves yet: every test in them counts as `integration`
# (`make unit` leaves them out; `make test` runs everything).  A module can instead set
# `pytestmark = pytest.mark.integration`, or mark single tests, and leave this list.
INTEGRATION_MODULES = frozenset({
    "test_alerts", "test_bench", "test_controllers", "test_dashboards", "test_files", "test_outputs",
    "test_prometheus", "test_recovery", "test_reliability", "test_replay", "test_report",
})
INTEGRATION_TESTS = frozenset({  # single tests of otherwise pure modules
    "test_compose::test_a_real_broker_with_the_compose_listeners_advertises_each_to_its_clients",
    "test_compose::test_the_image_installs_runtime_dependencies_only",
})


# Pure tests that take seconds each (property searches, floods, whole-scenario flows), not
# yet marked `slow` in their modules: `make unit` leaves them to `make test`.
SLOW_TESTS = frozenset({
    "test_archive::test_any_typed_row_reads_as_the_codec_decodes_its_json",
    "test_cardinality::test_flood_costs_state_bounded_by_the_caps_not_by_distinct_values",
    "test_cardinality::test_flood_judges_alike_on_every_path",
    "test_cardinality::test_flood_keeps_series_under_the_bound_and_counts_every_fold",
    "test_cardinality::test_flood_of_other_variants_leaves_the_control_and_canary_alone",
    "test_hostile::test_far_future_and_past_events_open_no_window_and_grow_no_state",
    "test_hostile::test_hostile_messages_are_dead_letters_and_verdicts_do_not_move",
    "test_partial::test_partials_equal_event_by_event_for_any_chunking",
    "test_reorder::test_reordering_within_lateness_changes_no_verdict",
    "test_timelines::test_stream_timeline_is_the_recorded_one",
    "test_timestamps::test_any_timestamp_reads_alike",
})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark INTEGRATION_MODULES, INTEGRATION_TESTS and broker tests `integration`; SLOW_TESTS `slow`."""
    for item in items:
        if not isinstance(item, pytest.Function):
            continue
        module = item.module.__name__
        name = f"{module}::{item.originalname}"
        broker = "kafka_bootstrap" in item.fixturenames
        if module in INTEGRATION_MODULES or name in INTEGRATION_TESTS or broker:
            item.add_marker(pytest.mark.integration)
        if name in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)
