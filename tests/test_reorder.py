"""Property: reordering events within the allowed lateness changes no verdict."""

from __future__ import annotations

import functools
import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline import config as config_mod
from pipeline import scenarios
from pipeline.decode.codec import decode_batch
from pipeline.engine import Engine, Report
from pipeline.model import Event


@functools.cache
def _events(name: str) -> tuple[Event, ...]:
    items = decode_batch(list(scenarios.generate(name, 5, 12)))
    return tuple(e for e in items if isinstance(e, Event))


def _verdicts(name: str, events: list[Event], batch: int) -> list[dict]:
    engine = Engine(config_mod.parse(scenarios.scenario_config(name)))
    out = []
    for i in range(0, len(events), batch):
        out += engine.feed(events[i : i + batch])
    out += engine.close()
    return [o.verdict.to_record() for o in out if isinstance(o, Report)]


@settings(max_examples=12, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from(["healthy", "new_5xx_class", "lambda_flips", "warm_latency_regression"]),
    seed=st.integers(0, 2**32 - 1),
    max_delay=st.floats(0.0, 29.9),
    batch=st.sampled_from([1, 97, 1000]),
)
def test_reordering_within_lateness_changes_no_verdict(name: str, seed: int, max_delay: float,
                                                       batch: int) -> None:
    events = list(_events(name))
    rng = random.Random(seed)
    # Deliver each event up to max_delay seconds after its event time; ties keep a random order.
    delivered = sorted(events, key=lambda e: (e.ts + rng.uniform(0, max_delay), rng.random()))
    assert _verdicts(name, delivered, batch) == _verdicts(name, events, 1000)
