"""A stage's judgement across windows (pipeline.judgement, pipeline.evidence): evidence, latch, stage reset.

Streams are built minute by minute with seeded lognormal latencies; the
engine judges them as the stream and the replay do.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from conftest import BASE_TS, make_config, make_event, make_probe

from pipeline.engine import Engine, Report
from pipeline.evidence import Evidence, cache_samples, error_samples, latency_samples
from pipeline.judgement import Judgement
from pipeline.model import Decision, Event, GateStatus, Verdict
from pipeline.replay.whatif import rejudge
from pipeline.sequential import SequentialTest

CANARY = "canary-v2"


def minute(m: int, slow: float = 1.0, errors: float = 0.0, n: int = 120, seed: int = 0) -> list[Event]:
    """One minute of us-east traffic, both variants alike except the canary's warm tfinal x `slow`
    and its error share `errors`; probes so that every other gate passes."""
    rng = np.random.default_rng(seed * 1000 + m)
    out: list[Event] = []
    for variant, factor, share in (("control", 1.0, 0.0), (CANARY, slow, errors)):
        tfinal = rng.lognormal(np.log(1300), 0.3, n) * factor
        failing = rng.random(n) < share
        for i in range(n):
            out.append(make_event(ts=BASE_TS + m * 60 + i * 60 / n, variant=variant, tfinal=float(tfinal[i]),
                                  status=503 if failing[i] else 200,
                                  failure_phase="headers" if failing[i] else None))
        for i in range(5):
            out.append(make_probe(ts=BASE_TS + m * 60 + i, variant=variant, probe_question=f"q{i}"))
    out.sort(key=lambda e: e.ts)
    return out


def verdicts(engine: Engine, minutes: list[list[Event]], close: bool = True) -> list[Verdict]:
    out = []
    for events in minutes:
        out += engine.feed(events)
    if close:
        out += engine.close()
    return [r.verdict for r in out if isinstance(r, Report)]


def latency_row(verdict: Verdict) -> tuple[GateStatus, float | None]:
    (row,) = [r for r in verdict.gates if r.gate == "p95_warm_latency"]
    return row.status, row.p_value


def regression_then_recovery() -> list[list[Event]]:
    """Canary 2x slower in minutes 2-4, healthy before and after."""
    return [minute(m, slow=2.0 if 2 <= m <= 4 else 1.0) for m in range(24)]


def test_a_stop_is_latched_for_the_rest_of_the_stage() -> None:
    vs = verdicts(Engine(make_config(stage="1%")), regression_then_recovery())
    decisions = [v.decision for v in vs]
    first = decisions.index(Decision.STOP)
    assert first <= 3  # the window ending at minute 3 holds the first slow minute
    assert set(decisions[first:]) == {Decision.STOP}
    # the numbers recovered: later rows pass, the latch alone keeps the stop
    late = vs[-1]
    assert not any(r.hard_stop for r in late.gates)
    assert latency_row(late)[0] is GateStatus.PASS
    assert late.latch is not None
    stop_id = vs[first].id
    assert late.reasons[0].startswith("stop latched at stage 1% since the window ending")
    assert stop_id in late.reasons[0]
    assert "p95_warm_latency us-east: canary/control p95 tfinal" in late.reasons[0]
    assert vs[first].latch is None  # the first stop explains itself


def test_a_stage_change_ends_the_latch_and_starts_the_evidence_afresh() -> None:
    engine = Engine(make_config(stage="1%"))
    stream = regression_then_recovery()
    before = verdicts(engine, stream[:14], close=False)
    assert before[-1].decision is Decision.STOP and before[-1].latch
    assert latency_row(before[-1])[1] < 1e-6  # type: ignore[operator]
    engine.set_stage("5%")
    after = verdicts(engine, stream[14:])
    assert after[0].stage == "5%"
    assert after[0].latch is None and after[0].decision is not Decision.STOP
    assert latency_row(after[0])[1] > 0.01  # type: ignore[operator]  # one healthy look: no evidence
    assert after[-1].decision is Decision.PROMOTE  # sustain 300 s at the new stage


def test_a_resumed_run_with_another_stage_starts_afresh_and_with_the_same_stage_keeps_the_latch() -> None:
    engine = Engine(make_config(stage="1%"))
    stream = regression_then_recovery()
    verdicts(engine, stream[:12], close=False)
    saved = pickle.dumps(engine)
    same: Engine = pickle.loads(saved)
    same.reconfigure(make_config(stage="1%"))
    assert {v.decision for v in verdicts(same, stream[12:])} == {Decision.STOP}
    other: Engine = pickle.loads(saved)
    notes = other.reconfigure(make_config(stage="10%"))
    assert any("stage 1% -> 10%" in n for n in notes)
    assert Decision.STOP not in {v.decision for v in verdicts(other, stream[12:])}


def test_engine_snapshots_taken_before_the_judgement_object_resume() -> None:
    engine = Engine(make_config())
    verdicts(engine, [minute(m) for m in range(8)], close=False)
    state = dict(engine.__dict__)
    state["clean_since"] = state.pop("judgement").clean_since  # the older layout
    old = Engine.__new__(Engine)
    old.__setstate__(state)
    assert isinstance(old.judgement, Judgement) and old.judgement.clean_since is not None
    assert verdicts(old, [minute(m) for m in range(8, 10)])[-1].decision is Decision.PROMOTE


def test_evidence_accumulates_window_by_window_from_the_closed_windows() -> None:
    """The engine's p-value is the sequential test fed each closed window's own sketches, not the horizon."""
    cfg = make_config(stage="1%")
    engine = Engine(cfg)
    engine.kept = []
    vs = verdicts(engine, [minute(m, slow=1.3 if m >= 3 else 1.0) for m in range(12)])
    test = SequentialTest(14)
    for (wid, closed, _ctx), verdict in zip(engine.kept, vs, strict=True):
        ((region, log_e),) = list(latency_samples(closed, cfg))
        assert region == "us-east"
        test.update(log_e)
        assert latency_row(verdict)[1] == pytest.approx(test.p_value, rel=1e-12), wid
    assert test.p_value < 0.01


def test_rejudge_carries_evidence_and_latch_like_the_engine() -> None:
    cfg = make_config(stage="1%")
    engine = Engine(cfg)
    engine.kept = []
    vs = verdicts(engine, regression_then_recovery())
    again = list(rejudge(cfg, engine.kept))
    assert [v.to_record() for v in again] == [v.to_record() for v in vs]


def test_error_and_cache_tests_see_each_windows_counts() -> None:
    engine = Engine(make_config())
    engine.kept = []
    verdicts(engine, [minute(0, errors=0.2), minute(1)])
    (_, first, _), (_, second, _) = engine.kept[:2]
    cfg = make_config()
    ((region, e1),) = list(error_samples(first, cfg))
    ((_, e2),) = list(error_samples(second, cfg))
    assert region == "us-east"
    assert e1.max() > 3  # ~24 canary errors against none: strong evidence in one window
    assert (e2 == 0).all()  # no errors on either side: no evidence
    ((where, cache),) = list(cache_samples(first, cfg))
    assert where is None and (cache == 0).all()  # every request hits on both sides


def test_a_per_region_p_value_is_adjusted_for_the_regions_tested() -> None:
    """Bonferroni over the regions whose test started: a stop is a decision about the whole rollout."""
    cfg = make_config()
    engine = Engine(cfg)
    engine.kept = []
    two = [minute(m, slow=1.2) + [make_event(ts=e.ts, variant=e.variant, tfinal=e.tfinal, region="eu-west")
                                  for e in minute(m, seed=1) if e.probe_question is None]
           for m in range(4)]
    verdicts(engine, two)
    evidence = Evidence()
    raw = SequentialTest(14)
    for _, closed, _ in engine.kept:
        evidence.add(closed, cfg)
        raw.update(dict(latency_samples(closed, cfg))["us-east"])
    assert evidence.regions["p95_warm_latency"] == 2
    assert evidence.p_value("p95_warm_latency", "us-east") == pytest.approx(min(1.0, 2 * raw.p_value))
    assert 0 < raw.p_value < 0.5


def test_a_test_starts_when_both_variants_have_data_and_then_looks_at_every_window() -> None:
    cfg = make_config()
    canary_only = Engine(cfg)
    canary_only.kept = []
    verdicts(canary_only, [[e for e in minute(0) if e.variant == CANARY], minute(1), minute(2)])
    evidence = Evidence()
    looks = []
    for _, closed, _ in canary_only.kept:
        evidence.add(closed, cfg)
        looks.append(evidence.looks("p95_warm_latency", "us-east"))
    assert looks == [0, 1, 2]
    assert evidence.p_value("p95_warm_latency", "eu-west") == 1.0  # never started
