"""Unit tests of the pure gate logic, pipeline.gates (docs/gates.md).

Each test builds a horizon by hand (WindowStats fed with events from the
conftest factories), judges it, and checks one rule of one gate: pass, fail,
insufficient data, the exact boundary, and whether a failure is a hard stop
at the stage.  Boundary numbers are chosen to be exact in binary floating
point, or are worked out by hand; expected values are literals or computed
independently of the gate (exact quantiles of sorted lists, literal stage tables).
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from typing import Any

import pytest
from conftest import BASE_TS, make_config, make_event, make_probe

from pipeline.aggregate.stats import LabelCaps, WindowStats
from pipeline.config import Config, VariantSpec
from pipeline.evidence import Evidence
from pipeline.gates import GATES, REGISTRY, STOP_FROM, Context, decide, judge, median, stop_active
from pipeline.model import LADDER, Decision, GateRow, GateStatus, Verdict

CONTROL = "control"
CANARY = "canary-v2"

# The λ states as the decoder stores them (indices into model.LAMBDA_STATES).
CONVERGENT, DIVERGENT, RECURSIVE, CHAOTIC = 0, 1, 2, 3


class Evidenced(Evidence):
    """Evidence whose every test reports one p-value: the gate logic around it, apart from the tests."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def p_value(self, gate: str, region: str | None) -> float:
        return self.p


STRONG, WEAK = Evidenced(0.001), Evidenced(0.5)  # significant at the default alpha 0.01, and not


class Horizon:
    """A hand-built horizon: one WindowStats fed through LabelCaps, judged on demand."""

    def __init__(self) -> None:
        self.h = WindowStats.new()
        self.caps = LabelCaps(64, {"variant": [CONTROL, CANARY]})

    def users(self, n: int, **kw: Any) -> Horizon:
        """n user requests (warm, status 200, control unless `variant` says otherwise)."""
        for _ in range(n):
            self.h.add(make_event(**kw), self.caps)
        return self

    def probes(self, n: int, **kw: Any) -> Horizon:
        """n gold-probe events (canary unless `variant` says otherwise)."""
        for _ in range(n):
            self.h.add(make_probe(**kw), self.caps)
        return self

    def dead(self, reason: str, n: int = 1, variant: str = CANARY) -> Horizon:
        """n dead letters attributed to `variant`."""
        self.h.c["dead"][(variant, reason)] += n
        return self

    def judge(self, cfg: Config | None = None, ctx: Context | None = None,
              evidence: Evidence | None = None) -> tuple[GateRow, ...]:
        """The rows; without `evidence`, the sequential tests are fed this horizon as one window."""
        cfg = cfg or make_config()
        if evidence is None:
            evidence = Evidence()
            evidence.add(self.h.close(), cfg)
        return judge(self.h, cfg, evidence, ctx or Context())


def healthy(n: int = 60, probes: int = 20) -> Horizon:
    """Both variants healthy in us-east with enough traffic and probes for every gate to pass."""
    return Horizon().users(n).users(n, variant=CANARY).probes(probes).probes(probes, variant=CONTROL)


def rows_of(rows: tuple[GateRow, ...], gate: str) -> list[GateRow]:
    assert gate in GATES
    return [r for r in rows if r.gate == gate]


def row_of(rows: tuple[GateRow, ...], gate: str) -> GateRow:
    """The only row of a gate that emits one row."""
    found = rows_of(rows, gate)
    assert len(found) == 1, found
    return found[0]


def by_region(rows: tuple[GateRow, ...], gate: str) -> dict[str | None, GateRow]:
    found = rows_of(rows, gate)
    out = {r.region: r for r in found}
    assert len(out) == len(found), "one row per region"
    return out


def overall(rows: tuple[GateRow, ...], gate: str, stage: str = "50%") -> GateStatus:
    """A gate's overall status as the verdict reports it (its worst row)."""
    verdict = Verdict("chat-rag-v2", stage, BASE_TS, decide(rows, stage, False), rows)
    return verdict.gate_status(gate)


def config_without_variants(extra: str = "", stage: str | None = None) -> Config:
    """The base config with no intended serving config for either variant."""
    return dataclasses.replace(make_config(extra, stage), variants={})


# --------------------------------------------------------------------------- median


def test_median_of_odd_count_is_the_middle_value() -> None:
    assert median(Counter({0.1: 1, 0.9: 1, 0.5: 1})) == 0.5


def test_median_of_even_count_is_the_mean_of_the_two_middle_values() -> None:
    assert median(Counter({1.0: 1, 2.0: 1, 3.0: 1, 4.0: 1})) == 2.5


def test_median_respects_multiplicities() -> None:
    assert median(Counter({0.2: 3, 0.8: 1})) == 0.2  # 0.2 0.2 | 0.2 0.8
    assert median(Counter({0.2: 2, 0.8: 2})) == 0.5  # 0.2 0.2 | 0.8 0.8
    assert median(Counter({0.2: 2, 0.8: 3})) == 0.8  # 0.2 0.2 0.8 0.8 0.8


def test_median_of_a_single_value_is_that_value() -> None:
    assert median(Counter({0.37: 1})) == 0.37


def test_median_of_nothing_raises() -> None:
    with pytest.raises(ValueError, match="nothing"):
        median(Counter())


# --------------------------------------------------------------------------- baseline


def test_healthy_horizon_passes_every_gate() -> None:
    rows = healthy().judge()
    assert {r.gate for r in rows} == set(GATES)
    bad = [(r.gate, r.status, r.reason) for r in rows if r.status is not GateStatus.PASS]
    assert bad == []
    assert not any(r.hard_stop for r in rows)


def test_healthy_horizon_promotes_only_when_sustained() -> None:
    rows = healthy().judge()
    assert decide(rows, "50%", sustained=True) is Decision.PROMOTE
    assert decide(rows, "50%", sustained=False) is Decision.HOLD


# Gate -> first stage at which its failure is a hard stop, as docs/gates.md states it.  Written
# out here, not derived from the code, so that a change to a gate's stop stage fails a test.
FIRST_STOP: dict[str, str | None] = {
    "schema_violations": "shadow",
    "delta_s_median": "shadow",
    "index_skew": "shadow",
    "p95_warm_latency": "1%",
    "new_5xx_class": "1%",
    "coverage": "5%",
    "region_skew": "10%",
    "cache_namespace": "25%",
    "lambda_convergence": "50%",
    "error_rate": None,
    "cache_hit_regression": None,
    "sticky_flip": None,
}

# Gate -> every stage at which its failure can be a hard stop, spelt out stage by stage.
STOPS_AT: dict[str, tuple[str, ...]] = {
    "schema_violations": ("shadow", "1%", "5%", "10%", "25%", "50%", "100%"),
    "delta_s_median": ("shadow", "1%", "5%", "10%", "25%", "50%", "100%"),
    "index_skew": ("shadow", "1%", "5%", "10%", "25%", "50%", "100%"),
    "p95_warm_latency": ("1%", "5%", "10%", "25%", "50%", "100%"),
    "new_5xx_class": ("1%", "5%", "10%", "25%", "50%", "100%"),
    "coverage": ("5%", "10%", "25%", "50%", "100%"),
    "region_skew": ("10%", "25%", "50%", "100%"),
    "cache_namespace": ("25%", "50%", "100%"),
    "lambda_convergence": ("50%", "100%"),
    "error_rate": (),
    "cache_hit_regression": (),
    "sticky_flip": (),
}


def test_stop_from_table_matches_spec() -> None:
    assert {gate.name: gate.stop_from for gate in REGISTRY} == FIRST_STOP
    assert STOP_FROM == FIRST_STOP
    assert list(GATES) == list(FIRST_STOP)  # the verdict's row order


def test_the_literal_tables_agree_with_each_other() -> None:
    for gate, stages in STOPS_AT.items():
        assert (stages[0] if stages else None) == FIRST_STOP[gate], gate


@pytest.mark.parametrize("stage", LADDER)
@pytest.mark.parametrize("gate", GATES)
def test_stop_active_is_cumulative_up_the_ladder(gate: str, stage: str) -> None:
    assert stop_active(gate, stage) is (stage in STOPS_AT[gate])


# --------------------------------------------------------------------------- schema_violations


def test_schema_violations_pass_without_canary_dead_letters() -> None:
    row = row_of(healthy().judge(), "schema_violations")
    assert row.status is GateStatus.PASS
    assert row.region is None
    assert row.observed == 0


@pytest.mark.parametrize("reason", ["schema", "invalid_json", "too_large"])
def test_schema_violations_fail_and_stop_at_shadow_on_a_malformed_canary_message(reason: str) -> None:
    rows = healthy().dead(reason).judge(make_config(stage="shadow"))
    row = row_of(rows, "schema_violations")
    assert row.status is GateStatus.FAIL
    assert row.hard_stop
    assert row.observed == 1
    assert reason in row.reason
    assert decide(rows, "shadow", sustained=True) is Decision.STOP


@pytest.mark.parametrize("reason", ["late", "future"])
def test_schema_violations_ignore_late_and_future_dead_letters(reason: str) -> None:
    row = row_of(healthy().dead(reason, 5).judge(), "schema_violations")
    assert row.status is GateStatus.PASS


def test_schema_violations_ignore_dead_letters_of_the_control() -> None:
    row = row_of(healthy().dead("schema", 3, variant=CONTROL).dead("invalid_json", 2, variant="").judge(),
                 "schema_violations")
    assert row.status is GateStatus.PASS


def test_schema_violations_insufficient_when_the_canary_sent_nothing() -> None:
    rows = Horizon().users(60).judge(make_config(stage="shadow"))
    assert row_of(rows, "schema_violations").status is GateStatus.INSUFFICIENT_DATA
    assert decide(rows, "shadow", sustained=True) is Decision.INSUFFICIENT_DATA


def test_schema_violations_fail_when_the_canary_sent_only_malformed_messages() -> None:
    row = row_of(Horizon().users(60).dead("schema", 2).judge(), "schema_violations")
    assert row.status is GateStatus.FAIL
    assert row.observed == 2


# --------------------------------------------------------------------------- delta_s_median


def test_delta_s_median_exactly_at_max_passes() -> None:
    row = row_of(healthy(probes=0).probes(20, delta_s=0.45).judge(), "delta_s_median")
    assert row.status is GateStatus.PASS
    assert row.observed == 0.45
    assert row.threshold == 0.45


def test_delta_s_median_just_above_max_fails_without_hard_stop() -> None:
    row = row_of(healthy(probes=0).probes(20, delta_s=0.4501).judge(make_config(stage="shadow")),
                 "delta_s_median")
    assert row.status is GateStatus.FAIL
    assert row.observed == 0.4501
    assert not row.hard_stop


def test_delta_s_median_of_even_count_uses_the_mean_of_the_middle_two() -> None:
    h = healthy(probes=0).probes(10, delta_s=0.40).probes(10, delta_s=0.50)
    row = row_of(h.judge(), "delta_s_median")
    assert row.observed == 0.45
    assert row.status is GateStatus.PASS


def test_delta_s_median_at_stop_is_a_hard_stop_even_at_shadow() -> None:
    rows = healthy(probes=0).probes(20, delta_s=0.60).judge(make_config(stage="shadow"))
    row = row_of(rows, "delta_s_median")
    assert row.status is GateStatus.FAIL
    assert row.hard_stop
    assert decide(rows, "shadow", sustained=True) is Decision.STOP


def test_delta_s_median_just_below_stop_fails_without_hard_stop() -> None:
    rows = healthy(probes=0).probes(20, delta_s=0.59).judge(make_config(stage="100%"))
    row = row_of(rows, "delta_s_median")
    assert row.status is GateStatus.FAIL
    assert not row.hard_stop
    assert decide(rows, "100%", sustained=True) is Decision.HOLD


def test_delta_s_median_needs_min_probe_events_canary_probes() -> None:
    enough = row_of(Horizon().users(60).users(60, variant=CANARY).probes(20).judge(), "delta_s_median")
    short = row_of(Horizon().users(60).users(60, variant=CANARY).probes(19).judge(), "delta_s_median")
    assert enough.status is GateStatus.PASS
    assert enough.canary_n == 20
    assert short.status is GateStatus.INSUFFICIENT_DATA
    assert short.canary_n == 19


def test_delta_s_median_does_not_count_control_probes_towards_the_minimum() -> None:
    h = Horizon().users(60).users(60, variant=CANARY).probes(19).probes(100, variant=CONTROL)
    row = row_of(h.judge(), "delta_s_median")
    assert row.status is GateStatus.INSUFFICIENT_DATA


def test_delta_s_median_ignores_user_requests_with_retrieval_scores() -> None:
    # A ΔS on a non-probe request is not a gold-probe measurement.
    h = healthy(probes=0).probes(20, delta_s=0.30).users(100, variant=CANARY, delta_s=0.95)
    row = row_of(h.judge(), "delta_s_median")
    assert row.status is GateStatus.PASS
    assert row.canary_n == 20


def test_delta_s_median_insufficient_blocks_from_shadow() -> None:
    rows = Horizon().users(60).users(60, variant=CANARY).probes(5).judge(make_config(stage="shadow"))
    assert decide(rows, "shadow", sustained=True) is Decision.INSUFFICIENT_DATA


# --------------------------------------------------------------------------- index_skew


def test_index_skew_passes_when_every_event_carries_its_variants_index() -> None:
    row = row_of(healthy().judge(), "index_skew")
    assert row.status is GateStatus.PASS
    assert row.observed is None and row.threshold is None


def test_index_skew_fails_and_stops_at_shadow_when_the_canary_serves_the_control_index() -> None:
    rows = healthy().users(1, variant=CANARY, index_hash="0x9a76").judge(make_config(stage="shadow"))
    row = row_of(rows, "index_skew")
    assert row.status is GateStatus.FAIL
    assert row.hard_stop
    assert "0x9a76" in row.reason


def test_index_skew_checks_the_control_too() -> None:
    row = row_of(healthy().users(1, variant=CONTROL, analyzer="standard").judge(), "index_skew")
    assert row.status is GateStatus.FAIL
    assert "standard" in row.reason


def test_index_skew_checks_metric_not_only_index_hash() -> None:
    row = row_of(healthy().users(1, variant=CANARY, metric="dot").judge(), "index_skew")
    assert row.status is GateStatus.FAIL


def test_index_skew_fails_when_a_retrieval_event_lacks_the_configured_index_hash() -> None:
    row = row_of(healthy().users(1, variant=CANARY, index_hash=None).judge(), "index_skew")
    assert row.status is GateStatus.FAIL


def test_index_skew_does_not_check_fields_that_are_not_configured() -> None:
    cfg = dataclasses.replace(make_config(), variants={CANARY: VariantSpec(metric="cosine")})
    h = healthy().users(5, variant=CANARY, index_hash="0xbeef", analyzer="whitespace")
    h.users(5, variant=CONTROL, metric="dot")  # the control has nothing configured
    assert row_of(h.judge(cfg), "index_skew").status is GateStatus.PASS
    h.users(1, variant=CANARY, metric="dot")
    assert row_of(h.judge(cfg), "index_skew").status is GateStatus.FAIL


def test_index_skew_skipped_when_nothing_is_configured() -> None:
    h = healthy().users(5, variant=CANARY, index_hash="0xbeef")
    row = row_of(h.judge(config_without_variants(stage="shadow")), "index_skew")
    assert row.status is GateStatus.SKIPPED
    assert not row.hard_stop


def test_index_skew_ignores_x_warm_pings() -> None:
    h = healthy().users(5, variant=CANARY, x_warm=True, index_hash="0xdead")
    assert row_of(h.judge(), "index_skew").status is GateStatus.PASS


def test_index_skew_ignores_probe_requests() -> None:
    h = healthy().probes(3, index_hash="0xdead")
    assert row_of(h.judge(), "index_skew").status is GateStatus.PASS


# --------------------------------------------------------------------------- p95_warm_latency


def test_p95_identical_distributions_pass_at_ratio_one() -> None:
    cfg = make_config("[thresholds]\nlatency_ratio_max = 1.0\n")
    h = Horizon()
    for ms in range(1000, 1100):
        h.users(1, tfinal=float(ms)).users(1, variant=CANARY, tfinal=float(ms))
    row = by_region(h.judge(cfg), "p95_warm_latency")["us-east"]
    assert row.status is GateStatus.PASS
    assert row.observed == 1.0
    assert row.threshold == 1.0
    assert (row.canary_n, row.control_n) == (100, 100)


def test_p95_slightly_slower_canary_fails_at_ratio_one() -> None:
    cfg = make_config("[thresholds]\nlatency_ratio_max = 1.0\n")
    h = Horizon().users(100, tfinal=1000.0).users(100, variant=CANARY, tfinal=1050.0)
    row = by_region(h.judge(cfg), "p95_warm_latency")["us-east"]
    assert row.status is GateStatus.FAIL
    assert row.observed is not None and row.observed > 1.0


def test_p95_clearly_slower_canary_fails_and_stops_from_one_percent() -> None:
    h = Horizon().users(100, tfinal=1000.0).users(100, variant=CANARY, tfinal=2000.0)
    at_1 = h.judge(make_config(stage="1%"))
    row = by_region(at_1, "p95_warm_latency")["us-east"]
    assert row.status is GateStatus.FAIL
    assert row.observed == pytest.approx(2.0, rel=0.03)
    assert row.hard_stop
    assert decide(at_1, "1%", sustained=True) is Decision.STOP
    at_shadow = by_region(h.judge(make_config(stage="shadow")), "p95_warm_latency")["us-east"]
    assert at_shadow.status is GateStatus.FAIL
    assert not at_shadow.hard_stop


def test_p95_reason_names_ratio_sample_sizes_and_evidence() -> None:
    h = Horizon().users(100, tfinal=1000.0).users(100, variant=CANARY, tfinal=2000.0)
    row = by_region(h.judge(make_config(stage="1%"), evidence=Evidenced(0.0)), "p95_warm_latency")["us-east"]
    assert row.reason.startswith("canary/control p95 tfinal 2.01 > 1.25 (canary 2019 ms, control 1002 ms; ")
    assert "warm n 100/100); evidence p<1e-12 < alpha 0.01" in row.reason
    weak = by_region(h.judge(make_config(stage="1%"), evidence=WEAK), "p95_warm_latency")["us-east"]
    assert weak.status is GateStatus.WARN and not weak.hard_stop
    assert weak.reason.endswith("not significant yet: p=0.5 >= alpha 0.01")


def test_p95_canary_within_ratio_passes() -> None:
    h = Horizon().users(100, tfinal=1000.0).users(100, variant=CANARY, tfinal=1150.0)
    row = by_region(h.judge(), "p95_warm_latency")["us-east"]
    assert row.status is GateStatus.PASS
    assert row.observed == pytest.approx(1.15, rel=0.03)


def test_p95_ignores_x_warm_pings_probes_and_cold_starts() -> None:
    h = Horizon().users(100, tfinal=1000.0).users(100, variant=CANARY, tfinal=1000.0)
    h.users(500, variant=CANARY, x_warm=True, tfinal=60_000.0)
    h.users(500, variant=CANARY, cold_start=True, tfinal=60_000.0)
    h.probes(500, tfinal=60_000.0)
    row = by_region(h.judge(make_config(stage="100%")), "p95_warm_latency")["us-east"]
    assert row.status is GateStatus.PASS
    assert row.observed == 1.0
    assert row.canary_n == 100


def test_p95_gates_the_configured_latency_field() -> None:
    h = Horizon().users(100).users(100, variant=CANARY, tfinal=9000.0)  # same tffb, slower tfinal
    by_tffb = by_region(h.judge(make_config('[thresholds]\nlatency_field = "tffb"\n')), "p95_warm_latency")
    by_tfinal = by_region(h.judge(make_config()), "p95_warm_latency")
    assert by_tffb["us-east"].status is GateStatus.PASS
    assert by_tfinal["us-east"].status is GateStatus.FAIL


# Warm latencies (ms) of 200 control and 200 canary requests in us-east: the control's are
# 1000, 1005, ..., 1995; a "tail" canary is the control with its 5 slowest requests at 6000 ms
# and more (2.5 %: above the p95, below the p99); a "body" canary is 1.6 x slower on its 150
# fastest requests and like the control on the rest.
LATENCY_CONTROL = [1000.0 + 5 * i for i in range(200)]
LATENCY_CANARIES = {
    "tail": [ms if i < 195 else 6000.0 + i for i, ms in enumerate(LATENCY_CONTROL)],
    "body": [1.6 * ms if i < 150 else ms for i, ms in enumerate(LATENCY_CONTROL)],
}


def exact_quantile(values: list[float], q: float) -> float:
    """Nearest-rank quantile of a list: the value at index ceil(q n) - 1 of the sorted list."""
    ordered = sorted(values)
    return ordered[math.ceil(q * len(ordered)) - 1]


def test_exact_quantile_picks_the_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]  # 1 .. 100
    assert [exact_quantile(values, q) for q in (0.5, 0.95, 0.99)] == [50.0, 95.0, 99.0]
    assert exact_quantile(LATENCY_CANARIES["tail"], 0.99) == 6197.0
    assert exact_quantile(LATENCY_CANARIES["tail"], 0.95) == 1945.0


@pytest.mark.parametrize(("canary", "q", "fails"), [
    ("tail", 0.5, False), ("tail", 0.95, False), ("tail", 0.99, True),
    ("body", 0.5, True), ("body", 0.95, True), ("body", 0.99, True),
])
def test_p95_gate_judges_the_configured_latency_quantile(canary: str, q: float, fails: bool) -> None:
    cfg = make_config(f"[thresholds]\nlatency_quantile = {q}\n", stage="1%")
    h = Horizon()
    for control_ms, canary_ms in zip(LATENCY_CONTROL, LATENCY_CANARIES[canary], strict=True):
        h.users(1, tfinal=control_ms).users(1, variant=CANARY, tfinal=canary_ms)
    row = by_region(h.judge(cfg, evidence=STRONG), "p95_warm_latency")["us-east"]
    expected = exact_quantile(LATENCY_CANARIES[canary], q) / exact_quantile(LATENCY_CONTROL, q)
    assert abs(expected - 1.25) > 0.05  # clear of the threshold, whatever the sketch's 1 % error
    assert (expected > 1.25) is fails
    # each quantile is within the sketch's 1 % relative error, and the ranks differ by at most one
    # neighbouring request (5 ms in 1000), so the ratio is within 3 %
    assert row.observed == pytest.approx(expected, rel=0.03)
    assert row.status is (GateStatus.FAIL if fails else GateStatus.PASS)
    assert row.hard_stop is fails
    assert row.reason.startswith(f"canary/control p{q * 100:g} tfinal ")


def test_p95_min_warm_requests_exactly_is_enough() -> None:
    row = by_region(Horizon().users(50).users(50, variant=CANARY).judge(), "p95_warm_latency")["us-east"]
    assert row.status is GateStatus.PASS
    assert (row.canary_n, row.control_n) == (50, 50)


@pytest.mark.parametrize(("control", "canary"), [(50, 49), (49, 50)])
def test_p95_one_below_min_warm_requests_is_insufficient(control: int, canary: int) -> None:
    rows = Horizon().users(control).users(canary, variant=CANARY, tfinal=9000.0).judge()
    row = by_region(rows, "p95_warm_latency")["us-east"]
    assert row.status is GateStatus.INSUFFICIENT_DATA
    assert not row.hard_stop


def test_p95_cold_requests_and_pings_do_not_count_towards_min_warm_requests() -> None:
    h = Horizon().users(60).users(49, variant=CANARY)
    h.users(10, variant=CANARY, cold_start=True).users(10, variant=CANARY, x_warm=True)
    row = by_region(h.judge(), "p95_warm_latency")["us-east"]
    assert row.status is GateStatus.INSUFFICIENT_DATA
    assert row.canary_n == 49


def test_p95_insufficient_blocks_from_one_percent_but_not_at_shadow() -> None:
    def thin() -> Horizon:  # no region with enough warm canary requests
        return Horizon().users(60).users(10, variant=CANARY).probes(20).probes(20, variant=CONTROL)
    rows_shadow = thin().judge(make_config(stage="shadow"))
    rows_1 = thin().judge(make_config(stage="1%"))
    assert by_region(rows_1, "p95_warm_latency")["us-east"].status is GateStatus.INSUFFICIENT_DATA
    assert decide(rows_1, "1%", sustained=True) is Decision.INSUFFICIENT_DATA
    assert decide(rows_shadow, "shadow", sustained=True) is Decision.HOLD


def test_a_region_short_of_data_does_not_hold_back_the_judged_regions() -> None:
    rows = healthy(n=60).users(60, region="eu-west").users(10, region="eu-west", variant=CANARY).judge(
        make_config(stage="1%"))
    regions = by_region(rows, "p95_warm_latency")
    assert regions["eu-west"].status is GateStatus.INSUFFICIENT_DATA  # still reported
    assert "too few warm requests on the canary" in regions["eu-west"].reason
    assert regions["us-east"].status is GateStatus.PASS
    assert overall(rows, "p95_warm_latency", "1%") is GateStatus.PASS
    assert by_region(rows, "error_rate")["eu-west"].status is GateStatus.INSUFFICIENT_DATA
    assert decide(rows, "1%", sustained=True) is Decision.PROMOTE
    assert decide(rows, "1%", sustained=False) is Decision.HOLD


def test_p95_emits_one_row_per_canary_region_and_none_for_control_only_regions() -> None:
    h = healthy(n=60)  # us-east: both variants, enough traffic
    h.users(60, region="eu-west").users(10, region="eu-west", variant=CANARY)  # canary too thin
    h.users(300, region="ap-south")  # control only
    rows = h.judge()
    regions = by_region(rows, "p95_warm_latency")
    assert set(regions) == {"us-east", "eu-west"}
    assert regions["us-east"].status is GateStatus.PASS
    assert regions["eu-west"].status is GateStatus.INSUFFICIENT_DATA
    assert overall(rows, "p95_warm_latency") is GateStatus.PASS  # the judged region decides


def test_p95_overall_status_is_the_worst_region_row() -> None:
    h = healthy(n=60)
    h.users(60, region="eu-west").users(10, region="eu-west", variant=CANARY)  # insufficient
    h.users(60, region="ap-south").users(60, region="ap-south", variant=CANARY, tfinal=9000.0)  # fail
    rows = h.judge(make_config(stage="1%"))
    regions = by_region(rows, "p95_warm_latency")
    assert [regions[r].status for r in ("us-east", "eu-west", "ap-south")] == [
        GateStatus.PASS, GateStatus.INSUFFICIENT_DATA, GateStatus.FAIL]
    assert overall(rows, "p95_warm_latency", "1%") is GateStatus.FAIL
    assert [r.region for r in rows_of(rows, "p95_warm_latency") if r.hard_stop] == ["ap-south"]


def test_p95_region_with_only_cold_canary_requests_gets_an_insufficient_row() -> None:
    h = healthy(n=60).users(60, region="eu-west").users(60, region="eu-west", variant=CANARY, cold_start=True)
    assert by_region(h.judge(), "p95_warm_latency")["eu-west"].status is GateStatus.INSUFFICIENT_DATA


def test_p95_does_not_pass_when_the_canary_has_no_user_requests() -> None:
    rows = Horizon().users(100).probes(20).judge()
    assert all(r.status is not GateStatus.PASS for r in rows_of(rows, "p95_warm_latency"))


# --------------------------------------------------------------------------- new_5xx_class


def new_5xx_horizon(canary: int, control: int, errors: int, **error_kw: Any) -> Horizon:
    """`canary` canary user requests of which `errors` are 503s, `control` healthy control ones."""
    kw = {"status": 503, "failure_phase": "headers"} | error_kw
    return Horizon().users(control).users(canary - errors, variant=CANARY).users(errors, variant=CANARY, **kw)


def test_new_5xx_class_passes_without_canary_errors() -> None:
    row = row_of(healthy().judge(), "new_5xx_class")
    assert row.status is GateStatus.PASS
    assert row.region is None


def test_new_5xx_class_p_to_the_c_just_below_alpha_fails() -> None:
    # p = 50 / 100 = 0.5; 0.5**10 = 0.0009765625 < 0.001
    rows = new_5xx_horizon(canary=50, control=50, errors=10).judge(make_config(stage="1%"))
    row = row_of(rows, "new_5xx_class")
    assert row.status is GateStatus.FAIL
    assert row.hard_stop
    assert "503" in row.reason


def test_new_5xx_class_p_to_the_c_just_above_alpha_passes() -> None:
    # 0.5**9 = 0.001953125 >= 0.001: within chance
    row = row_of(new_5xx_horizon(canary=50, control=50, errors=9).judge(), "new_5xx_class")
    assert row.status is GateStatus.PASS


def test_new_5xx_class_p_to_the_c_equal_to_alpha_is_not_new() -> None:
    cfg = make_config("[thresholds]\nnew_5xx_alpha = 0.125\n")  # 0.5**3 exactly
    at = row_of(new_5xx_horizon(canary=50, control=50, errors=3).judge(cfg), "new_5xx_class")
    below = row_of(new_5xx_horizon(canary=50, control=50, errors=4).judge(cfg), "new_5xx_class")
    assert at.status is GateStatus.PASS
    assert below.status is GateStatus.FAIL


def test_new_5xx_class_one_stray_504_at_one_percent_does_not_roll_back() -> None:
    # p = 10 / 1000 = 0.01 > alpha
    rows = new_5xx_horizon(canary=10, control=990, errors=1, status=504).judge(make_config(stage="1%"))
    assert row_of(rows, "new_5xx_class").status is GateStatus.PASS
    assert decide(rows, "1%", sustained=True) is not Decision.STOP


def test_new_5xx_class_two_occurrences_at_one_percent_stop() -> None:
    # p**2 = 0.0001 < alpha
    rows = new_5xx_horizon(canary=10, control=990, errors=2, status=504).judge(make_config(stage="1%"))
    assert row_of(rows, "new_5xx_class").hard_stop
    assert decide(rows, "1%", sustained=True) is Decision.STOP


def test_new_5xx_class_is_not_a_hard_stop_at_shadow() -> None:
    row = row_of(new_5xx_horizon(canary=50, control=50, errors=20).judge(make_config(stage="shadow")),
                 "new_5xx_class")
    assert row.status is GateStatus.FAIL
    assert not row.hard_stop


def test_new_5xx_class_respects_min_count() -> None:
    cfg = make_config("[thresholds]\nnew_5xx_min_count = 3\n")
    # p = 10 / 1000: p**2 is far below alpha, but 2 < min_count
    two = row_of(new_5xx_horizon(canary=10, control=990, errors=2).judge(cfg), "new_5xx_class")
    three = row_of(new_5xx_horizon(canary=10, control=990, errors=3).judge(cfg), "new_5xx_class")
    assert two.status is GateStatus.PASS
    assert three.status is GateStatus.FAIL


def test_new_5xx_class_shared_with_the_control_is_not_new() -> None:
    h = new_5xx_horizon(canary=50, control=50, errors=20)
    h.users(1, status=503, failure_phase="headers")
    assert row_of(h.judge(), "new_5xx_class").status is GateStatus.PASS


def test_new_5xx_class_is_status_and_failure_phase() -> None:
    h = new_5xx_horizon(canary=50, control=50, errors=20, failure_phase="body")
    h.users(5, status=503, failure_phase="headers")  # the control shows 503 only at headers
    row = row_of(h.judge(), "new_5xx_class")
    assert row.status is GateStatus.FAIL
    assert "body" in row.reason


def test_new_5xx_class_without_failure_phase_differs_from_one_with_a_phase() -> None:
    h = new_5xx_horizon(canary=50, control=50, errors=20, failure_phase=None)
    h.users(5, status=503, failure_phase="headers")
    assert row_of(h.judge(), "new_5xx_class").status is GateStatus.FAIL


def test_new_5xx_class_pools_regions() -> None:
    # the control shows the class in eu-west only; the canary's us-east 503s are not new
    h = new_5xx_horizon(canary=50, control=50, errors=20)
    h.users(1, region="eu-west", status=503, failure_phase="headers")
    assert row_of(h.judge(), "new_5xx_class").status is GateStatus.PASS


def test_new_5xx_class_ignores_x_warm_pings_and_probes() -> None:
    h = Horizon().users(50).users(50, variant=CANARY)
    h.users(30, variant=CANARY, x_warm=True, status=502)
    h.probes(30, status=500, failure_phase="body")
    assert row_of(h.judge(), "new_5xx_class").status is GateStatus.PASS


def test_new_5xx_class_insufficient_below_min_warm_requests_of_control() -> None:
    short = row_of(new_5xx_horizon(canary=50, control=49, errors=0).judge(), "new_5xx_class")
    enough = row_of(new_5xx_horizon(canary=50, control=50, errors=0).judge(), "new_5xx_class")
    assert short.status is GateStatus.INSUFFICIENT_DATA
    assert short.control_n == 49
    assert enough.status is GateStatus.PASS


def test_new_5xx_class_control_minimum_counts_requests_in_all_regions_cold_included() -> None:
    h = Horizon().users(20).users(20, region="eu-west").users(10, cold_start=True)
    h.users(50, variant=CANARY)
    assert row_of(h.judge(), "new_5xx_class").status is GateStatus.PASS


# --------------------------------------------------------------------------- coverage


def coverage_horizon() -> Horizon:
    """Enough traffic for every other gate; probes added by each test."""
    return Horizon().users(60).users(60, variant=CANARY).probes(20, variant=CONTROL)


def test_coverage_median_exactly_at_min_passes() -> None:
    row = row_of(coverage_horizon().probes(20, coverage=0.70).judge(), "coverage")
    assert row.status is GateStatus.PASS
    assert row.observed == 0.70
    assert row.threshold == 0.70


def test_coverage_median_just_below_min_fails() -> None:
    row = row_of(coverage_horizon().probes(20, coverage=0.6999).judge(), "coverage")
    assert row.status is GateStatus.FAIL
    assert row.observed == 0.6999


def test_coverage_fails_when_any_qualifying_topic_is_low() -> None:
    h = coverage_horizon().probes(20, probe_topic="billing", coverage=0.9)
    h.probes(20, probe_topic="refunds", coverage=0.5)
    row = row_of(h.judge(), "coverage")
    assert row.status is GateStatus.FAIL
    assert row.observed == 0.5
    assert "refunds" in row.reason


def test_coverage_ignores_topics_below_min_probe_events() -> None:
    h = coverage_horizon().probes(20, probe_topic="billing", coverage=0.9)
    h.probes(19, probe_topic="refunds", coverage=0.1)
    row = row_of(h.judge(), "coverage")
    assert row.status is GateStatus.PASS
    assert row.observed == 0.9


def test_coverage_topic_with_exactly_min_probe_events_is_judged() -> None:
    h = coverage_horizon().probes(20, probe_topic="billing", coverage=0.9)
    h.probes(20, probe_topic="refunds", coverage=0.1)
    assert row_of(h.judge(), "coverage").status is GateStatus.FAIL


def test_coverage_insufficient_when_no_topic_qualifies() -> None:
    h = coverage_horizon().probes(19, probe_topic="billing").probes(19, probe_topic="refunds")
    row = row_of(h.judge(), "coverage")
    assert row.status is GateStatus.INSUFFICIENT_DATA


def test_coverage_does_not_count_control_probes() -> None:
    h = coverage_horizon().probes(19).probes(50, variant=CONTROL, coverage=0.1)
    assert row_of(h.judge(), "coverage").status is GateStatus.INSUFFICIENT_DATA


@pytest.mark.parametrize("stage", LADDER)
def test_coverage_failure_is_a_hard_stop_from_five_percent(stage: str) -> None:
    rows = coverage_horizon().probes(20, coverage=0.5).judge(make_config(stage=stage))
    row = row_of(rows, "coverage")
    assert row.status is GateStatus.FAIL
    expected = stage in STOPS_AT["coverage"]
    assert row.hard_stop is expected
    assert (decide(rows, stage, sustained=True) is Decision.STOP) is expected


@pytest.mark.parametrize(("stage", "decision"), [
    ("shadow", Decision.HOLD), ("1%", Decision.HOLD),
    ("5%", Decision.INSUFFICIENT_DATA), ("50%", Decision.INSUFFICIENT_DATA),
])
def test_coverage_insufficient_blocks_only_where_its_stop_is_active(stage: str, decision: Decision) -> None:
    rows = coverage_horizon().probes(10, coverage=0.9).probes(10, probe_topic="refunds").judge(
        make_config(stage=stage))
    assert row_of(rows, "coverage").status is GateStatus.INSUFFICIENT_DATA
    assert decide(rows, stage, sustained=True) is decision


# --------------------------------------------------------------------------- region_skew


def test_region_skew_passes_with_one_index_across_regions() -> None:
    h = healthy().users(60, region="eu-west").users(60, region="eu-west", variant=CANARY)
    assert row_of(h.judge(), "region_skew").status is GateStatus.PASS


def test_region_skew_fails_when_a_region_has_a_stale_analyzer() -> None:
    h = healthy().users(60, region="eu-west").users(60, region="eu-west", variant=CANARY, analyzer="standard")
    row = row_of(h.judge(config_without_variants()), "region_skew")
    assert row.status is GateStatus.FAIL
    assert row.region is None
    assert "eu-west" in row.reason and "us-east" in row.reason


def test_region_skew_fails_on_two_indexes_within_one_region() -> None:
    h = healthy().users(5, variant=CANARY, index_hash="0x9a78")
    assert row_of(h.judge(config_without_variants()), "region_skew").status is GateStatus.FAIL


def test_region_skew_ignores_the_control() -> None:
    h = healthy().users(60, region="eu-west", index_hash="0x0001").users(60, region="eu-west", variant=CANARY)
    assert row_of(h.judge(config_without_variants()), "region_skew").status is GateStatus.PASS


def test_region_skew_ignores_x_warm_pings() -> None:
    h = healthy().users(5, region="eu-west", variant=CANARY, x_warm=True, index_hash="0x0001")
    assert row_of(h.judge(config_without_variants()), "region_skew").status is GateStatus.PASS


def test_region_skew_ignores_probe_requests() -> None:
    h = healthy().probes(3, region="eu-west", index_hash="0x0001")
    assert row_of(h.judge(config_without_variants()), "region_skew").status is GateStatus.PASS


@pytest.mark.parametrize("stage", LADDER)
def test_region_skew_failure_is_a_hard_stop_from_ten_percent(stage: str) -> None:
    h = healthy().users(60, region="eu-west").users(60, region="eu-west", variant=CANARY, metric="dot")
    row = row_of(h.judge(config_without_variants(stage=stage)), "region_skew")
    assert row.status is GateStatus.FAIL
    assert row.hard_stop is (stage in STOPS_AT["region_skew"])


# --------------------------------------------------------------------------- cache_namespace


def test_cache_namespace_passes_with_separate_prefixes() -> None:
    row = row_of(healthy().judge(), "cache_namespace")
    assert row.status is GateStatus.PASS


def test_cache_namespace_fails_when_both_variants_use_one_prefix() -> None:
    h = healthy().users(1, cache_prefix="shared:").users(1, variant=CANARY, cache_prefix="shared:")
    row = row_of(h.judge(), "cache_namespace")
    assert row.status is GateStatus.FAIL
    assert "shared:" in row.reason


def test_cache_namespace_shared_prefix_fails_even_without_configured_prefixes() -> None:
    h = healthy().users(1, cache_prefix="shared:").users(1, variant=CANARY, cache_prefix="shared:")
    assert row_of(h.judge(config_without_variants()), "cache_namespace").status is GateStatus.FAIL


def test_cache_namespace_fails_when_the_canary_uses_the_controls_configured_prefix() -> None:
    h = Horizon().users(60, cache_prefix="v0:").users(60, variant=CANARY, cache_prefix="v1:")
    row = row_of(h.judge(), "cache_namespace")
    assert row.status is GateStatus.FAIL
    assert "v1:" in row.reason


def test_cache_namespace_fails_when_the_control_uses_the_canarys_configured_prefix() -> None:
    h = Horizon().users(60, cache_prefix="v2-cnr:").users(60, variant=CANARY, cache_prefix="v3:")
    row = row_of(h.judge(), "cache_namespace")
    assert row.status is GateStatus.FAIL
    assert "v2-cnr:" in row.reason


def test_cache_namespace_other_unshared_prefixes_pass() -> None:
    h = healthy().users(5, cache_prefix="v1b:").users(5, variant=CANARY, cache_prefix="v2b:")
    assert row_of(h.judge(), "cache_namespace").status is GateStatus.PASS


def test_cache_namespace_ignores_x_warm_pings() -> None:
    h = healthy().users(3, variant=CANARY, x_warm=True, cache_prefix="v1:")
    assert row_of(h.judge(), "cache_namespace").status is GateStatus.PASS


def test_cache_namespace_ignores_probe_requests() -> None:
    h = healthy().probes(3, cache_prefix="v1:")
    assert row_of(h.judge(), "cache_namespace").status is GateStatus.PASS


@pytest.mark.parametrize("stage", LADDER)
def test_cache_namespace_failure_is_a_hard_stop_from_twenty_five_percent(stage: str) -> None:
    h = healthy().users(1, cache_prefix="shared:").users(1, variant=CANARY, cache_prefix="shared:")
    row = row_of(h.judge(make_config(stage=stage)), "cache_namespace")
    assert row.status is GateStatus.FAIL
    assert row.hard_stop is (stage in STOPS_AT["cache_namespace"])


# --------------------------------------------------------------------------- lambda_convergence


def lambda_horizon() -> Horizon:
    """Enough user traffic, and ΔS / coverage probes without a λ state; λ probes are added by each test."""
    return Horizon().users(60).users(60, variant=CANARY).probes(20, lambda_state=-1)


def add_paraphrase_states(h: Horizon, question: str, paraphrase: int, states: list[int],
                          variant: str = CANARY) -> None:
    """One probe per seed of a (question, paraphrase), with the given λ state per seed."""
    for seed, state in enumerate(states):
        h.probes(1, variant=variant, probe_question=question, probe_paraphrase=paraphrase,
                 probe_seed=seed, lambda_state=state)


def stable_probes(h: Horizon, questions: tuple[str, ...] = ("q1", "q2"), variant: str = CANARY) -> Horizon:
    """Three paraphrases × two seeds per question, all convergent."""
    for q in questions:
        for p in range(3):
            add_paraphrase_states(h, q, p, [CONVERGENT, CONVERGENT], variant)
    return h


def test_lambda_convergence_passes_when_every_probe_is_convergent_and_stable() -> None:
    h = stable_probes(stable_probes(lambda_horizon()), variant=CONTROL)
    row = row_of(h.judge(), "lambda_convergence")
    assert row.status is GateStatus.PASS
    assert row.observed == 0


def test_lambda_convergence_fails_on_a_stable_non_convergent_state_without_stop() -> None:
    h = stable_probes(lambda_horizon())
    for p in range(3):
        add_paraphrase_states(h, "q3", p, [RECURSIVE, RECURSIVE])
        add_paraphrase_states(h, "q3", p, [RECURSIVE, RECURSIVE], variant=CONTROL)
    row = row_of(h.judge(make_config(stage="100%")), "lambda_convergence")
    assert row.status is GateStatus.FAIL
    assert not row.hard_stop
    assert "<>" in row.reason


def test_lambda_flip_on_one_paraphrase_fails_without_hard_stop() -> None:
    h = stable_probes(lambda_horizon())
    add_paraphrase_states(h, "q3", 0, [CONVERGENT, DIVERGENT])  # seeds disagree
    rows = h.judge(make_config(stage="50%"))
    row = row_of(rows, "lambda_convergence")
    assert row.status is GateStatus.FAIL
    assert row.observed == 1
    assert not row.hard_stop
    assert decide(rows, "50%", sustained=True) is Decision.HOLD


def test_lambda_flip_on_two_paraphrases_of_one_question_is_a_hard_stop_at_fifty_percent() -> None:
    h = stable_probes(lambda_horizon())
    add_paraphrase_states(h, "q3", 0, [CONVERGENT, DIVERGENT])
    add_paraphrase_states(h, "q3", 1, [CONVERGENT, CHAOTIC])
    rows = h.judge(make_config(stage="50%"))
    row = row_of(rows, "lambda_convergence")
    assert row.status is GateStatus.FAIL
    assert row.observed == 2
    assert row.hard_stop
    assert decide(rows, "50%", sustained=True) is Decision.STOP


def test_lambda_flip_stop_is_not_active_below_fifty_percent() -> None:
    h = stable_probes(lambda_horizon())
    add_paraphrase_states(h, "q3", 0, [CONVERGENT, DIVERGENT])
    add_paraphrase_states(h, "q3", 1, [CONVERGENT, CHAOTIC])
    row = row_of(h.judge(make_config(stage="25%")), "lambda_convergence")
    assert row.status is GateStatus.FAIL
    assert not row.hard_stop


def test_lambda_flips_on_different_questions_are_not_added_up() -> None:
    h = stable_probes(lambda_horizon())
    add_paraphrase_states(h, "q3", 0, [CONVERGENT, DIVERGENT])
    add_paraphrase_states(h, "q4", 0, [CONVERGENT, DIVERGENT])
    row = row_of(h.judge(make_config(stage="100%")), "lambda_convergence")
    assert row.status is GateStatus.FAIL
    assert row.observed == 1
    assert not row.hard_stop


def test_lambda_state_differing_from_the_controls_for_the_same_pair_is_a_flip() -> None:
    h = stable_probes(lambda_horizon())
    for p in range(2):
        add_paraphrase_states(h, "q1", p, [DIVERGENT, DIVERGENT], variant=CONTROL)
    row = row_of(h.judge(make_config(stage="50%")), "lambda_convergence")
    assert row.status is GateStatus.FAIL
    assert row.observed == 2
    assert row.hard_stop


def test_lambda_flip_stop_threshold_is_configurable() -> None:
    h = stable_probes(lambda_horizon())
    add_paraphrase_states(h, "q3", 0, [CONVERGENT, DIVERGENT])
    add_paraphrase_states(h, "q3", 1, [CONVERGENT, CHAOTIC])
    row = row_of(h.judge(make_config("[thresholds]\nlambda_flip_stop = 3\n", stage="100%")),
                 "lambda_convergence")
    assert row.status is GateStatus.FAIL
    assert not row.hard_stop


def test_lambda_convergence_insufficient_without_canary_probes() -> None:
    h = stable_probes(lambda_horizon(), variant=CONTROL)
    rows = h.judge(make_config(stage="50%"))
    assert row_of(rows, "lambda_convergence").status is GateStatus.INSUFFICIENT_DATA
    assert decide(rows, "50%", sustained=True) is Decision.INSUFFICIENT_DATA


def test_lambda_convergence_insufficient_does_not_block_below_fifty_percent() -> None:
    h = lambda_horizon()  # the ΔS and coverage gates get their probes, without λ states
    rows = h.judge(make_config(stage="25%"))
    assert row_of(rows, "lambda_convergence").status is GateStatus.INSUFFICIENT_DATA
    assert decide(rows, "25%", sustained=True) is Decision.HOLD


# --------------------------------------------------------------------------- error_rate


def error_horizon(canary: int, canary_errors: int, control: int, control_errors: int,
                  region: str = "us-east") -> Horizon:
    h = Horizon()
    h.users(control - control_errors, region=region)
    h.users(control_errors, region=region, status=500)
    h.users(canary - canary_errors, region=region, variant=CANARY)
    h.users(canary_errors, region=region, variant=CANARY, status=500)
    return h


EXACT_ERROR_CFG = "[thresholds]\nerror_ratio_max = 2.0\nerror_rate_tolerance = 0.0\n"


def test_error_rate_exactly_at_allowed_passes() -> None:
    # control 16/128 = 0.125; allowed 2 × 0.125 + 0 = 0.25 = 32/128
    rows = error_horizon(128, 32, 128, 16).judge(make_config(EXACT_ERROR_CFG))
    row = by_region(rows, "error_rate")["us-east"]
    assert row.status is GateStatus.PASS
    assert row.observed == 0.25
    assert row.threshold == 0.25


def test_error_rate_just_above_allowed_fails_without_hard_stop() -> None:
    h = error_horizon(128, 33, 128, 16).probes(20)  # probes so that only error_rate is not clean
    rows = h.judge(make_config(EXACT_ERROR_CFG, stage="100%"), evidence=STRONG)
    row = by_region(rows, "error_rate")["us-east"]
    assert row.status is GateStatus.FAIL
    assert row.p_value == 0.001
    assert not row.hard_stop
    assert decide(rows, "100%", sustained=True) is Decision.HOLD


def test_error_rate_above_allowed_without_evidence_is_a_warning_that_does_not_block() -> None:
    h = error_horizon(128, 33, 128, 16).probes(20).probes(20, variant=CONTROL)
    rows = h.judge(make_config(EXACT_ERROR_CFG, stage="100%"), evidence=WEAK)
    row = by_region(rows, "error_rate")["us-east"]
    assert row.status is GateStatus.WARN
    assert "not significant yet: p=0.5 >= alpha 0.01" in row.reason
    assert decide(rows, "100%", sustained=True) is Decision.PROMOTE


def test_error_rate_evidence_alone_does_not_fail_within_the_allowed_rate() -> None:
    row = by_region(error_horizon(128, 32, 128, 16).judge(make_config(EXACT_ERROR_CFG), evidence=STRONG),
                    "error_rate")["us-east"]
    assert row.status is GateStatus.PASS
    assert row.reason.startswith("canary error rate 0.2500 <= allowed 0.2500")


def test_error_rate_default_tolerance_allows_two_per_mille_over_a_clean_control() -> None:
    # control 0 errors: allowed = 1.2 × 0 + 0.002; canary 1/500 = 0.002
    at = by_region(error_horizon(500, 1, 100, 0).judge(evidence=STRONG), "error_rate")["us-east"]
    over = by_region(error_horizon(500, 2, 100, 0).judge(evidence=STRONG), "error_rate")["us-east"]
    assert at.status is GateStatus.PASS
    assert at.threshold == 1.2 * 0.0 + 0.002
    assert over.status is GateStatus.FAIL


def test_error_rate_default_ratio_allows_its_exact_share() -> None:
    # control 10/100; allowed 1.2 x 0.1 + 0.002 = 0.122, so 122 errors in 1000 fit and 123 do not
    at = by_region(error_horizon(1000, 122, 100, 10).judge(evidence=STRONG), "error_rate")["us-east"]
    over = by_region(error_horizon(1000, 123, 100, 10).judge(evidence=STRONG), "error_rate")["us-east"]
    assert at.status is GateStatus.PASS
    assert at.threshold == pytest.approx(0.122, abs=1e-12)
    assert over.status is GateStatus.FAIL


@pytest.mark.parametrize("stage", LADDER)
def test_error_rate_never_hard_stops(stage: str) -> None:
    rows = error_horizon(100, 90, 100, 0).judge(make_config(stage=stage))
    row = by_region(rows, "error_rate")["us-east"]
    assert row.status is GateStatus.FAIL
    assert not row.hard_stop


def test_error_rate_min_requests_exactly_is_enough_and_one_less_is_insufficient() -> None:
    assert by_region(error_horizon(50, 0, 50, 0).judge(), "error_rate")["us-east"].status is GateStatus.PASS
    for canary, control in ((49, 50), (50, 49)):
        row = by_region(error_horizon(canary, 0, control, 0).judge(), "error_rate")["us-east"]
        assert row.status is GateStatus.INSUFFICIENT_DATA, (canary, control)


def test_error_rate_counts_cold_requests_but_not_pings_or_probes() -> None:
    h = Horizon().users(50).users(49, variant=CANARY).users(1, variant=CANARY, cold_start=True)
    row = by_region(h.judge(), "error_rate")["us-east"]
    assert row.status is GateStatus.PASS
    assert row.canary_n == 50
    h = Horizon().users(50).users(49, variant=CANARY)
    h.users(10, variant=CANARY, x_warm=True).probes(10)
    assert by_region(h.judge(), "error_rate")["us-east"].status is GateStatus.INSUFFICIENT_DATA


def test_error_rate_ignores_failing_x_warm_pings_and_probes() -> None:
    h = error_horizon(100, 0, 100, 0)
    h.users(100, variant=CANARY, x_warm=True, status=503)
    h.probes(100, status=500)
    row = by_region(h.judge(), "error_rate")["us-east"]
    assert row.status is GateStatus.PASS
    assert row.observed == 0


def test_error_rate_rows_per_canary_region_and_worst_is_overall() -> None:
    h = error_horizon(100, 0, 100, 0)
    h.users(100, region="eu-west").users(100, region="eu-west", variant=CANARY, status=500)
    h.users(10, region="ap-south").users(10, region="ap-south", variant=CANARY)
    h.users(500, region="sa-east")  # control only: not judged
    rows = h.judge()
    regions = by_region(rows, "error_rate")
    assert set(regions) == {"us-east", "eu-west", "ap-south"}
    assert regions["us-east"].status is GateStatus.PASS
    assert regions["eu-west"].status is GateStatus.FAIL
    assert regions["ap-south"].status is GateStatus.INSUFFICIENT_DATA
    assert overall(rows, "error_rate") is GateStatus.FAIL


def test_error_rate_insufficient_never_makes_the_decision_insufficient() -> None:
    # error_rate's only region lacks control requests; its stop is never active
    h = Horizon().users(60, variant=CANARY).users(10).probes(20).probes(20, variant=CONTROL)
    rows = h.judge(make_config(stage="100%"))
    assert by_region(rows, "error_rate")["us-east"].status is GateStatus.INSUFFICIENT_DATA
    rows_wo_latency = tuple(r for r in rows if r.gate not in ("p95_warm_latency", "new_5xx_class"))
    assert decide(rows_wo_latency, "100%", sustained=True) is Decision.HOLD


# --------------------------------------------------------------------------- cache_hit_regression


def cache_horizon(canary_hits: int, canary_misses: int, control_hits: int, control_misses: int) -> Horizon:
    h = Horizon().users(control_hits).users(control_misses, cache_hit=False)
    h.users(canary_hits, variant=CANARY).users(canary_misses, variant=CANARY, cache_hit=False)
    return h


def test_cache_hit_drop_exactly_at_max_passes() -> None:
    # control 100/100 = 1.0; floor 1.0 - 0.05 = 0.95 = 95/100
    row = row_of(cache_horizon(95, 5, 100, 0).judge(), "cache_hit_regression")
    assert row.status is GateStatus.PASS
    assert row.observed == 0.95
    assert row.threshold == 1.0 - 0.05


def test_cache_hit_drop_exactly_at_max_passes_with_exact_binary_numbers() -> None:
    cfg = make_config("[thresholds]\ncache_hit_drop_max = 0.25\n")
    # 0.5 vs 0.75
    at = row_of(cache_horizon(64, 64, 96, 32).judge(cfg, evidence=STRONG), "cache_hit_regression")
    over = row_of(cache_horizon(63, 65, 96, 32).judge(cfg, evidence=STRONG), "cache_hit_regression")
    assert at.status is GateStatus.PASS
    assert over.status is GateStatus.FAIL


def test_cache_hit_drop_beyond_max_fails_on_evidence_and_warns_without() -> None:
    assert row_of(cache_horizon(94, 6, 100, 0).judge(evidence=STRONG), "cache_hit_regression").status \
        is GateStatus.FAIL
    weak = row_of(cache_horizon(94, 6, 100, 0).judge(), "cache_hit_regression")  # 6 misses: not enough
    assert weak.status is GateStatus.WARN
    assert weak.p_value is not None and weak.p_value >= 0.01


def test_cache_hit_canary_better_than_control_passes() -> None:
    assert row_of(cache_horizon(100, 0, 50, 50).judge(), "cache_hit_regression").status is GateStatus.PASS


@pytest.mark.parametrize("stage", LADDER)
def test_cache_hit_regression_never_hard_stops(stage: str) -> None:
    row = row_of(cache_horizon(0, 100, 100, 0).judge(make_config(stage=stage)), "cache_hit_regression")
    assert row.status is GateStatus.FAIL
    assert not row.hard_stop


@pytest.mark.parametrize("variant", [CONTROL, CANARY])
def test_cache_hit_regression_insufficient_when_a_variant_has_no_cache_block(variant: str) -> None:
    h = Horizon().users(60, variant=variant, cache_prefix=None, cache_hit=None)
    h.users(60, variant=CANARY if variant == CONTROL else CONTROL)
    row = row_of(h.judge(), "cache_hit_regression")
    assert row.status is GateStatus.INSUFFICIENT_DATA


def test_cache_hit_regression_ignores_pings_and_probes() -> None:
    h = cache_horizon(100, 0, 100, 0)
    h.users(100, variant=CANARY, x_warm=True, cache_hit=False)
    h.probes(100, cache_hit=False)
    row = row_of(h.judge(), "cache_hit_regression")
    assert row.status is GateStatus.PASS
    assert row.observed == 1.0
    assert row.canary_n == 100


def test_cache_hit_regression_pools_regions() -> None:
    h = cache_horizon(50, 0, 100, 0)
    h.users(50, region="eu-west", variant=CANARY, cache_hit=False)  # canary 50/100 over all regions
    row = row_of(h.judge(), "cache_hit_regression")
    assert row.region is None
    assert row.observed == 0.5
    assert row.status is GateStatus.FAIL


# --------------------------------------------------------------------------- sticky_flip


def test_sticky_flip_passes_when_no_key_is_on_both_variants() -> None:
    row = row_of(healthy().judge(ctx=Context()), "sticky_flip")
    assert row.status is GateStatus.PASS


def test_sticky_flip_warns_without_blocking_promotion() -> None:
    ctx = Context(sticky_both=("h34",), sticky_both_count=1)
    rows = healthy().judge(make_config(stage="100%"), ctx)
    row = row_of(rows, "sticky_flip")
    assert row.status is GateStatus.WARN
    assert not row.hard_stop
    assert "h34" in row.reason
    assert decide(rows, "100%", sustained=True) is Decision.PROMOTE


def test_sticky_flip_skipped_at_shadow() -> None:
    ctx = Context(sticky_both=("h34",), sticky_both_count=7)
    row = row_of(healthy().judge(make_config(stage="shadow"), ctx), "sticky_flip")
    assert row.status is GateStatus.SKIPPED
    assert not row.hard_stop


# --------------------------------------------------------------------------- decision


def gate_row(gate: str, status: GateStatus, hard_stop: bool = False, region: str | None = None) -> GateRow:
    return GateRow(gate=gate, status=status, region=region, observed=None, threshold=None,
                   hard_stop=hard_stop, canary_n=0, control_n=0, reason="test")


def clean_rows() -> list[GateRow]:
    return [gate_row(g, GateStatus.PASS) for g in GATES]


def replaced(rows: list[GateRow], gate: str, status: GateStatus,
             hard_stop: bool = False) -> tuple[GateRow, ...]:
    return tuple(gate_row(gate, status, hard_stop) if r.gate == gate else r for r in rows)


@pytest.mark.parametrize("stage", LADDER)
def test_decide_stop_beats_insufficient_data(stage: str) -> None:
    rows = replaced(clean_rows(), "schema_violations", GateStatus.INSUFFICIENT_DATA)
    rows = replaced(list(rows), "error_rate", GateStatus.FAIL, hard_stop=True)
    assert decide(rows, stage, sustained=True) is Decision.STOP


@pytest.mark.parametrize("stage", LADDER)
def test_decide_insufficient_data_beats_promote_and_hold(stage: str) -> None:
    rows = replaced(clean_rows(), "delta_s_median", GateStatus.INSUFFICIENT_DATA)
    assert decide(rows, stage, sustained=True) is Decision.INSUFFICIENT_DATA
    rows = replaced(list(rows), "error_rate", GateStatus.FAIL)
    assert decide(rows, stage, sustained=False) is Decision.INSUFFICIENT_DATA


@pytest.mark.parametrize("gate", GATES)
@pytest.mark.parametrize("stage", LADDER)
def test_decide_insufficient_data_only_where_the_gates_stop_is_active(gate: str, stage: str) -> None:
    rows = replaced(clean_rows(), gate, GateStatus.INSUFFICIENT_DATA)
    expected = Decision.INSUFFICIENT_DATA if stage in STOPS_AT[gate] else Decision.HOLD
    assert decide(rows, stage, sustained=True) is expected


def test_decide_coverage_insufficient_at_one_percent_holds() -> None:
    rows = replaced(clean_rows(), "coverage", GateStatus.INSUFFICIENT_DATA)
    assert decide(rows, "1%", sustained=True) is Decision.HOLD
    assert decide(rows, "5%", sustained=True) is Decision.INSUFFICIENT_DATA


def test_decide_promotes_with_warn_and_skipped_when_sustained() -> None:
    rows = replaced(clean_rows(), "sticky_flip", GateStatus.WARN)
    rows = replaced(list(rows), "index_skew", GateStatus.SKIPPED)
    assert decide(rows, "10%", sustained=True) is Decision.PROMOTE
    assert decide(rows, "10%", sustained=False) is Decision.HOLD


def test_decide_holds_on_a_failure_without_hard_stop() -> None:
    rows = replaced(clean_rows(), "cache_hit_regression", GateStatus.FAIL)
    assert decide(rows, "50%", sustained=True) is Decision.HOLD


def test_decide_stops_on_any_hard_stop_row() -> None:
    rows = (*clean_rows(), gate_row("p95_warm_latency", GateStatus.FAIL, hard_stop=True, region="eu-west"))
    assert decide(rows, "1%", sustained=True) is Decision.STOP


def test_decide_a_failing_row_without_hard_stop_is_not_a_stop_even_if_its_gate_could_stop() -> None:
    rows = replaced(clean_rows(), "delta_s_median", GateStatus.FAIL, hard_stop=False)
    assert decide(rows, "100%", sustained=True) is Decision.HOLD


def test_verdict_gate_status_ranks_fail_over_insufficient_over_warn_over_skipped_over_pass() -> None:
    order = [GateStatus.PASS, GateStatus.SKIPPED, GateStatus.WARN, GateStatus.INSUFFICIENT_DATA,
             GateStatus.FAIL]
    for i, worst in enumerate(order):
        rows = tuple(gate_row("coverage", s) for s in order[: i + 1])
        verdict = Verdict("chat-rag-v2", "50%", BASE_TS, Decision.HOLD, rows)
        assert verdict.gate_status("coverage") is worst


def test_verdict_gate_status_of_a_per_region_gate_is_its_worst_judged_region() -> None:
    def status(*statuses: GateStatus) -> GateStatus:
        rows = tuple(gate_row("error_rate", s, region=f"r{j}") for j, s in enumerate(statuses))
        return Verdict("chat-rag-v2", "50%", BASE_TS, Decision.HOLD, rows).gate_status("error_rate")
    assert status(GateStatus.PASS, GateStatus.INSUFFICIENT_DATA) is GateStatus.PASS
    assert status(GateStatus.WARN, GateStatus.INSUFFICIENT_DATA, GateStatus.PASS) is GateStatus.WARN
    assert status(GateStatus.FAIL, GateStatus.INSUFFICIENT_DATA) is GateStatus.FAIL
    assert status(GateStatus.INSUFFICIENT_DATA, GateStatus.INSUFFICIENT_DATA) is GateStatus.INSUFFICIENT_DATA
