"""The event clock: the window spec, and the scalar and column forms of its rules agreeing."""

from __future__ import annotations

import copy
import math

import numpy as np
from conftest import BASE_TS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.clock import STALE_FIRST_S, EventClock, Misfit, end_of, start_of, window_of, windows_of
from pipeline.config import Windows
from pipeline.model import DeadLetterReason

WINDOWS = Windows(size_s=60, horizon_s=600, allowed_lateness_s=30, max_future_s=300, idle_close_s=90)
PARTITIONS = ("a", "b", "c")


def test_scalar_and_column_windows_agree_at_the_edges() -> None:
    ts = np.array([BASE_TS - 0.001, BASE_TS, BASE_TS + 59.999, BASE_TS + 60, -0.5, 0.0])
    assert windows_of(ts, 60).tolist() == [window_of(float(t), 60) for t in ts]
    wid = window_of(BASE_TS, 60)
    assert start_of(wid, 60) == BASE_TS and end_of(wid, 60) == BASE_TS + 60 == start_of(wid + 1, 60)


def test_each_misfit_has_its_reason_and_detail() -> None:
    clock = EventClock(WINDOWS, ("a",))
    assert clock.place(BASE_TS, "a") == window_of(BASE_TS, 60)
    assert clock.see(BASE_TS + 100, "a", alone=True) and clock.watermark == BASE_TS + 70
    assert clock.place(BASE_TS + 401, "a") is Misfit.FUTURE
    assert clock.place(BASE_TS + 200, "a", now=BASE_TS - 200) is Misfit.AHEAD_OF_WALL
    assert clock.place(BASE_TS + 59, "a") is Misfit.LATE
    assert clock.describe(Misfit.LATE, BASE_TS + 59) == f"window ending {int(BASE_TS) + 60} already closed"
    assert [m.reason for m in Misfit] == [DeadLetterReason.FUTURE, DeadLetterReason.FUTURE,
                                          DeadLetterReason.LATE, DeadLetterReason.LATE]
    fresh = EventClock(WINDOWS, ("a", "b"))
    fresh.see(BASE_TS, "a", alone=False)
    assert fresh.watermark == -math.inf  # b has sent nothing
    assert fresh.place(BASE_TS - 631, "a") is Misfit.STALE
    assert fresh.place(BASE_TS - 629, "a") == window_of(BASE_TS - 629, 60)
    assert fresh.place(BASE_TS - STALE_FIRST_S + 1, "b") == window_of(BASE_TS - STALE_FIRST_S + 1, 60)
    assert fresh.place(BASE_TS - STALE_FIRST_S - 1, "b") is Misfit.STALE


def test_the_idle_rule_and_an_outage() -> None:
    clock = EventClock(WINDOWS, ("a", "b"))
    clock.tick(1000.0)
    clock.heard("a", 1000.0)
    clock.see(BASE_TS + 200, "a", alone=False)
    assert not clock.tick(1050.0)  # b silent 50 s: still holds the clock
    clock.heard("a", 1050.0)
    assert clock.tick(1095.0) and clock.watermark == BASE_TS + 170 and clock.idle == {"b"}
    clock.source_state("a", down=True, now=1096.0)
    assert not clock.tick(5000.0)  # silent because unreachable: not idle
    clock.source_state("a", down=False, now=5000.0)
    assert not clock.tick(5080.0)
    assert clock.tick(5100.0) and clock.watermark == BASE_TS + 170 + 100  # all idle: the wall clock leads


# Event times near window edges, lateness and max_future steps, and far behind (stale).
_OFFSETS = st.one_of(st.integers(-700, 700).map(float), st.integers(-1400, 1400).map(lambda x: x / 2),
                     st.sampled_from([-STALE_FIRST_S - 1.0, -STALE_FIRST_S + 1.0, -631.0, -629.0, 301.0]))


@st.composite
def _situations(draw: st.DrawFn) -> tuple[EventClock, str, float | None, list[float], list[bool]]:
    """A clock's state (history, ended and idle partitions, live or not) and a chunk of one partition."""
    parts = PARTITIONS[:draw(st.integers(1, 3))]
    clock = EventClock(WINDOWS, parts)
    live = draw(st.booleans())
    wall = 10_000.0
    if live:
        clock.tick(wall)
    for p, offset in draw(st.lists(st.tuples(st.sampled_from(parts), _OFFSETS), max_size=8)):
        ts = BASE_TS + offset
        clock.heard(p, wall if live else None)
        if isinstance(clock.place(ts, p), int):
            clock.see(ts, p, clock.alone(p))
    for p in draw(st.lists(st.sampled_from(parts), max_size=2)):
        clock.end(p)
    if live and draw(st.booleans()):
        clock.heard(draw(st.sampled_from(parts)), wall + 100)
        wall += draw(st.sampled_from([50.0, 95.0]))
        clock.tick(wall)  # partitions silent for 95 s fall idle
    partition = draw(st.sampled_from(parts))
    now = BASE_TS + draw(st.sampled_from([-400.0, 0.0, 300.0, 1000.0])) if live else None
    chunk = [BASE_TS + o for o in draw(st.lists(_OFFSETS, min_size=1, max_size=12))]
    repeated = [False, *draw(st.lists(st.booleans(), min_size=len(chunk) - 1, max_size=len(chunk) - 1))]
    return clock, partition, now, chunk, repeated


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_situations())
def test_the_column_form_fits_a_chunk_iff_the_scalar_form_takes_each_event(
        situation: tuple[EventClock, str, float | None, list[float], list[bool]]) -> None:
    clock, partition, now, chunk, repeated = situation
    clock.heard(partition, now)
    scalar = copy.deepcopy(clock)
    alone = scalar.alone(partition)
    takes_all = True
    for ts, again in zip(chunk, repeated, strict=True):
        if not isinstance(scalar.place(ts, partition, now), int):
            takes_all = False
            break
        if not again:  # a repeated request id passes the clock but moves nothing
            scalar.see(ts, partition, alone)
    ts_column = np.array(chunk)
    mask = np.array(repeated)
    assert clock.fits(ts_column, partition, now=now, repeated=mask) == takes_all
    wids = windows_of(ts_column, 60)
    assert clock.fits(ts_column, partition, now=now, repeated=mask, wids=wids) == takes_all
    if not any(repeated):
        assert clock.fits(ts_column, partition, now=now) == takes_all
