"""Prometheus exposition of verdicts, statistics and pipeline health (SPEC section 6).

`CanaryCollector` keeps, per rollout, the latest verdict and running counters,
and renders them on scrape; it is fed through an `ObserveSink` inside the
dataflow.  Everything a rollout's judge computes carries a `rollout` label:
verdicts, statistics, its clock (watermark, lag), its counts of events,
verdicts and dropped events, and its label caps.  The values of `rollout`
come from the config (the rollouts the collector is built with, and the
`rollout` of each verdict, which is the config's name), never from events.
What belongs to the process rather than to a rollout has no `rollout`
label: the dead-letter output (a message that cannot be decoded names no
rollout) and the Kafka source's partitions.

Label values that come from events (variant, region) were already capped by
the engine's `LabelCaps`; status codes are bounded by the schema (100-599) and
failure phases by their enum, so no event can grow the series count without
bound.  Events counted under "other" because a label was full are counted per
label (`label_folded_events_total`), read from each closed window's counters.
Counters read from closed windows (requests, errors, dropped events, folds)
move when a window closes.  Wall time (for event-time lag) comes from an
injected clock.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from pipeline.aggregate.stats import OTHER, ClosedWindow
from pipeline.engine import Report
from pipeline.fleet import MAX_UNMATCHED, Progress, Retired, Unmatched, UnmatchedCounts
from pipeline.io.health import SourceHealth
from pipeline.io.rollouts import FleetControl
from pipeline.model import DeadLetter, Decision, GateStatus, Verdict

PREFIX = "canary_gate"

# Where a closed window shows events whose label folded into OTHER, per label:
# (counter family, position of the label in its key; None: the key is the label).
FOLDED_IN: dict[str, tuple[tuple[str, int | None], ...]] = {
    "variant": (("events", None), ("duplicates", None), ("dead", 0)),
    "region": (("user", 1), ("x_warm", 1)),
    "index_hash": (("index_obs", 2),),
    "metric": (("index_obs", 3),),
    "analyzer": (("index_obs", 4),),
    "prefix": (("prefixes", 1),),
    "topic": (("coverage", 1),),
    "question": (("lam", 1),),
}


@dataclass
class RolloutState:
    """What the window closes of one rollout said: the latest views and running counters."""

    verdict: Verdict | None = None
    quantiles: dict[tuple[str, str, str, str, float], float] = field(default_factory=dict)
    horizon_stats: dict[str, dict[tuple[str, ...], float]] = field(default_factory=dict)
    watermark: float | None = None
    requests: Counter[tuple[str, str]] = field(default_factory=Counter)
    errors: Counter[tuple[str, str]] = field(default_factory=Counter)
    classes: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    x_warm: Counter[tuple[str, str]] = field(default_factory=Counter)
    dropped: Counter[str] = field(default_factory=Counter)
    events: int = 0
    verdicts: int = 0
    dedupe_overflow: int = 0
    labels: dict[str, int] = field(default_factory=dict)
    overflow: set[str] = field(default_factory=set)
    folded: Counter[str] = field(default_factory=lambda: Counter({label: 0 for label in FOLDED_IN}))

    def observe(self, report: Report) -> None:
        """Fold in one window close of this rollout."""
        self.verdict = report.verdict
        self.verdicts += 1
        self.quantiles = report.quantiles
        self.horizon_stats = report.horizon_stats
        self.watermark = report.watermark
        totals = report.totals
        self.events = totals.get("events_in", 0)
        self.dedupe_overflow = totals.get("dedupe_overflow", 0)
        self.labels = {k[len("labels_"):]: n for k, n in totals.items() if k.startswith("labels_")}
        self.overflow = {k[len("overflow_"):] for k in totals if k.startswith("overflow_")}
        if report.window is not None:
            self._count(report.window)

    def _count(self, window: ClosedWindow) -> None:
        c = window.c
        for key, n in c.get("user", {}).items():
            self.requests[key] += n
        for key, n in c.get("errors", {}).items():
            self.errors[key] += n
        for (variant, status, phase), n in c.get("classes", {}).items():
            self.classes[(variant, str(status), phase)] += n
        for key, n in c.get("x_warm", {}).items():
            self.x_warm[key] += n
            self.dropped["x_warm"] += n
        for _, n in c.get("duplicates", {}).items():
            self.dropped["duplicate"] += n
        for (_, reason), n in c.get("dead", {}).items():
            self.dropped[str(reason)] += n
        for label, places in FOLDED_IN.items():
            for family, at in places:
                counter = c.get(family)
                if counter:
                    self.folded[label] += sum(n for key, n in counter.items()
                                              if (key if at is None else key[at]) == OTHER)


class CanaryCollector(Collector):
    """Holds what the window closes of each rollout said; renders it as metric families."""

    def __init__(self, clock: Callable[[], float] = time.time, health: SourceHealth | None = None,
                 rollouts: tuple[str, ...] = (), fleet: FleetControl | None = None) -> None:
        self.clock = clock
        self.health = health
        self.fleet = fleet  # fleet mode: the rollouts directory (rollouts known before their first verdict)
        self.unmatched = UnmatchedCounts()  # fleet mode: events of no rollout, by x_exp (bounded)
        self.lock = threading.Lock()
        # Keyed by rollout name: the configured ones from the start (their counters show 0
        # before the first verdict), others as their first verdict arrives.
        self.state: dict[str, RolloutState] = {name: RolloutState() for name in rollouts}
        self.records: dict[str, dict[str, Any]] = {}
        self.dead_letters: Counter[str] = Counter()  # the process's dead-letter output, by reason

    def observe(self, item: Report | DeadLetter) -> None:
        """Fold one dataflow output in."""
        with self.lock:
            if isinstance(item, DeadLetter):
                # Counted per rollout too, in dropped_events_total, when its window closes.
                self.dead_letters[str(item.reason)] += 1
                return
            rollout = item.verdict.rollout
            self.records[rollout] = item.verdict.to_record()
            self.state.setdefault(rollout, RolloutState()).observe(item)

    def note(self, item: Any) -> None:
        """Fold in what a fleet says besides verdicts: a retired rollout, unmatched events, progress."""
        with self.lock:
            if isinstance(item, Retired):  # its series go: a removed rollout leaves the metrics
                self.state.pop(item.rollout, None)
                self.records.pop(item.rollout, None)
            elif isinstance(item, Unmatched):
                self.unmatched.add_all(item.counts.items())
            elif isinstance(item, Progress) and self.health is not None:
                self.health.note(item.partition, item.messages, item.lag)

    def latest(self) -> dict[str, dict[str, Any]]:
        """The latest verdict record per rollout."""
        with self.lock:
            return dict(self.records)

    def rollouts(self) -> set[str]:
        """Rollouts this process judges (configured, or seen in a verdict)."""
        with self.lock:
            known = set(self.state)
        if self.fleet is not None:
            known |= set(self.fleet.fleet.files)
        return known

    def collect(self) -> Iterator[Metric]:
        with self.lock:
            states = sorted(self.state.items())
            yield from _verdict_families(states)
            yield from _stat_families(states)
            yield from _health_families(states, self.clock)
            yield from self._process_families()

    def _process_families(self) -> Iterator[Metric]:
        yield _counter("dead_letters", "Messages sent to the dead-letter output of the process, by reason.",
                       ["reason"], {(k,): n for k, n in self.dead_letters.items()})
        if self.fleet is not None:
            yield from _fleet_families(self.fleet, self.unmatched)
        if self.health is not None and self.health.consumed:
            with self.health.lock:
                consumed = dict(self.health.consumed)
                lags = dict(self.health.lag)
            yield _counter("partition_events_consumed", "Messages consumed per source partition.",
                           ["partition"], {(p,): n for p, n in consumed.items()})
            behind = GaugeMetricFamily(f"{PREFIX}_partition_lag_messages",
                                       "Messages not yet consumed per source partition.",
                                       labels=["partition"])
            for p, n in sorted(lags.items()):
                behind.add_metric([p], float(n))
            yield behind


def _verdict_families(states: list[tuple[str, RolloutState]]) -> Iterator[Metric]:
    decision = GaugeMetricFamily(
        f"{PREFIX}_decision", "Latest decision per rollout, one-hot over the four decisions.",
        labels=["rollout", "stage", "decision"])
    status = GaugeMetricFamily(
        f"{PREFIX}_gate_status", "Latest gate status per region, one-hot over the five statuses.",
        labels=["rollout", "stage", "gate", "region", "status"])
    observed = GaugeMetricFamily(
        f"{PREFIX}_gate_observed", "Observed value of a gate row (absent for set-valued gates).",
        labels=["rollout", "stage", "gate", "region"])
    threshold = GaugeMetricFamily(
        f"{PREFIX}_gate_threshold", "Threshold of a gate row (absent for set-valued gates).",
        labels=["rollout", "stage", "gate", "region"])
    p_value = GaugeMetricFamily(
        f"{PREFIX}_gate_p_value",
        "Anytime-valid p-value of a gate row's sequential test since the stage began "
        "(ratio and rate gates).",
        labels=["rollout", "stage", "gate", "region"])
    hard_stop = GaugeMetricFamily(
        f"{PREFIX}_gate_hard_stop", "1 when a gate row is a hard stop (page on this).",
        labels=["rollout", "stage", "gate", "region"])
    latched = GaugeMetricFamily(
        f"{PREFIX}_stop_latched", "1 when the decision is a stop latched earlier in the stage.",
        labels=["rollout", "stage"])
    window_end = GaugeMetricFamily(
        f"{PREFIX}_window_end_timestamp_seconds", "End of the window of the latest verdict.",
        labels=["rollout", "stage"])
    for _, state in states:
        v = state.verdict
        if v is None:
            continue
        for d in Decision:
            decision.add_metric([v.rollout, v.stage, str(d)], 1.0 if v.decision is d else 0.0)
        window_end.add_metric([v.rollout, v.stage], v.window_end)
        latched.add_metric([v.rollout, v.stage], 1.0 if v.latch else 0.0)
        for row in v.gates:
            region = row.region or ""
            for s in GateStatus:
                status.add_metric([v.rollout, v.stage, row.gate, region, str(s)],
                                  1.0 if row.status is s else 0.0)
            if row.observed is not None:
                observed.add_metric([v.rollout, v.stage, row.gate, region], row.observed)
            if row.threshold is not None:
                threshold.add_metric([v.rollout, v.stage, row.gate, region], row.threshold)
            if row.p_value is not None:
                p_value.add_metric([v.rollout, v.stage, row.gate, region], row.p_value)
            hard_stop.add_metric([v.rollout, v.stage, row.gate, region], 1.0 if row.hard_stop else 0.0)
    yield from (decision, status, observed, threshold, p_value, hard_stop, latched, window_end)


def _stat_families(states: list[tuple[str, RolloutState]]) -> Iterator[Metric]:
    latency = GaugeMetricFamily(
        f"{PREFIX}_latency_seconds",
        "Latency quantiles over the horizon per rollout, variant, region, warm/cold and phase.",
        labels=["rollout", "variant", "region", "temperature", "phase", "q"])
    for rollout, state in states:
        for (variant, region, temp, phase, q), ms in sorted(state.quantiles.items()):
            latency.add_metric([rollout, variant, region, temp, phase, f"{q:g}"], ms / 1000.0)
    yield latency
    for name, doc, labels, family in (
        ("probe_median", "Median ΔS (stat=delta_s) or coverage per probe topic over the horizon.",
         ["variant", "stat", "topic"], "probe_median"),
        ("index_requests", "User requests per served (INDEX_HASH, metric, analyzer) over the horizon.",
         ["variant", "region", "index_hash", "metric", "analyzer"], "index"),
        ("cache_prefix_requests", "User requests per cache prefix over the horizon.",
         ["variant", "prefix"], "prefix"),
        ("cache_hit_ratio", "Cache hit ratio of user requests over the horizon.",
         ["variant"], "cache_hit"),
    ):
        gauge = GaugeMetricFamily(f"{PREFIX}_{name}", doc, labels=["rollout", *labels])
        for rollout, state in states:
            for key, value in sorted(state.horizon_stats.get(family, {}).items()):
                gauge.add_metric([rollout, *(k if k != "None" else "" for k in key)], value)
        yield gauge
    yield _per_rollout("requests", "User requests (x_warm pings and probes excluded).",
                       ["variant", "region"], states, lambda s: s.requests)
    yield _per_rollout("errors", "User requests with status >= 500.", ["variant", "region"],
                       states, lambda s: s.errors)
    yield _per_rollout("errors_by_class", "5xx user requests by class (status, failure_phase).",
                       ["variant", "status", "failure_phase"], states, lambda s: s.classes)
    yield _per_rollout("x_warm_pings", "Warm-up pings (counted, in no gate).", ["variant", "region"],
                       states, lambda s: s.x_warm)
    yield _per_rollout("dropped_events", "Events kept out of the rollout's gates, by reason "
                       "(dead letters counted in the rollout's windows, x_warm pings, duplicates).",
                       ["reason"], states, lambda s: {(k,): n for k, n in s.dropped.items()})


def _health_families(states: list[tuple[str, RolloutState]], clock: Callable[[], float]) -> Iterator[Metric]:
    yield _per_rollout("events_processed", "Decoded events processed by the rollout's judge.", [],
                       states, lambda s: {(): s.events})
    yield _per_rollout("verdicts", "Verdicts published.", [], states, lambda s: {(): s.verdicts})
    yield _per_rollout("dedupe_overflow", "Request ids not remembered: limits.dedupe_max_ids reached.",
                       [], states, lambda s: {(): s.dedupe_overflow})
    kept = GaugeMetricFamily(f"{PREFIX}_label_values", "Distinct values kept per event-derived label.",
                             labels=["rollout", "label"])
    full = GaugeMetricFamily(f"{PREFIX}_label_overflow",
                             "1 once a label reached limits.max_label_values and folds into 'other'.",
                             labels=["rollout", "label"])
    for rollout, state in states:
        for label, n in sorted(state.labels.items()):
            kept.add_metric([rollout, label], float(n))
            full.add_metric([rollout, label], 1.0 if label in state.overflow else 0.0)
    yield kept
    yield full
    yield _per_rollout("label_folded_events",
                       "Events counted under the label value 'other' because the label was full "
                       "(limits.max_label_values; question: limits.max_question_ids).",
                       ["label"], states, lambda s: {(k,): n for k, n in s.folded.items()})
    marks = [(rollout, state.watermark) for rollout, state in states if state.watermark is not None]
    if marks:
        wm = GaugeMetricFamily(f"{PREFIX}_watermark_timestamp_seconds",
                               "Event-time watermark of the rollout's judge.", labels=["rollout"])
        lag = GaugeMetricFamily(f"{PREFIX}_event_time_lag_seconds",
                                "Wall-clock time minus the event-time watermark.", labels=["rollout"])
        now = clock()
        for rollout, mark in marks:
            wm.add_metric([rollout], mark)
            lag.add_metric([rollout], now - mark)
        yield wm
        yield lag


def _per_rollout(name: str, doc: str, labels: list[str], states: list[tuple[str, RolloutState]],
                 values: Callable[[RolloutState], Any]) -> CounterMetricFamily:
    family = CounterMetricFamily(f"{PREFIX}_{name}", doc, labels=["rollout", *labels])
    for rollout, state in states:
        _add_counts(family, values(state).items(), rollout)
    return family


def _fleet_families(fleet: FleetControl, unmatched: UnmatchedCounts) -> Iterator[Metric]:
    """Fleet mode: the rollouts judged, the files refused, reloads, and events of no rollout by x_exp."""
    yield _counter("unmatched_events", "Events that matched no rollout's [match], by x_exp (the first "
                   f"{MAX_UNMATCHED} values seen, then other; empty: no x_exp).", ["x_exp"],
                   {(k,): n for k, n in unmatched.counts.items()})
    rollouts = GaugeMetricFamily(f"{PREFIX}_fleet_rollouts", "Rollouts the run judges now (files loaded).")
    rollouts.add_metric([], float(len(fleet.fleet.files)))
    yield rollouts
    refused = GaugeMetricFamily(f"{PREFIX}_fleet_files_refused",
                                "Files of the rollouts directory refused now (bad config, no [match], "
                                "a name taken, past limits.max_rollouts).")
    refused.add_metric([], float(len(fleet.fleet.problems)))
    yield refused
    yield _counter("fleet_reloads", "Times the rollouts directory was read again (a change or SIGHUP).",
                   [], {(): fleet.reloads})


def _counter(name: str, doc: str, labels: list[str], values: Any) -> CounterMetricFamily:
    family = CounterMetricFamily(f"{PREFIX}_{name}", doc, labels=labels)
    _add_counts(family, values.items())
    return family


def _add_counts(family: CounterMetricFamily, items: Iterable[tuple[Any, int]], *first: str) -> None:
    for key, n in sorted(items):
        family.add_metric([*first, *(str(k) for k in key)], float(n))
