"""Grafana dashboards for canary-gate, as code (grafana-foundation-sdk).

    .venv/bin/python dashboards/generate.py          # writes dashboards/json/*.json
    .venv/bin/python dashboards/generate.py --check  # exit 1 if the committed JSON is stale

Every PromQL expression here uses the metric names of the README's "Metrics"
section; tests check them against a real scrape.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import stat, statetimeline, table, timeseries
from grafana_foundation_sdk.builders.dashboard import Dashboard, QueryVariable, Row, ThresholdsConfig
from grafana_foundation_sdk.builders.prometheus import Dataquery
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import DataSourceRef
from grafana_foundation_sdk.models.dashboard import Threshold, ThresholdsMode

OUT = Path(__file__).resolve().parent / "json"
DS = DataSourceRef(type_val="prometheus", uid="prometheus")
R = 'rollout=~"$rollout"'


def q(expr: str, legend: str = "", instant: bool = False) -> Dataquery:
    query = Dataquery().expr(expr).legend_format(legend or "__auto")
    return query.instant() if instant else query.range()


def ts(title: str, unit: str, *queries: Dataquery, width: int = 12, line: float | None = None) -> Any:
    panel = timeseries.Panel().title(title).unit(unit).datasource(DS).span(width).height(8)
    for query in queries:
        panel = panel.with_target(query)
    if line is not None:
        steps = [Threshold(color="green", value=None), Threshold(color="red", value=line)]
        panel = panel.thresholds(ThresholdsConfig().mode(ThresholdsMode.ABSOLUTE).steps(steps))
    return panel


def base(uid: str, title: str) -> Dashboard:
    return (Dashboard(f"canary-gate / {title}").uid(uid).tags(["canary-gate"]).refresh("30s")
            .time("now-6h", "now").timezone("utc").editable()
            .with_variable(QueryVariable("rollout").label("Rollout").datasource(DS)
                           .query("label_values(canary_gate_decision, rollout)").include_all(True)
                           .multi(True)))


def overview() -> Dashboard:
    return (base("cg-overview", "rollout overview")
            .with_row(Row("Decision"))
            .with_panel(statetimeline.Panel().title("Decision over time").datasource(DS).span(24).height(6)
                        .with_target(q(f'max by (rollout, decision) (canary_gate_decision{{{R}}}) == 1',
                                       "{{rollout}} {{decision}}")))
            .with_panel(stat.Panel().title("Hard stops now").datasource(DS).span(6).height(4)
                        .with_target(q(f"sum(canary_gate_gate_hard_stop{{{R}}})", instant=True)))
            .with_panel(stat.Panel().title("Stopped rollouts").datasource(DS).span(6).height(4)
                        .with_target(q(f"sum(canary_gate:rollout_stopped{{{R}}})", instant=True)))
            .with_row(Row("Gates"))
            .with_panel(table.Panel().title("Gates: observed vs threshold per region").datasource(DS)
                        .span(24).height(12)
                        .with_target(q(f"canary_gate_gate_observed{{{R}}}", "observed", instant=True))
                        .with_target(q(f"canary_gate_gate_threshold{{{R}}}", "threshold", instant=True))
                        .with_target(q(f"canary_gate_gate_p_value{{{R}}}", "p_value", instant=True))
                        .with_target(q(f"canary_gate_gate_status{{{R}}} == 1", "status", instant=True)))
            .with_panel(ts("Evidence: sequential p-value per gate and region (fails below thresholds.alpha)",
                           "none", q(f"canary_gate_gate_p_value{{{R}}}", "{{gate}} {{region}}"), width=24)))


def latency() -> Dashboard:
    lat = "canary_gate_latency_seconds"
    return (base("cg-latency", "latency")
            .with_panel(ts("Warm p50 / p95 / p99 (tfinal)", "s",
                           q(f'{lat}{{temperature="warm",phase="tfinal"}}', "{{variant}} {{region}} q{{q}}")))
            .with_panel(ts("Cold p50 / p95 / p99 (tfinal, never gated)", "s",
                           q(f'{lat}{{temperature="cold",phase="tfinal"}}', "{{variant}} {{region}} q{{q}}")))
            .with_panel(ts("Canary / control warm p95 (gate line 1.25)", "none",
                           q(f"canary_gate:p95_warm_latency_ratio{{{R}}}", "{{region}}"),
                           q(f'canary_gate_gate_threshold{{gate="p95_warm_latency",{R}}}', "threshold"),
                           width=24, line=1.25))
            .with_panel(ts("Warm p95 by phase", "s",
                           q(f'{lat}{{temperature="warm",q="0.95"}}', "{{variant}} {{region}} {{phase}}"),
                           width=24)))


def errors() -> Dashboard:
    return (base("cg-errors", "errors")
            .with_panel(ts("Error rate (5xx / requests)", "percentunit",
                           q("sum by (variant, region) (rate(canary_gate_errors_total[5m])) / "
                             "sum by (variant, region) (rate(canary_gate_requests_total[5m]))",
                             "{{variant}} {{region}}")))
            .with_panel(ts("5xx classes", "reqps",
                           q("sum by (variant, status, failure_phase) "
                             "(rate(canary_gate_errors_by_class_total[5m]))",
                             "{{variant}} {{status}}/{{failure_phase}}")))
            .with_panel(ts("Failures by phase", "reqps",
                           q("sum by (failure_phase) (rate(canary_gate_errors_by_class_total[5m]))",
                             "{{failure_phase}}")))
            .with_panel(ts("Requests", "reqps",
                           q("sum by (variant, region) (rate(canary_gate_requests_total[5m]))",
                             "{{variant}} {{region}}"))))


def quality() -> Dashboard:
    return (base("cg-quality", "RAG quality")
            .with_panel(ts("Median ΔS (promote <= 0.45, stop >= 0.60)", "none",
                           q('canary_gate_probe_median{stat="delta_s"}', "{{variant}}"), line=0.45))
            .with_panel(ts("Median coverage per topic (>= 0.70)", "none",
                           q('canary_gate_probe_median{stat="coverage"}', "{{variant}} {{topic}}"), line=0.7))
            .with_panel(ts("λ: paraphrases flipping on the worst question", "none",
                           q(f'canary_gate_gate_observed{{gate="lambda_convergence",{R}}}', "{{rollout}}"),
                           width=24)))


def skew_cache() -> Dashboard:
    return (base("cg-skew-cache", "skew and cache")
            .with_panel(table.Panel().title("Served INDEX_HASH / metric / analyzer per variant and region")
                        .datasource(DS).span(24).height(10)
                        .with_target(q("canary_gate_index_requests", instant=True)))
            .with_panel(ts("Cache prefixes", "none",
                           q("canary_gate_cache_prefix_requests", "{{variant}} {{prefix}}")))
            .with_panel(ts("Cache hit ratio", "percentunit",
                           q("canary_gate_cache_hit_ratio", "{{variant}}"))))


def health() -> Dashboard:
    return (base("cg-health", "pipeline health")
            .with_panel(ts("Events processed", "eps", q("rate(canary_gate_events_processed_total[5m])")))
            .with_panel(ts("Event-time lag", "s", q("canary_gate_event_time_lag_seconds")))
            .with_panel(ts("Consumer lag per partition", "none",
                           q("canary_gate_partition_lag_messages", "partition {{partition}}")))
            .with_panel(ts("Dead letters by reason", "eps",
                           q("canary_gate:dead_letters:rate5m", "{{reason}}")))
            .with_panel(ts("Verdicts", "none", q("increase(canary_gate_verdicts_total[10m])")))
            .with_panel(ts("Dropped events by reason", "eps",
                           q("sum by (reason) (rate(canary_gate_dropped_events_total[5m]))", "{{reason}}"))))


DASHBOARDS = {"overview": overview, "latency": latency, "errors": errors, "quality": quality,
              "skew-cache": skew_cache, "health": health}


def render() -> dict[str, str]:
    """File name -> JSON text of every dashboard."""
    return {f"{name}.json": json.dumps(build().build(), cls=JSONEncoder, indent=2, sort_keys=True)
            + "\n" for name, build in DASHBOARDS.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="fail if dashboards/json is not up to date")
    args = ap.parse_args()
    stale = []
    for name, text in render().items():
        path = OUT / name
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            OUT.mkdir(exist_ok=True)
            path.write_text(text)
    if stale:
        print(f"stale dashboards (run dashboards/generate.py): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
