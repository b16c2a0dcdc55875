"""The stream-wide clock, window closing, dead letters, de-duplication and state recovery."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path

from conftest import BASE_TS, make_config, make_event, make_probe
from msgspec.structs import replace

from pipeline import config as config_mod
from pipeline import scenarios
from pipeline.aggregate.partial import summarize
from pipeline.aggregate.sticky import StickyTracker
from pipeline.decode.codec import decode_batch
from pipeline.engine import Engine, Report
from pipeline.model import DeadLetter, DeadLetterReason, Decision, DecodeError, Event, format_time


def _reports(outs: list) -> list[Report]:
    return [o for o in outs if isinstance(o, Report)]


def _dead(outs: list) -> list[DeadLetter]:
    return [o for o in outs if isinstance(o, DeadLetter)]


def test_window_closes_when_watermark_reaches_its_end() -> None:
    eng = Engine(make_config())  # 60 s windows, 30 s lateness
    assert eng.feed([make_event(ts=BASE_TS + 10)]) == []
    # watermark = 89.999 - 30 < 60: window [0, 60) stays open
    assert _reports(eng.feed([make_event(ts=BASE_TS + 89.999)])) == []
    out = _reports(eng.feed([make_event(ts=BASE_TS + 90)]))
    assert [r.verdict.window_end for r in out] == [BASE_TS + 60]
    assert out[0].verdict.id == "chat-rag-v2/" + format_time(BASE_TS + 60)
    assert out[0].verdict.id == "chat-rag-v2/2025-08-27T06:01:00Z"


def test_late_event_is_dead_lettered_and_counted() -> None:
    eng = Engine(make_config())
    eng.feed([make_event(ts=BASE_TS + 5), make_event(ts=BASE_TS + 95)])
    out = eng.feed([make_event(ts=BASE_TS + 59, raw=b'{"late":1}')])
    dead = _dead(out)
    assert [d.reason for d in dead] == [DeadLetterReason.LATE]
    assert dead[0].raw == b'{"late":1}'
    assert eng.totals["dead_late"] == 1


def test_event_within_lateness_is_accepted_even_before_the_first_window() -> None:
    eng = Engine(make_config())
    eng.feed([make_event(ts=BASE_TS + 65)])
    out = eng.feed([make_event(ts=BASE_TS + 50)])  # window [0,60) never closed: wm = 35
    assert _dead(out) == []
    reports = _reports(eng.close())
    assert [r.verdict.window_end for r in reports] == [BASE_TS + 60, BASE_TS + 120]


def test_future_event_moves_no_clock() -> None:
    eng = Engine(make_config())
    eng.feed([make_event(ts=BASE_TS)])
    out = eng.feed([make_event(ts=BASE_TS + 301 + 3600)])
    assert [d.reason for d in _dead(out)] == [DeadLetterReason.FUTURE]
    assert eng.max_seen == BASE_TS
    # exactly max_future_s ahead is still accepted
    assert _dead(eng.feed([make_event(ts=BASE_TS + 300)])) == []


def test_every_window_gets_one_verdict_even_empty_ones() -> None:
    eng = Engine(make_config())
    # each step stays within max_future_s; windows 1-3 and 5-8 get no event
    outs = eng.feed([make_event(ts=BASE_TS + t) for t in (1, 290, 580, 601)])
    outs += eng.close()
    ends = [r.verdict.window_end for r in _reports(outs)]
    assert ends == [BASE_TS + 60 * (i + 1) for i in range(11)]
    assert len(set(ends)) == len(ends)


def test_close_without_events_emits_nothing() -> None:
    assert Engine(make_config()).close() == []


def test_duplicate_request_ids_count_once_per_window() -> None:
    eng = Engine(make_config())
    evs = [make_event(ts=BASE_TS + 1, request_id="r1"), make_event(ts=BASE_TS + 2, request_id="r1"),
           make_event(ts=BASE_TS + 3, request_id="r2"), make_event(ts=BASE_TS + 61, request_id="r1")]
    eng.feed(evs)
    reports = _reports(eng.close())
    first = reports[0].window
    assert first is not None
    assert first.c["user"][("control", "us-east")] == 2
    assert first.c["duplicates"]["control"] == 1
    assert eng.totals["duplicates"] == 1


def test_dedupe_bound_stops_removing_duplicates_and_counts_it() -> None:
    eng = Engine(make_config("[limits]\ndedupe_max_ids = 2\n"))
    eng.feed([make_event(ts=BASE_TS + i, request_id=f"r{i % 3}") for i in range(6)])
    assert eng.totals["dedupe_overflow"] >= 1


def test_watermark_is_minimum_over_partitions_and_ended_partitions_release_it() -> None:
    eng = Engine(make_config(), partitions=("a", "b"))
    assert _reports(eng.feed([make_event(ts=BASE_TS + 200)], partition="a")) == []  # b has sent nothing
    assert _reports(eng.feed([make_event(ts=BASE_TS + 10)], partition="b")) == []   # wm = -20
    out = _reports(eng.feed([make_event(ts=BASE_TS + 100)], partition="b"))        # wm = 70
    assert [r.verdict.window_end for r in out] == [BASE_TS + 60]
    out = _reports(eng.end_partition("b"))                                            # wm = 170
    assert [r.verdict.window_end for r in out] == [BASE_TS + 120]


def test_decode_errors_are_attributed_to_the_canary_and_stop_at_shadow() -> None:
    eng = Engine(make_config(stage="shadow"))
    bad = DecodeError(b'{"variant":"canary-v2","status":"x"}', DeadLetterReason.SCHEMA,
                      "Expected int - at `$.status`", "canary-v2")
    outs = eng.feed([bad, make_event(ts=BASE_TS + 1, variant="canary-v2")])
    outs += eng.close()
    assert [d.variant for d in _dead(outs)] == ["canary-v2"]
    verdict = _reports(outs)[-1].verdict
    row = next(r for r in verdict.gates if r.gate == "schema_violations")
    assert row.status == "fail" and row.hard_stop and row.observed == 1
    assert verdict.decision is Decision.STOP


def _healthy_minute(minute: int) -> list:
    evs = []
    for i in range(60):
        ts = BASE_TS + minute * 60 + i
        for variant in ("control", "canary-v2"):
            evs.append(make_event(ts=ts, variant=variant, sticky=f"{variant}-{i}"))
        evs.append(make_probe(ts=ts, probe_question=f"q{i % 5}", probe_paraphrase=i % 3))
        evs.append(make_probe(ts=ts, variant="control", probe_question=f"q{i % 5}",
                              probe_paraphrase=i % 3))
    return evs


def test_promotion_needs_the_sustain_period_and_a_stage_change_resets_it() -> None:
    eng = Engine(make_config())  # sustain 300 s
    outs = []
    for minute in range(10):
        outs += eng.feed(_healthy_minute(minute))
    outs += eng.close()
    decisions = [r.verdict.decision for r in _reports(outs)]
    # windows ending at 1..10 min; the clean run starts with the first window
    assert decisions[:4] == [Decision.HOLD] * 4
    assert decisions[4:] == [Decision.PROMOTE] * 6
    eng2 = Engine(make_config())
    outs = []
    for minute in range(10):
        if minute == 6:
            eng2.set_stage("100%")
        outs += eng2.feed(_healthy_minute(minute))
    decisions = [r.verdict.decision for r in _reports(outs)]
    assert Decision.PROMOTE in decisions[:5]
    assert decisions[5] is Decision.HOLD  # first window judged at the new stage


def test_engine_state_pickles_and_resumes_identically() -> None:
    evs = [e for m in range(8) for e in _healthy_minute(m)]
    half = len(evs) // 2
    a = Engine(make_config())
    out_a = a.feed(evs[:half])
    b: Engine = pickle.loads(pickle.dumps(a))
    out_a += a.feed(evs[half:]) + a.close()
    out_b = b.feed(evs[half:]) + b.close()
    assert _reports(out_b)
    tail_a = [r.verdict.to_record() for r in _reports(out_a)][-len(_reports(out_b)):]
    assert [r.verdict.to_record() for r in _reports(out_b)] == tail_a


def test_x_warm_pings_are_counted_but_feed_no_latency() -> None:
    eng = Engine(make_config())
    eng.feed([make_event(ts=BASE_TS + 1, x_warm=True, tfinal=99_999.0),
              make_event(ts=BASE_TS + 2, tfinal=1000.0)])
    window = _reports(eng.close())[0].window
    assert window is not None
    assert window.c["x_warm"][("control", "us-east")] == 1
    assert window.c["user"][("control", "us-east")] == 1
    assert window.keys == [("control", "us-east", False)]
    assert window.sketch(("control", "us-east", False), "tfinal").count == 1


def test_label_values_are_capped() -> None:
    eng = Engine(make_config("[limits]\nmax_label_values = 4\n"))
    eng.feed([make_event(ts=BASE_TS + 1, region=f"r{i}") for i in range(50)])
    window = _reports(eng.close())[0].window
    assert window is not None
    regions = {r for (_, r) in window.c["user"]}
    assert len(regions) == 5 and "other" in regions


def test_sticky_tracker_bound_and_overlap() -> None:
    t = StickyTracker(("control", "canary-v2"), cap=3)
    for i in range(5):
        t.see("control", f"k{i}", 10)
    assert t.untracked == 2
    t.see("canary-v2", "k1", 12)
    t.see("canary-v2", "k2", 13)  # window 13 is still open: not in any judged horizon yet
    t.close(10)
    t.close(12)
    assert t.both(5) == ["k1"]
    assert t.both(11) == []  # the control saw k1 only in window 10
    t.evict(11)
    assert t.last["control"] == {}
    t.close(13)
    assert t.last["canary-v2"] == {"k1": 12, "k2": 13}


def test_report_carries_horizon_quantiles() -> None:
    eng = Engine(make_config())
    eng.feed([replace(make_event(ts=BASE_TS + i), tfinal=1000.0 + i) for i in range(50)])
    report = _reports(eng.close())[0]
    q = report.quantiles[("control", "us-east", "warm", "tfinal", 0.5)]
    assert abs(q - 1024.5) <= 0.01 * 1024.5


def test_dead_letter_ahead_of_the_last_event_still_counts() -> None:
    eng = Engine(make_config(stage="shadow"))
    outs = eng.feed([make_event(ts=BASE_TS + t, variant="canary-v2") for t in range(0, 96, 5)])
    bad = DecodeError(b'{"variant":"canary-v2"}', DeadLetterReason.SCHEMA, "x", "canary-v2", BASE_TS + 200)
    outs += eng.feed([bad]) + eng.close()
    last = _reports(outs)[-1].verdict
    assert last.gate_status("schema_violations") == "fail"
    assert eng.open == {}


def test_configured_values_keep_their_label_past_the_cap() -> None:
    eng = Engine(make_config("[limits]\nmax_label_values = 8\n", stage="shadow"))
    flood = [make_event(ts=BASE_TS + i * 0.1, variant="canary-v3", index_hash=f"0x{i:04x}")
             for i in range(70)]
    eng.feed([*flood, make_event(ts=BASE_TS + 8, variant="canary-v2")])
    last = _reports(eng.close())[-1].verdict
    assert last.gate_status("index_skew") == "pass", last.reasons


def test_label_admission_does_not_depend_on_batch_size() -> None:
    def run(batch: int) -> list[dict]:
        eng = Engine(make_config("[limits]\nmax_label_values = 3\n"))
        evs = [make_event(ts=BASE_TS + 310, variant="canary-v2", region="a"),
               make_event(ts=BASE_TS + 250, variant="canary-v2", region="b"),
               make_event(ts=BASE_TS + 315, variant="canary-v2", region="c")]
        evs = [make_event(ts=BASE_TS + 240), *evs]
        outs = []
        for i in range(0, len(evs), batch):
            outs += eng.feed(evs[i : i + batch])
        return [r.verdict.to_record() for r in _reports(outs + eng.close())]

    assert run(1) == run(2) == run(10)


WALL = BASE_TS + 1000.0  # live tests: a wall clock a little after the events


def test_live_idle_partition_stops_holding_the_watermark() -> None:
    eng = Engine(make_config(), partitions=("a", "b"))  # idle_close_s = 90
    eng.tick(WALL + 0)
    eng.feed([make_event(ts=BASE_TS + 5)], partition="b", now=WALL + 0)
    assert _reports(eng.feed([make_event(ts=BASE_TS + 200)], partition="a", now=WALL + 1)) == []
    assert _reports(eng.tick(WALL + 50)) == []  # b silent for 50 s: still holds the clock
    assert _reports(eng.feed([make_event(ts=BASE_TS + 201)], partition="a", now=WALL + 90)) == []
    out = _reports(eng.tick(WALL + 95))  # b silent for 95 s: a alone sets the watermark (171)
    assert [r.verdict.window_end for r in out] == [BASE_TS + 60, BASE_TS + 120]


def test_live_silence_everywhere_advances_event_time_with_the_wall_clock() -> None:
    eng = Engine(make_config(), partitions=("a",))
    eng.feed([make_event(ts=BASE_TS + 10)], partition="a", now=WALL + 0)
    assert _reports(eng.tick(WALL + 80)) == []  # not idle yet
    out = _reports(eng.tick(WALL + 100))  # idle: watermark = 10 - 30 + 100 = 80
    assert [r.verdict.window_end for r in out] == [BASE_TS + 60]
    late = eng.feed([make_event(ts=BASE_TS + 20)], partition="a", now=WALL + 101)
    assert [d.reason for d in _dead(late)] == [DeadLetterReason.LATE]


def test_live_run_dead_letters_events_ahead_of_the_wall_clock_even_first() -> None:
    """A first event from a broken clock far in the future must not become the stream's clock."""
    cfg = make_config()
    engine = Engine(cfg)
    now = BASE_TS + 10
    bogus = make_event(ts=BASE_TS + 10 * 365 * 86400)  # ten years ahead
    out = engine.feed([bogus], now=now)
    assert [d.reason for d in out if isinstance(d, DeadLetter)] == ["future"]
    assert "ahead of the wall clock" in out[0].detail  # type: ignore[union-attr]
    assert engine.max_seen is None and not engine.open
    good = [make_event(ts=BASE_TS + i) for i in range(5)]
    assert not [d for d in engine.feed(good, now=now) if isinstance(d, DeadLetter)]
    assert engine.max_seen == BASE_TS + 4
    # without a wall clock (files, replays) only the events decide
    replay = Engine(cfg)
    assert not replay.feed([make_event(ts=BASE_TS + 400)])


def test_an_unreachable_broker_is_not_idleness() -> None:
    """While a partition's broker is down the idle rule waits; reconnecting restarts its idle timer."""
    eng = Engine(make_config(), partitions=("a",))  # idle_close_s = 90
    eng.feed([make_event(ts=BASE_TS + 10)], partition="a", now=WALL)
    eng.source_state("a", down=True, now=WALL + 5)
    assert _reports(eng.tick(WALL + 500)) == []  # silent for 500 s, but because of the outage
    eng.source_state("a", down=False, now=WALL + 500)
    assert _reports(eng.tick(WALL + 580)) == []  # 80 s since it came back: not idle yet
    out = _reports(eng.tick(WALL + 600))  # idle now: event time follows the wall clock again
    assert [r.verdict.window_end for r in out] == [BASE_TS + 60]


def test_an_event_far_behind_before_the_clock_started_is_late() -> None:
    """Two partitions, one silent: a valid event from 1970 must not open window 0 (29M windows to judge)."""
    eng = Engine(make_config(), partitions=("a", "b"))
    eng.feed([make_event(ts=BASE_TS + 5)], partition="a")
    out = eng.feed([make_event(ts=0.0)], partition="a")
    assert [d.reason for d in _dead(out)] == [DeadLetterReason.LATE]
    assert "too far behind the event times seen" in _dead(out)[0].detail
    assert sorted(eng.open) == [int((BASE_TS + 5) // 60)]
    # within the horizon it is still an event: the watermark is unknown, its window is open
    assert not _dead(eng.feed([make_event(ts=BASE_TS - 300)], partition="b"))


# -- recovery snapshots of an earlier layout ------------------------------------------------------

V1_SNAPSHOT = Path(__file__).parent / "golden" / "engine-v1.pickle"
RESUME_CHUNK = 200
RESUME_CUT = 31  # chunks fed before the v1 snapshot was taken


def _resume_config() -> config_mod.Config:
    """out_of_order under tight limits, so the snapshot holds overflowing id sets and sticky keys."""
    extra = "\n[limits]\ndedupe_max_ids = 400\nmax_sticky_keys = 300\n"
    return config_mod.parse(scenarios.scenario_config("out_of_order") + extra)


def _resume_steps() -> list[Callable[[Engine], list]]:
    """A live run over two partitions: feed and feed_partial, garbage, idleness, an outage, ends.

    Deterministic, so the engine pickled after RESUME_CUT steps (tests/golden/engine-v1.pickle,
    recorded with the engine's first pickled layout; never re-record it) resumes at step
    RESUME_CUT of the same list.
    """
    cfg = _resume_config()
    lines = list(scenarios.generate("out_of_order", 7, 16))
    for at in range(0, len(lines), 997):  # decode errors among the events, one before any event
        lines.insert(at, b'{"variant":"control","ts":')
    steps: list[Callable[[Engine], list]] = []
    for k, start in enumerate(range(0, len(lines), RESUME_CHUNK)):
        items = decode_batch(lines[start:start + RESUME_CHUNK])
        times = [x.ts for x in items if isinstance(x, Event)]
        now = (max(times) if times else BASE_TS) + 2.0
        partition = "0" if k % 2 or 20 <= k < 28 else "1"  # "1" falls silent long enough to idle

        def step(eng: Engine, k: int = k, items: list = items, partition: str = partition,
                 now: float = now) -> list:
            out = []
            if k == 10:
                eng.source_state("1", down=True, now=now)
            if k == 13:
                eng.source_state("1", down=False, now=now)
            part = summarize(items, cfg.windows.size_s, (cfg.control, cfg.canary)) if k % 3 else None
            if part is None:
                out += eng.feed(items, partition, lambda i: f"chunk{k}:{i}", now)
            else:
                out += eng.feed_partial(part, partition, lambda: items, lambda i: f"chunk{k}:{i}", now)
            out += eng.tick(now + 1.0)
            if k == 55:
                out += eng.end_partition("1")
            return out

        steps.append(step)
    steps.append(lambda eng: eng.close())
    return steps


def _records(outs: list) -> list[dict]:
    return [o.verdict.to_record() | {"totals": o.totals} if isinstance(o, Report) else o.to_record()
            for o in outs]


def record_v1_snapshot() -> None:
    """Write the v1 snapshot (run once, with the engine of that layout)."""
    eng = Engine(_resume_config(), ("0", "1"))
    for step in _resume_steps()[:RESUME_CUT]:
        step(eng)
    V1_SNAPSHOT.write_bytes(pickle.dumps(eng))


def test_a_snapshot_of_the_first_pickled_layout_resumes_as_if_never_stopped() -> None:
    steps = _resume_steps()
    whole = Engine(_resume_config(), ("0", "1"))
    for step in steps[:RESUME_CUT]:
        step(whole)
    expected = _records([o for step in steps[RESUME_CUT:] for o in step(whole)])
    resumed: Engine = pickle.loads(V1_SNAPSHOT.read_bytes())  # our own fixture
    got = _records([o for step in steps[RESUME_CUT:] for o in step(resumed)])
    assert len([r for r in expected if "window_end" in r]) >= 8
    assert got == expected
