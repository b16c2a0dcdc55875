"""Bad configuration and operations: the decision SPEC §4 implies, a clear reason, no crash.

Each test drives the pure Engine with generated scenario traffic (decoded by
pipeline.decode.codec.decode_batch) or with conftest events, under the scenario
config (stage 50%, 60 s windows, a 600 s horizon, 300 s sustain) unless it
says otherwise, and checks three things: every window gets exactly one
verdict; the decision is the one SPEC §4 implies; and the reasons name what
is missing (the variant, its count and the threshold), so an operator can
tell a typo in the config from a quiet canary.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Iterable, Sequence
from functools import cache

import pytest
from conftest import BASE_TOML, BASE_TS, make_config, make_event
from msgspec.structs import replace

from pipeline import config as config_mod
from pipeline.config import Config, ConfigError
from pipeline.decode.codec import decode_batch
from pipeline.engine import Engine, Report
from pipeline.gates import stop_active
from pipeline.model import Decision, DecodeError, Event, GateRow, GateStatus, Verdict
from pipeline.scenarios import SCENARIOS, generate

CONTROL, CANARY = "control", "canary-v2"
SEED = 11
MIN_WARM = 50  # thresholds.min_warm_requests (default)
MIN_PROBES = 20  # thresholds.min_probe_events (default)
MINUTE = 60.0

Item = Event | DecodeError


@cache
def traffic(name: str, minutes: int) -> tuple[Item, ...]:
    """A scenario's generated lines, decoded, once per session."""
    return tuple(decode_batch(list(generate(name, SEED, minutes))))


def renamed(items: Iterable[Item], old: str, new: str) -> list[Item]:
    """The items with every event of variant `old` relabelled `new`."""
    return [replace(i, variant=new) if isinstance(i, Event) and i.variant == old else i for i in items]


def without(items: Iterable[Item], variant: str, since: float = BASE_TS) -> list[Item]:
    """The items minus `variant`'s events from event time `since` on."""
    return [i for i in items if not (isinstance(i, Event) and i.variant == variant and i.ts >= since)]


def run(items: Sequence[Item], cfg: Config) -> list[Report]:
    """Feed everything to a fresh engine and close it; checks one verdict per window."""
    eng = Engine(cfg)
    reports = [o for o in eng.feed(items) + eng.close() if isinstance(o, Report)]
    assert_one_verdict_per_window(reports, items)
    return reports


def assert_one_verdict_per_window(reports: list[Report], items: Sequence[Item]) -> None:
    """Every window from the first event's to the last one's has exactly one verdict."""
    times = [i.ts for i in items if isinstance(i, Event)]
    first, last = int(min(times) // MINUTE), int(max(times) // MINUTE)
    assert [r.verdict.window_end for r in reports] == [(w + 1) * MINUTE for w in range(first, last + 1)]


def rows(verdict: Verdict, gate: str) -> list[GateRow]:
    found = [r for r in verdict.gates if r.gate == gate]
    assert found, gate
    return found


def row(verdict: Verdict, gate: str) -> GateRow:
    """The only row of a gate that emits one row."""
    (only,) = rows(verdict, gate)
    return only


def minute(report: Report) -> int:
    """The minute (since the scenario start) at which the report's window ends."""
    return round((report.verdict.window_end - BASE_TS) / MINUTE)


def toml_with(old: str, new: str) -> str:
    """The scenario config with one exact piece of text replaced."""
    assert BASE_TOML.count(old) == 1, old
    return BASE_TOML.replace(old, new)


def assert_insufficient_not_stop(verdict: Verdict) -> None:
    """SPEC §4: no hard stop, and a gate whose stop is active is insufficient_data."""
    assert verdict.decision is Decision.INSUFFICIENT_DATA, verdict.reasons
    assert not any(r.hard_stop for r in verdict.gates), verdict.reasons
    assert any(r.status is GateStatus.INSUFFICIENT_DATA and stop_active(r.gate, verdict.stage)
               for r in verdict.gates)


# --------------------------------------------------------------------------- unknown variants


def with_shadow_x(items: Sequence[Item]) -> list[Item]:
    """The items plus a third variant 'shadow-x', one request a second in us-east.

    Its events would break several gates if they were counted for either
    side: a 5xx class the control never shows, a 99 s tfinal, a foreign
    INDEX_HASH, the control's cache prefix and the control's sticky keys.
    """
    last = max(i.ts for i in items if isinstance(i, Event))
    seconds = (int((last - BASE_TS) // MINUTE) + 1) * int(MINUTE)  # through the last window's end
    shadow = [make_event(ts=BASE_TS + s + 0.5, variant="shadow-x", sticky=f"c-{s % 50}", status=502,
                         failure_phase="body", tfinal=99_000.0, index_hash="0xdead", cache_prefix="v1:",
                         request_id=f"shadow-x-{s}")
              for s in range(seconds)]
    return sorted([*items, *shadow], key=lambda i: i.ts if isinstance(i, Event) else 0.0)


@pytest.mark.parametrize("stage", ["shadow", "1%", "50%", "100%"])
def test_a_misspelt_canary_is_insufficient_data_named_in_the_reason(stage: str) -> None:
    # rollout.canary says canary-v2, the canary reports itself as canary-v3; a shadow-x runs beside
    items = with_shadow_x(renamed(traffic("healthy", 10), CANARY, "canary-v3"))
    reports = run(items, make_config(stage=stage))
    for report in reports:
        v = report.verdict
        assert_insufficient_not_stop(v)
        sv = row(v, "schema_violations")
        assert sv.status is GateStatus.INSUFFICIENT_DATA and stop_active("schema_violations", stage)
        assert "the canary 'canary-v2' sent nothing in the horizon (events by variant: " in sv.reason
        assert "'canary-v3' " in sv.reason and "'shadow-x' " in sv.reason and "'control' " in sv.reason
        assert sv.reason.endswith("; is rollout.canary right?)")
        (p95,) = rows(v, "p95_warm_latency")
        assert p95.status is GateStatus.INSUFFICIENT_DATA
        assert p95.reason == "the canary 'canary-v2' had no user requests in the horizon"
        assert row(v, "delta_s_median").reason == \
            f"too few canary probes with ΔS: 0 from 'canary-v2', {MIN_PROBES} needed"
        assert row(v, "lambda_convergence").reason == "the canary 'canary-v2' sent no probe with a λ state"
        assert "(none from 'canary-v2')" in row(v, "coverage").reason
        # the unknown variants feed no gate: not the canary's, not the control's
        assert all(r.canary_n == 0 for r in v.gates)
        assert row(v, "index_skew").status is GateStatus.PASS
        assert row(v, "cache_namespace").status is GateStatus.PASS
        assert row(v, "new_5xx_class").status is GateStatus.PASS  # 502/body is shadow-x's only
        if stage != "shadow":
            assert row(v, "sticky_flip").status is GateStatus.PASS  # shadow-x reuses control keys
    # ... but they are counted, per window and in the totals, for dashboards
    last = reports[-1]
    assert last.window is not None
    assert last.window.c["events"]["shadow-x"] == 60
    assert last.window.c["user"][("shadow-x", "us-east")] == 60
    assert last.window.c["classes"][("shadow-x", 502, "body")] == 60
    assert last.window.c["events"]["canary-v3"] > 0
    assert CANARY not in last.window.c["events"]
    assert last.totals["events_in"] == len(items)
    assert last.totals["labels_variant"] == 4  # control, canary-v2 (configured), canary-v3, shadow-x


def test_a_third_variant_beside_a_healthy_rollout_changes_no_verdict() -> None:
    plain = traffic("healthy", 10)
    before = [r.verdict.to_record() for r in run(plain, make_config())]
    after = run(with_shadow_x(plain), make_config())
    assert [r.verdict.to_record() for r in after] == before
    assert before[-1]["decision"] == "promote"
    assert after[-1].window is not None and after[-1].window.c["events"]["shadow-x"] == 60


# --------------------------------------------------------------------------- misspelt control


def misspelt_control(stage: str) -> Config:
    """The scenario config with rollout.control 'contrl' (its [variants] table renamed to match)."""
    text = toml_with('control = "control"', 'control = "contrl"')
    text = text.replace("[variants.control]", "[variants.contrl]")
    return config_mod.parse(text).with_stage(stage)


@pytest.mark.parametrize(("stage", "decision"), [("shadow", Decision.HOLD),
                                                 ("1%", Decision.INSUFFICIENT_DATA),
                                                 ("50%", Decision.INSUFFICIENT_DATA)])
def test_a_misspelt_control_is_insufficient_data_where_its_gates_stop(stage: str, decision: Decision) -> None:
    reports = run(traffic("healthy", 10), misspelt_control(stage))
    decisions = {r.verdict.decision for r in reports}
    assert Decision.PROMOTE not in decisions and Decision.STOP not in decisions
    # from minute 2 the canary's own gates have data; only the control is missing
    for report in reports[1:]:
        v = report.verdict
        assert v.decision is decision, v.reasons
        assert row(v, "schema_violations").status is GateStatus.PASS
        assert row(v, "delta_s_median").status is GateStatus.PASS
        n5 = row(v, "new_5xx_class")
        assert n5.status is GateStatus.INSUFFICIENT_DATA and n5.control_n == 0
        assert n5.reason.startswith(
            f"too few requests on the control: 0 from 'contrl', {MIN_WARM} needed (events by variant: ")
        assert "'control' " in n5.reason and n5.reason.endswith("; is rollout.control right?)")
        for r in rows(v, "p95_warm_latency") + rows(v, "error_rate"):
            assert r.status is GateStatus.INSUFFICIENT_DATA and r.region in ("us-east", "eu-west")
            assert r.canary_n >= MIN_WARM and r.control_n == 0
            assert f"on the control: canary 'canary-v2' {r.canary_n}, control 'contrl' 0; " \
                   f"{MIN_WARM} needed each" in r.reason
        chr_ = row(v, "cache_hit_regression")
        assert chr_.status is GateStatus.INSUFFICIENT_DATA
        assert "too few user requests with a cache block on the control: " in chr_.reason
        assert not any(r.hard_stop for r in v.gates)


# --------------------------------------------------------------------------- silent canary


@pytest.mark.parametrize("stage", ["shadow", "1%", "100%"])
def test_a_canary_that_sends_nothing_is_insufficient_data_in_every_window(stage: str) -> None:
    reports = run(without(traffic("healthy", 10), CANARY), make_config(stage=stage))
    assert len(reports) == 10
    for report in reports:
        v = report.verdict
        assert_insufficient_not_stop(v)
        sv = row(v, "schema_violations")
        assert sv.reason.startswith("the canary 'canary-v2' sent nothing in the horizon "
                                    "(events by variant: 'control' ")
        assert "rollout.canary" not in sv.reason  # no other variant: nothing suggests a typo
        assert any("p95_warm_latency: the canary 'canary-v2' had no user requests" in s for s in v.reasons)
        assert any("error_rate: the canary 'canary-v2' had no user requests" in s for s in v.reasons)
        assert f"0 from 'canary-v2', {MIN_PROBES} needed" in row(v, "delta_s_median").reason


# --------------------------------------------------------------------------- a variant vanishes


VANISH_AT = 10  # minute at which one variant stops sending
RUN_MINUTES = 25  # the horizon (10 minutes) holds no trace of it from minute 20 on


@cache
def baseline() -> tuple[Report, ...]:
    return tuple(run(traffic("healthy", RUN_MINUTES), make_config()))


def assert_rows_follow_the_minimum(v: Verdict) -> None:
    """Per-region rows are insufficient exactly when a side is short of min_warm_requests."""
    for r in rows(v, "p95_warm_latency") + rows(v, "error_rate"):
        if r.region is not None:
            short = min(r.canary_n, r.control_n) < MIN_WARM
            assert (r.status is GateStatus.INSUFFICIENT_DATA) is short, r


def test_a_control_that_vanishes_turns_the_verdict_insufficient_once_the_horizon_is_empty() -> None:
    items = without(traffic("healthy", RUN_MINUTES), CONTROL, since=BASE_TS + VANISH_AT * MINUTE)
    reports = run(items, make_config())
    before = baseline()
    assert len(reports) == len(before) == RUN_MINUTES
    for report, base in zip(reports, before, strict=True):
        v = report.verdict
        assert_rows_follow_the_minimum(v)
        assert v.decision is not Decision.STOP, v.reasons
        if minute(report) <= VANISH_AT:
            assert v.to_record() == base.verdict.to_record()  # the horizon lost nothing yet
        elif minute(report) < VANISH_AT + 10:
            # the horizon still holds the control's last minute: its gates have data
            for gate in ("p95_warm_latency", "error_rate", "new_5xx_class"):
                for r in rows(v, gate):
                    assert r.status is not GateStatus.INSUFFICIENT_DATA and r.control_n >= MIN_WARM, r
            assert v.decision in (Decision.PROMOTE, Decision.HOLD), v.reasons
        else:
            assert_insufficient_not_stop(v)
            for r in rows(v, "p95_warm_latency") + rows(v, "error_rate"):
                assert r.status is GateStatus.INSUFFICIENT_DATA and r.control_n == 0
                assert r.reason.startswith("too few ") and " on the control: " in r.reason
                assert f"control 'control' 0; {MIN_WARM} needed each" in r.reason
            n5 = row(v, "new_5xx_class")
            assert n5.status is GateStatus.INSUFFICIENT_DATA
            assert n5.reason.startswith(
                f"too few requests on the control: 0 from 'control', {MIN_WARM} needed")
            assert row(v, "schema_violations").status is GateStatus.PASS  # the canary still sends
    assert reports[VANISH_AT - 1].verdict.decision is Decision.PROMOTE


def test_a_canary_that_vanishes_turns_the_verdict_insufficient() -> None:
    items = without(traffic("healthy", RUN_MINUTES), CANARY, since=BASE_TS + VANISH_AT * MINUTE)
    reports = run(items, make_config())
    before = baseline()
    assert len(reports) == RUN_MINUTES
    # Each topic gets 5 canary probes a minute: from the 7th minute after the canary
    # vanished, the horizon holds 3 minutes of them, 15 per topic < min_probe_events.
    short_of_probes = VANISH_AT + 7
    for report, base in zip(reports, before, strict=True):
        v = report.verdict
        assert_rows_follow_the_minimum(v)
        assert v.decision is not Decision.STOP, v.reasons
        if minute(report) <= VANISH_AT:
            assert v.to_record() == base.verdict.to_record()
        elif minute(report) < short_of_probes:
            assert v.decision in (Decision.PROMOTE, Decision.HOLD), v.reasons
        else:
            assert_insufficient_not_stop(v)
            cov = row(v, "coverage")
            assert cov.status is GateStatus.INSUFFICIENT_DATA
            assert cov.reason.startswith(f"no probe topic has {MIN_PROBES} canary probes with coverage (")
            most = re.search(r"\(most: (\d+) on '\w+'\)$", cov.reason)
            none = cov.reason.endswith("(none from 'canary-v2')")
            assert none or (most is not None and int(most.group(1)) < MIN_PROBES), cov.reason
        ds = row(v, "delta_s_median")
        if ds.status is GateStatus.INSUFFICIENT_DATA:
            assert ds.reason == f"too few canary probes with ΔS: {ds.canary_n} from 'canary-v2', " \
                                f"{MIN_PROBES} needed"
            assert ds.canary_n < MIN_PROBES
        if minute(report) >= VANISH_AT + 10:
            assert_insufficient_not_stop(v)
            sv = row(v, "schema_violations")
            assert sv.status is GateStatus.INSUFFICIENT_DATA
            assert sv.reason.startswith("the canary 'canary-v2' sent nothing in the horizon "
                                        "(events by variant: 'control' ")
            (p95,) = rows(v, "p95_warm_latency")
            assert p95.reason == "the canary 'canary-v2' had no user requests in the horizon"
            assert row(v, "new_5xx_class").status is GateStatus.PASS  # the control alone is fine
            assert "on the canary: canary 'canary-v2' 0, control 'control' " in \
                row(v, "cache_hit_regression").reason
    assert reports[VANISH_AT - 1].verdict.decision is Decision.PROMOTE


# --------------------------------------------------------------------------- stage changes


def split(items: Sequence[Item], at_minute: int) -> tuple[list[Item], list[Item]]:
    """The items before minute `at_minute` of event time, and the rest (delivery order kept)."""
    cut = BASE_TS + at_minute * MINUTE
    head: list[Item] = [i for i in items if isinstance(i, Event) and i.ts < cut]
    return head, [i for i in items if not (isinstance(i, Event) and i.ts < cut)]


def test_a_stage_change_after_a_restart_restarts_the_sustain_clock() -> None:
    head, tail = split(traffic("healthy", 20), 10)
    first = Engine(make_config())  # 50%
    judged = [o for o in first.feed(head) if isinstance(o, Report)]
    assert judged[-1].verdict.decision is Decision.PROMOTE
    state = pickle.dumps(first)

    same: Engine = pickle.loads(state)
    kept = [o for o in same.feed(tail) + same.close() if isinstance(o, Report)]
    assert {r.verdict.decision for r in kept} == {Decision.PROMOTE}

    moved: Engine = pickle.loads(state)
    moved.set_stage("5%")
    after = [o for o in moved.feed(tail) + moved.close() if isinstance(o, Report)]
    assert [r.verdict.window_end for r in after] == [r.verdict.window_end for r in kept]
    assert {r.verdict.stage for r in after} == {"5%"}
    # every verdict is clean, but promotion needs sustain_s (300 s, five windows) again
    assert all(r.status.clean for rep in after for r in rep.verdict.gates)
    assert [r.verdict.decision for r in after] == [Decision.HOLD] * 4 + [Decision.PROMOTE] * (len(after) - 4)


def test_stop_rules_of_a_new_stage_apply_from_the_next_verdict() -> None:
    head, tail = split(traffic("coverage_drop", 12), 8)
    eng = Engine(make_config(stage="1%"))
    judged = [o for o in eng.feed(head) if isinstance(o, Report)]
    last = judged[-1].verdict
    cov = row(last, "coverage")
    assert cov.status is GateStatus.FAIL and not cov.hard_stop  # coverage stops from 5%
    assert last.decision is Decision.HOLD
    resumed: Engine = pickle.loads(pickle.dumps(eng))
    resumed.set_stage("5%")
    after = [o for o in resumed.feed(tail) + resumed.close() if isinstance(o, Report)]
    nxt = after[0].verdict
    assert nxt.window_end == last.window_end + MINUTE
    assert nxt.decision is Decision.STOP
    assert row(nxt, "coverage").hard_stop
    assert "coverage: median coverage < 0.7 on returns " in " | ".join(nxt.reasons)


BAD_CANARIES = ("warm_latency_regression", "new_5xx_class", "coverage_drop", "analyzer_skew",
                "cache_prefix_collision", "lambda_flips", "schema_violations")


@pytest.mark.parametrize("name", BAD_CANARIES)
def test_a_bad_canary_stops_only_from_each_gates_stop_from_stage(name: str) -> None:
    scenario = SCENARIOS[name]
    items = traffic(name, scenario.min_minutes)
    for stage in ("shadow", "1%", "100%"):
        v = run(items, make_config(stage=stage))[-1].verdict
        for gate in scenario.expected_gates:
            assert v.gate_status(gate) is GateStatus.FAIL, (stage, gate, v.reasons)
        stopping = {r.gate for r in v.gates if r.hard_stop}
        expected = {g for g in scenario.expected_gates if stop_active(g, stage)}
        assert stopping == expected, (stage, v.reasons)
        assert v.decision is (Decision.STOP if expected else Decision.HOLD), (stage, v.reasons)


# --------------------------------------------------------------------------- config


def test_a_canary_named_like_the_control_is_rejected_in_one_line_naming_the_key() -> None:
    text = toml_with('canary = "canary-v2"', 'canary = "control"')
    with pytest.raises(ConfigError) as info:
        config_mod.parse(text)
    assert info.value.key == "rollout.canary"
    message = str(info.value)
    assert "\n" not in message
    assert message == "rollout.canary: must differ from rollout.control, both are 'control'"


def test_a_stage_outside_the_ladder_is_rejected_by_set_stage_and_the_engine_keeps_its_stage() -> None:
    eng = Engine(make_config())
    with pytest.raises(ConfigError, match=r"^rollout\.stage: must be one of shadow, 1%, .*; got '7%'$"):
        eng.set_stage("7%")
    assert eng.cfg.stage == "50%"
