"""Partial aggregates (decode-side summaries) judge exactly like events fed one by one."""

from __future__ import annotations

import functools
import random

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline import config as config_mod
from pipeline import scenarios
from pipeline.aggregate.partial import summarize
from pipeline.aggregate.sketch import PackedSketches, Sketch
from pipeline.aggregate.stats import WindowStats
from pipeline.decode.codec import decode_batch
from pipeline.engine import Engine, Output, Report
from pipeline.model import DeadLetter, DecodeError, Event


@functools.cache
def _lines(name: str) -> tuple[bytes, ...]:
    return tuple(scenarios.generate(name, 3, 6))


def _outputs(out: list[Output]) -> list[object]:
    rows: list[object] = []
    for o in out:
        if isinstance(o, Report):
            assert o.window is not None
            rows.append((o.verdict.to_record(), {f: dict(c) for f, c in o.window.c.items()},
                         o.window.keys, o.window.packed.bins.tolist(), o.window.packed.counts.tolist(),
                         o.quantiles, o.horizon_stats, o.totals.get("events_in")))
        else:
            assert isinstance(o, DeadLetter)
            rows.append((o.raw, o.reason, o.variant))
    return rows


def _run(name: str, deliveries: list[tuple[str, list[bytes]]], partial: bool) -> tuple[list[object], int]:
    cfg = config_mod.parse(scenarios.scenario_config(name))
    parts = sorted({p for p, _ in deliveries})
    engine = Engine(cfg, parts)
    out: list[Output] = []
    for partition, lines in deliveries:
        items = decode_batch(lines)
        summary = summarize(items, cfg.windows.size_s, (cfg.control, cfg.canary)) if partial else None
        if summary is None:
            out += engine.feed(items, partition)
        else:
            out += engine.feed_partial(summary, partition, lambda items=items: items)
    for p in parts:
        out += engine.end_partition(p)
    out += engine.close()
    return _outputs(out), engine.totals["chunks_replayed"]


def _deliveries(lines: tuple[bytes, ...], rng: random.Random, partitions: int,
                sizes: list[int]) -> list[tuple[str, list[bytes]]]:
    queues: list[list[bytes]] = [[] for _ in range(partitions)]
    for line in lines:
        queues[rng.randrange(partitions)].append(line)
    out = []
    while any(queues):
        p = rng.choice([i for i, q in enumerate(queues) if q])
        n = rng.choice(sizes)
        out.append((str(p), queues[p][:n]))
        del queues[p][:n]
    return out


@pytest.mark.parametrize("name", sorted(scenarios.SCENARIOS))
def test_every_scenario_judges_alike_from_partials(name: str) -> None:
    lines = _lines(name)
    deliveries = _deliveries(lines, random.Random(7), 1, [500])
    full, _ = _run(name, deliveries, partial=False)
    fast, replayed = _run(name, deliveries, partial=True)
    assert fast == full
    assert replayed < len(deliveries)  # the summaries were used, not only the fallback


@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from(["healthy", "out_of_order", "schema_violations", "late_regression",
                          "new_5xx_class", "lambda_flips"]),
    seed=st.integers(0, 2**32 - 1),
    partitions=st.integers(1, 3),
    sizes=st.lists(st.sampled_from([1, 7, 97, 400, 2000]), min_size=1, max_size=3),
    shuffle=st.floats(0.0, 0.05),
    repeats=st.floats(0.0, 0.02),
)
def test_partials_equal_event_by_event_for_any_chunking(name: str, seed: int, partitions: int,
                                                         sizes: list[int], shuffle: float,
                                                         repeats: float) -> None:
    rng = random.Random(seed)
    lines = list(_lines(name))
    for _ in range(int(len(lines) * repeats)):  # redelivered messages (same request_id)
        lines.insert(rng.randrange(len(lines)), rng.choice(lines))
    for _ in range(int(len(lines) * shuffle)):  # some events out of order, some far out
        i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
        lines[i], lines[j] = lines[j], lines[i]
    deliveries = _deliveries(tuple(lines), rng, partitions, sizes)
    assert _run(name, deliveries, partial=True)[0] == _run(name, deliveries, partial=False)[0]


def test_summary_holds_raw_labels_and_first_appearance_order() -> None:
    items = decode_batch(list(_lines("healthy"))[:3000])
    events = [e for e in items if isinstance(e, Event)]
    part = summarize(items, 60.0, ("control", "canary"))
    assert part is not None and part.events == len(events) == 3000
    assert part.labels["variant"] == list(dict.fromkeys(e.variant for e in events))
    assert [w.wid for w in part.windows] == list(dict.fromkeys(int(e.ts // 60) for e in events))
    assert sum(w.stats.c["events"].total() for w in part.windows) == 3000 - len(part.repeats)
    assert part.repeated is None or part.repeated.sum() == len(part.repeats)


def test_summary_refuses_a_chunk_with_a_decode_error() -> None:
    items: list[Event | DecodeError] = decode_batch([_lines("healthy")[0], b"{not json"])
    assert summarize(items, 60.0, ("control", "canary")) is None


def test_packing_from_values_equals_adding_to_sketches() -> None:
    rng = np.random.default_rng(3)
    values = np.concatenate([rng.lognormal(5, 1.5, 5000), [0.0, -1.0, 1e-9, 1e12]])
    ids = rng.integers(0, 7, len(values))
    packed = PackedSketches.from_values(ids, values, 9)
    for i in range(9):
        sketch = Sketch()
        sketch.add_many(values[ids == i])
        assert packed.unpack(i).counts.tolist() == sketch.counts.tolist()
        assert packed.unpack(i).zero == sketch.zero


def test_relabeling_folds_unadmitted_values_into_other() -> None:
    from pipeline.aggregate.stats import LabelCaps

    caps = LabelCaps(2, {"variant": ["control", "canary"]})
    items = decode_batch(list(_lines("healthy"))[:200])
    events = [e for e in items if isinstance(e, Event)]
    raw = summarize(items, 60.0, ("control", "canary"))
    assert raw is not None
    caps.admit_values(raw.labels)
    window = WindowStats.new()
    for w in raw.windows:
        window.merge_relabeled(w.stats, caps)
    direct = WindowStats.new()
    caps2 = LabelCaps(2, {"variant": ["control", "canary"]})
    caps2.admit_all(events)
    direct.add_many(events, caps2)
    assert window.snapshot() == direct.snapshot()
    assert {k[1] for k in window.c["user"]} <= {*raw.labels["region"][:2], "other"}
