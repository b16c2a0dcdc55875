"""Prometheus exposition of verdicts, statistics and pipeline health (SPEC section 6).

`CanaryCollector` keeps the latest verdict and running counters and renders
them on scrape; it is fed through an `ObserveSink` inside the dataflow.  Label values
that come from events (variant, region) were already capped by the engine's
`LabelCaps`; status codes are bounded by the schema (100-599) and failure
phases by their enum, so no event can grow the series count without bound.
Events counted under "other" because a label was full are counted per label
(`label_folded_events_total`), read from each closed window's counters.
Wall time (for event-time lag) comes from an injected clock.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from pipeline.engine import Report
from pipeline.io.kafka import SourceHealth
from pipeline.model import DeadLetter, Decision, GateStatus, Verdict
from pipeline.stats import OTHER

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


class CanaryCollector(Collector):
    """Holds what the last window closes said; renders it as metric families."""

    def __init__(self, clock: Callable[[], float] = time.time, health: SourceHealth | None = None,
                 rollouts: tuple[str, ...] = ()) -> None:
        self.clock = clock
        self.health = health
        self.configured = set(rollouts)
        self.records: dict[str, dict[str, Any]] = {}
        self.lock = threading.Lock()
        self.verdict: Verdict | None = None
        self.quantiles: dict[tuple[str, str, str, str, float], float] = {}
        self.horizon_stats: dict[str, dict[tuple[str, ...], float]] = {}
        self.watermark: float | None = None
        self.requests: Counter[tuple[str, str]] = Counter()
        self.errors: Counter[tuple[str, str]] = Counter()
        self.classes: Counter[tuple[str, str, str]] = Counter()
        self.x_warm: Counter[tuple[str, str]] = Counter()
        self.dropped: Counter[str] = Counter()
        self.events = 0
        self.verdicts = 0
        self.dedupe_overflow = 0
        self.labels: dict[str, int] = {}
        self.overflow: set[str] = set()
        self.folded: Counter[str] = Counter({label: 0 for label in FOLDED_IN})
        self.dead_letters: Counter[str] = Counter()

    def observe(self, item: Report | DeadLetter) -> None:
        """Fold one dataflow output in."""
        with self.lock:
            if isinstance(item, DeadLetter):
                self.dead_letters[str(item.reason)] += 1
                self.dropped[str(item.reason)] += 1
                return
            self.verdict = item.verdict
            self.records[item.verdict.rollout] = item.verdict.to_record()
            self.verdicts += 1
            self.quantiles = item.quantiles
            self.horizon_stats = item.horizon_stats
            self.watermark = item.watermark
            self.events = item.totals.get("events_in", 0)
            self.dedupe_overflow = item.totals.get("dedupe_overflow", 0)
            self.labels = {k[len("labels_"):]: n for k, n in item.totals.items() if k.startswith("labels_")}
            self.overflow = {k[len("overflow_"):] for k in item.totals if k.startswith("overflow_")}
            window = item.window
            if window is None:
                return
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
            for label, places in FOLDED_IN.items():
                for family, at in places:
                    counter = c.get(family)
                    if counter:
                        self.folded[label] += sum(n for key, n in counter.items()
                                                  if (key if at is None else key[at]) == OTHER)

    def latest(self) -> dict[str, dict[str, Any]]:
        """The latest verdict record per rollout."""
        with self.lock:
            return dict(self.records)

    def rollouts(self) -> set[str]:
        """Rollouts this process judges (configured, or seen in a verdict)."""
        with self.lock:
            return self.configured | set(self.records)

    def collect(self) -> Iterator[Metric]:
        with self.lock:
            yield from self._verdict_families()
            yield from self._stat_families()
            yield from self._health_families()

    def _verdict_families(self) -> Iterator[Metric]:
        v = self.verdict
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
        if v is not None:
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

    def _stat_families(self) -> Iterator[Metric]:
        latency = GaugeMetricFamily(
            f"{PREFIX}_latency_seconds",
            "Latency quantiles over the horizon per variant, region, warm/cold and phase.",
            labels=["variant", "region", "temperature", "phase", "q"])
        for (variant, region, temp, phase, q), ms in sorted(self.quantiles.items()):
            latency.add_metric([variant, region, temp, phase, f"{q:g}"], ms / 1000.0)
        yield latency
        h = self.horizon_stats
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
            gauge = GaugeMetricFamily(f"{PREFIX}_{name}", doc, labels=labels)
            for key, value in sorted(h.get(family, {}).items()):
                gauge.add_metric([k if k != "None" else "" for k in key], value)
            yield gauge
        yield _counter("requests", "User requests (x_warm pings and probes excluded).",
                       ["variant", "region"], self.requests)
        yield _counter("errors", "User requests with status >= 500.", ["variant", "region"], self.errors)
        yield _counter("errors_by_class", "5xx user requests by class (status, failure_phase).",
                       ["variant", "status", "failure_phase"], self.classes)
        yield _counter("x_warm_pings", "Warm-up pings (counted, in no gate).",
                       ["variant", "region"], self.x_warm)
        yield _counter("dropped_events", "Events kept out of the gates, by reason.",
                       ["reason"], {(k,): n for k, n in self.dropped.items()})
        yield _counter("dead_letters", "Messages sent to the dead-letter output, by reason.",
                       ["reason"], {(k,): n for k, n in self.dead_letters.items()})

    def _health_families(self) -> Iterator[Metric]:
        events = CounterMetricFamily(f"{PREFIX}_events_processed", "Decoded events processed.")
        events.add_metric([], float(self.events))
        verdicts = CounterMetricFamily(f"{PREFIX}_verdicts", "Verdicts published.")
        verdicts.add_metric([], float(self.verdicts))
        overflow = CounterMetricFamily(
            f"{PREFIX}_dedupe_overflow", "Request ids not remembered: limits.dedupe_max_ids reached.")
        overflow.add_metric([], float(self.dedupe_overflow))
        yield events
        yield verdicts
        yield overflow
        kept = GaugeMetricFamily(f"{PREFIX}_label_values", "Distinct values kept per event-derived label.",
                                 labels=["label"])
        full = GaugeMetricFamily(f"{PREFIX}_label_overflow",
                                 "1 once a label reached limits.max_label_values and folds into 'other'.",
                                 labels=["label"])
        for label, n in sorted(self.labels.items()):
            kept.add_metric([label], float(n))
            full.add_metric([label], 1.0 if label in self.overflow else 0.0)
        yield kept
        yield full
        yield _counter("label_folded_events",
                       "Events counted under the label value 'other' because the label was full "
                       "(limits.max_label_values; question: limits.max_question_ids).",
                       ["label"], {(k,): n for k, n in self.folded.items()})
        if self.watermark is not None:
            wm = GaugeMetricFamily(f"{PREFIX}_watermark_timestamp_seconds",
                                   "Stream-wide event-time watermark.")
            wm.add_metric([], self.watermark)
            lag = GaugeMetricFamily(f"{PREFIX}_event_time_lag_seconds",
                                    "Wall-clock time minus the event-time watermark.")
            lag.add_metric([], self.clock() - self.watermark)
            yield wm
            yield lag
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


def _counter(name: str, doc: str, labels: list[str], values: Any) -> CounterMetricFamily:
    family = CounterMetricFamily(f"{PREFIX}_{name}", doc, labels=labels)
    for key, n in sorted(values.items()):
        family.add_metric([str(k) for k in key], float(n))
    return family
