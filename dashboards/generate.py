"""Grafana dashboards for canary-gate, as code (grafana-foundation-sdk).

    .venv/bin/python dashboards/generate.py          # writes dashboards/json/*.json
    .venv/bin/python dashboards/generate.py --check  # exit 1 if the committed JSON is stale

Every PromQL expression uses the metric names of docs/metrics.md and follows
the dashboard's `$rollout` variable: per-rollout metrics are selected by their
`rollout` label; process-wide ones (partition lag, dead letters, the fleet
mode's rollouts, refused files and unmatched events) are kept to the processes
that judge a selected rollout, by joining on the scrape target.
Every panel shows the rollouts' stops and promotions as annotations.  Tests
check the expressions against a real scrape and a real Prometheus, and the
JSON against the Grafana schema of the pinned Go SDK (tests/grafana/).
"""

from __future__ import annotations

import argparse
import json
import string
import sys
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import stat, statetimeline, table, timeseries
from grafana_foundation_sdk.builders.dashboard import (
    AnnotationQuery,
    Dashboard,
    QueryVariable,
    Row,
    ThresholdsConfig,
)
from grafana_foundation_sdk.builders.prometheus import Dataquery
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import dashboard as model
from grafana_foundation_sdk.models.common import DataSourceRef
from grafana_foundation_sdk.models.dashboard import Threshold, ThresholdsMode

OUT = Path(__file__).resolve().parent / "json"
DS = DataSourceRef(type_val="prometheus", uid="prometheus")
R = 'rollout=~"$rollout"'
# Keeps a process-wide series to the processes (scrape targets) that judge a selected rollout;
# canary_gate_verdicts_total has a series per configured rollout from the start of a run.
OF_ROLLOUT = f"and on (job, instance) canary_gate_verdicts_total{{{R}}}"
# Decisions shown as annotations on every panel: (name, decision, colour).
MARKED = (("Stop", "stop", "red"), ("Promote", "promote", "green"))


def q(expr: str, legend: str = "", instant: bool = False) -> Dataquery:
    """A Prometheus query; its refId is set by the panel it goes to."""
    query = Dataquery().expr(expr).legend_format(legend or "__auto").datasource(DS)
    return query.instant() if instant else query.range()


def targets(panel: Any, *queries: Dataquery) -> Any:
    """`panel` with `queries` as targets A, B, C, ..."""
    if len(queries) > len(string.ascii_uppercase):
        raise ValueError(f"at most {len(string.ascii_uppercase)} queries per panel, got {len(queries)}")
    for ref, query in zip(string.ascii_uppercase, queries, strict=False):
        panel = panel.with_target(query.ref_id(ref))
    return panel


def ts(title: str, unit: str, *queries: Dataquery, width: int = 12, line: float | None = None) -> Any:
    panel = targets(timeseries.Panel().title(title).unit(unit).datasource(DS).span(width).height(8), *queries)
    if line is not None:
        steps = [Threshold(color="green", value=None), Threshold(color="red", value=line)]
        panel = panel.thresholds(ThresholdsConfig().mode(ThresholdsMode.ABSOLUTE).steps(steps))
    return panel


def decision_marks() -> list[AnnotationQuery]:
    """One annotation query per marked decision; with no panel filter, every panel shows them."""
    marks = []
    for name, decision, colour in MARKED:
        expr = f'max by (rollout, stage) (canary_gate_decision{{{R},decision="{decision}"}}) == 1'
        marks.append(AnnotationQuery().name(name).datasource(DS).enable(True).hide(False)
                     .icon_color(colour).target(Dataquery().expr(expr).ref_id("Anno").datasource(DS))
                     .title_format(f"{{{{rollout}}}}: {decision}").text_format("stage {{stage}}")
                     .tag_keys("rollout,stage").use_value_for_time(False))
    return marks


def base(uid: str, title: str) -> Dashboard:
    board = (Dashboard(f"canary-gate / {title}").uid(uid).tags(["canary-gate"]).refresh("30s")
             .time("now-6h", "now").timezone("utc").editable()
             .with_variable(QueryVariable("rollout").label("Rollout").datasource(DS)
                            .query("label_values(canary_gate_verdicts_total, rollout)").include_all(True)
                            .multi(True)))
    for mark in decision_marks():
        board = board.annotation(mark)
    return board


def overview() -> Dashboard:
    return (base("cg-overview", "rollout overview")
            .with_row(Row("Decision"))
            .with_panel(targets(statetimeline.Panel().title("Decision over time").datasource(DS).span(24)
                                .height(6),
                                q(f"max by (rollout, decision) (canary_gate_decision{{{R}}}) == 1",
                                  "{{rollout}} {{decision}}")))
            .with_panel(targets(stat.Panel().title("Hard stops now").datasource(DS).span(6).height(4),
                                q(f"sum(canary_gate_gate_hard_stop{{{R}}})", instant=True)))
            .with_panel(targets(stat.Panel().title("Stopped rollouts").datasource(DS).span(6).height(4),
                                q(f"sum(canary_gate:rollout_stopped{{{R}}})", instant=True)))
            .with_row(Row("Gates"))
            .with_panel(targets(table.Panel().title("Gates: observed vs threshold per region").datasource(DS)
                                .span(24).height(12),
                                q(f"canary_gate_gate_observed{{{R}}}", "observed", instant=True),
                                q(f"canary_gate_gate_threshold{{{R}}}", "threshold", instant=True),
                                q(f"canary_gate_gate_p_value{{{R}}}", "p_value", instant=True),
                                q(f"canary_gate_gate_status{{{R}}} == 1", "status", instant=True)))
            .with_panel(ts("Evidence: sequential p-value per gate and region (fails below thresholds.alpha)",
                           "none", q(f"canary_gate_gate_p_value{{{R}}}", "{{rollout}} {{gate}} {{region}}"),
                           width=24)))


def latency() -> Dashboard:
    lat = "canary_gate_latency_seconds"
    per = "{{rollout}} {{variant}} {{region}}"
    return (base("cg-latency", "latency")
            .with_panel(ts("Warm p50 / p95 / p99 (tfinal)", "s",
                           q(f'{lat}{{{R},temperature="warm",phase="tfinal"}}', f"{per} q{{{{q}}}}")))
            .with_panel(ts("Cold p50 / p95 / p99 (tfinal, never gated)", "s",
                           q(f'{lat}{{{R},temperature="cold",phase="tfinal"}}', f"{per} q{{{{q}}}}")))
            .with_panel(ts("Canary / control warm p95 (gate line 1.25)", "none",
                           q(f"canary_gate:p95_warm_latency_ratio{{{R}}}", "{{rollout}} {{region}}"),
                           q(f'canary_gate_gate_threshold{{{R},gate="p95_warm_latency"}}',
                             "{{rollout}} threshold"),
                           width=24, line=1.25))
            .with_panel(ts("Warm p95 by phase", "s",
                           q(f'{lat}{{{R},temperature="warm",q="0.95"}}', f"{per} {{{{phase}}}}"),
                           width=24)))


def errors() -> Dashboard:
    def rate(metric: str, by: str) -> str:
        return f"sum by ({by}) (rate({metric}{{{R}}}[5m]))"

    return (base("cg-errors", "errors")
            .with_panel(ts("Error rate (5xx / requests)", "percentunit",
                           q(rate("canary_gate_errors_total", "rollout, variant, region") + " / "
                             + rate("canary_gate_requests_total", "rollout, variant, region"),
                             "{{rollout}} {{variant}} {{region}}")))
            .with_panel(ts("5xx classes", "reqps",
                           q(rate("canary_gate_errors_by_class_total",
                                  "rollout, variant, status, failure_phase"),
                             "{{rollout}} {{variant}} {{status}}/{{failure_phase}}")))
            .with_panel(ts("Failures by phase", "reqps",
                           q(rate("canary_gate_errors_by_class_total", "rollout, failure_phase"),
                             "{{rollout}} {{failure_phase}}")))
            .with_panel(ts("Requests", "reqps",
                           q(rate("canary_gate_requests_total", "rollout, variant, region"),
                             "{{rollout}} {{variant}} {{region}}"))))


def quality() -> Dashboard:
    return (base("cg-quality", "RAG quality")
            .with_panel(ts("Median ΔS (promote <= 0.45, stop >= 0.60)", "none",
                           q(f'canary_gate_probe_median{{{R},stat="delta_s"}}', "{{rollout}} {{variant}}"),
                           line=0.45))
            .with_panel(ts("Median coverage per topic (>= 0.70)", "none",
                           q(f'canary_gate_probe_median{{{R},stat="coverage"}}',
                             "{{rollout}} {{variant}} {{topic}}"), line=0.7))
            .with_panel(ts("λ: paraphrases flipping on the worst question", "none",
                           q(f'canary_gate_gate_observed{{{R},gate="lambda_convergence"}}', "{{rollout}}"),
                           width=24)))


def skew_cache() -> Dashboard:
    return (base("cg-skew-cache", "skew and cache")
            .with_panel(targets(table.Panel()
                                .title("Served INDEX_HASH / metric / analyzer per variant and region")
                                .datasource(DS).span(24).height(10),
                                q(f"canary_gate_index_requests{{{R}}}", instant=True)))
            .with_panel(ts("Cache prefixes", "none",
                           q(f"canary_gate_cache_prefix_requests{{{R}}}",
                             "{{rollout}} {{variant}} {{prefix}}")))
            .with_panel(ts("Cache hit ratio", "percentunit",
                           q(f"canary_gate_cache_hit_ratio{{{R}}}", "{{rollout}} {{variant}}"))))


def health() -> Dashboard:
    return (base("cg-health", "pipeline health")
            .with_panel(ts("Events processed", "eps",
                           q(f"rate(canary_gate_events_processed_total{{{R}}}[5m])", "{{rollout}}")))
            .with_panel(ts("Event-time lag", "s",
                           q(f"canary_gate_event_time_lag_seconds{{{R}}}", "{{rollout}}")))
            .with_panel(ts("Consumer lag per partition (processes judging the rollout)", "none",
                           q(f"canary_gate_partition_lag_messages {OF_ROLLOUT}",
                             "{{instance}} partition {{partition}}")))
            .with_panel(ts("Dead letters by reason (processes judging the rollout)", "eps",
                           q("sum by (instance, reason) "
                             f"(rate(canary_gate_dead_letters_total[5m]) {OF_ROLLOUT})",
                             "{{instance}} {{reason}}")))
            .with_panel(ts("Verdicts", "none",
                           q(f"increase(canary_gate_verdicts_total{{{R}}}[10m])", "{{rollout}}")))
            .with_panel(ts("Dropped events by reason", "eps",
                           q(f"sum by (rollout, reason) (rate(canary_gate_dropped_events_total{{{R}}}[5m]))",
                             "{{rollout}} {{reason}}")))
            # Fleet mode (run --rollouts DIR, docs/fleet.md): process-wide, kept to the processes
            # that judge a selected rollout; a one-rollout run has none of these series.
            .with_row(Row("Fleet"))
            .with_panel(ts("Unmatched events by x_exp (processes judging the rollout)", "eps",
                           q("sum by (instance, x_exp) "
                             f"(rate(canary_gate_unmatched_events_total[5m]) {OF_ROLLOUT})",
                             "{{instance}} x_exp={{x_exp}}")))
            .with_panel(ts("Rollouts judged", "none",
                           q(f"canary_gate_fleet_rollouts {OF_ROLLOUT}", "{{instance}}"), width=6))
            .with_panel(ts("Rollout files refused", "none",
                           q(f"canary_gate_fleet_files_refused {OF_ROLLOUT}", "{{instance}}"),
                           width=6, line=1)))


DASHBOARDS = {"overview": overview, "latency": latency, "errors": errors, "quality": quality,
              "skew-cache": skew_cache, "health": health}


def finish(board: model.Dashboard) -> model.Dashboard:
    """Panel ids and annotation placement, which the builders leave unset or set otherwise.

    Grafana keys a panel's state, `viewPanel=` links and annotation filters by
    its id; ids follow the layout, rows included, from 1.  The SDK places every
    annotation query in the controls dropdown ("inControlsMenu"); without a
    placement its on/off toggle shows above the panels, in every Grafana version.
    """
    ids = iter(range(1, 1000))
    for item in board.panels or []:
        item.id_val = next(ids)
        for inner in getattr(item, "panels", None) or []:  # a collapsed row's own panels
            inner.id_val = next(ids)
    for annotation in (board.annotations.list_val if board.annotations else None) or []:
        annotation.placement = None
    return board


def render() -> dict[str, str]:
    """File name -> JSON text of every dashboard."""
    return {f"{name}.json": json.dumps(finish(build().build()), cls=JSONEncoder, indent=2, sort_keys=True)
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
