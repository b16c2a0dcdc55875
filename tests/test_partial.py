"""Partial aggregates (decode-side summaries, fed in pieces) judge exactly like events fed one by one."""

from __future__ import annotations

import functools
import pickle
import random

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline import config as config_mod
from pipeline import frame as frames
from pipeline import scenarios
from pipeline.aggregate.partial import summarize, summarize_frame, summarize_runs
from pipeline.aggregate.sketch import PackedSketches, Sketch
from pipeline.aggregate.stats import WindowStats
from pipeline.decode.codec import decode_batch
from pipeline.engine import Engine, Output, Report
from pipeline.feed import SMALL, ChunkEvents, Feeder, Run, Summary, decode_chunk
from pipeline.model import DeadLetter, DecodeError, Event
from pipeline.population import ROWS, label_row

GARBAGE = b'{"variant":"canary-v2","ts":'  # a decode error (invalid JSON) that still names its variant


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
            rows.append((o.raw, o.reason, o.variant, o.source))
    return rows


def _run(name: str, deliveries: list[tuple[str, list[bytes]]],
         partial: bool | str) -> tuple[list[object], int]:
    """Outputs and summaries that fell back; `partial`: False (event by event), True (one summary per
    chunk, `Engine.feed_partial`) or "pieces" (the dataflow's path: `decode_chunk` + `Feeder`)."""
    cfg = config_mod.parse(scenarios.scenario_config(name))
    parts = sorted({p for p, _ in deliveries})
    engine = Engine(cfg, parts)
    feeder = Feeder(engine)
    variants = (cfg.control, cfg.canary)
    out: list[Output] = []
    for k, (partition, lines) in enumerate(deliveries):

        def locate(i: int, k: int = k) -> str:
            return f"chunk{k}:{i}"

        if partial == "pieces":
            pieces = decode_chunk(lines, cfg.limits.max_event_bytes, cfg.windows.size_s, variants)
            out += feeder.feed(pieces, ChunkEvents(lines, locate, cfg.limits.max_event_bytes), partition)
            continue
        items = decode_batch(lines)
        summary = summarize(items, cfg.windows.size_s, variants) if partial else None
        if summary is None:
            out += engine.feed(items, partition, locate)
        else:
            out += engine.feed_partial(summary, partition, lambda items=items: items, locate)
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
    pieces, replayed = _run(name, deliveries, partial="pieces")
    assert pieces == full
    assert replayed < len(deliveries)


@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from(["healthy", "out_of_order", "schema_violations", "late_regression",
                          "new_5xx_class", "lambda_flips"]),
    seed=st.integers(0, 2**32 - 1),
    partitions=st.integers(1, 3),
    sizes=st.lists(st.sampled_from([1, 7, 97, 400, 2000]), min_size=1, max_size=3),
    shuffle=st.floats(0.0, 0.05),
    repeats=st.floats(0.0, 0.02),
    garbage=st.sampled_from([0.0, 0.001, 0.01]),
)
def test_partials_equal_event_by_event_for_any_chunking(name: str, seed: int, partitions: int,
                                                         sizes: list[int], shuffle: float,
                                                         repeats: float, garbage: float) -> None:
    rng = random.Random(seed)
    lines = list(_lines(name))
    for _ in range(int(len(lines) * repeats)):  # redelivered messages (same request_id)
        lines.insert(rng.randrange(len(lines)), rng.choice(lines))
    for _ in range(int(len(lines) * garbage)):  # decode errors among the events
        lines.insert(rng.randrange(len(lines)), GARBAGE)
    for _ in range(int(len(lines) * shuffle)):  # some events out of order, some far out
        i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
        lines[i], lines[j] = lines[j], lines[i]
    deliveries = _deliveries(tuple(lines), rng, partitions, sizes)
    # the dataflow's path; `feed_partial` itself is held to `feed` per scenario above
    assert _run(name, deliveries, partial="pieces")[0] == _run(name, deliveries, partial=False)[0]


def test_a_chunk_with_one_bad_line_is_summarised_around_it() -> None:
    """One decode error splits a chunk into two summaries and a dead letter, not 5,000 events one by one."""
    cfg = config_mod.parse(scenarios.scenario_config("healthy"))
    lines = list(scenarios.generate("healthy", 3, 12))[:5000]
    assert len(lines) == 5000
    lines[2000] = GARBAGE
    lines[2050] = GARBAGE
    lines[4960] = GARBAGE
    pieces = decode_chunk(lines, cfg.limits.max_event_bytes, cfg.windows.size_s, (cfg.control, cfg.canary))
    kinds = [type(p).__name__ if not isinstance(p, tuple) else p[0] for p in pieces]
    assert kinds == ["Summary", 2000, "Run", 2050, "Summary", 4960, "Run"]
    first, second = pieces[0], pieces[4]
    assert isinstance(first, Summary) and (first.start, first.stop, first.row) == (0, 2000, 0)
    assert isinstance(second, Summary) and (second.start, second.stop, second.row) == (2049, 4958, 2051)
    assert isinstance(pieces[2], Run) and pieces[2].stop - pieces[2].start == 49 < SMALL
    engine = Engine(cfg)
    feeder = Feeder(engine)
    out = feeder.feed(pieces, ChunkEvents(lines, lambda i: f"events.jsonl:{i + 1}", 1 << 20), "0")
    assert [d.source for d in out if isinstance(d, DeadLetter)] == [
        "events.jsonl:2001", "events.jsonl:2051", "events.jsonl:4961"]
    assert feeder.summarized == 2000 + 2909 and feeder.one_by_one == 49 + 39
    assert engine.totals["events_in"] == 4997 and engine.totals["chunks_replayed"] == 0


def test_summary_holds_raw_labels_and_first_appearance_order() -> None:
    items = decode_batch(list(_lines("healthy"))[:3000])
    events = [e for e in items if isinstance(e, Event)]
    part = summarize(items, 60.0, ("control", "canary"))
    assert part is not None and part.events == len(events) == 3000
    kept = [e for i, e in enumerate(events) if part.repeated is None or not part.repeated[i]]
    assert part.labels[ROWS] == list(dict.fromkeys(map(label_row, kept)))
    assert [w.wid for w in part.windows] == list(dict.fromkeys(int(e.ts // 60) for e in events))
    assert sum(w.stats.c["events"].total() for w in part.windows) == 3000 - len(part.repeats)
    assert part.repeated is None or part.repeated.sum() == len(part.repeats)


def test_summary_refuses_a_chunk_with_a_decode_error() -> None:
    items: list[Event | DecodeError] = decode_batch([_lines("healthy")[0], b"{not json"])
    assert summarize(items, 60.0, ("control", "canary")) is None


def test_runs_summarised_together_equal_each_summarised_alone() -> None:
    """`summarize_runs` (one pass over a batch's runs) makes the summaries `summarize_frame` makes."""
    items = decode_batch(list(_lines("out_of_order"))[:3000])
    events = [e for e in items if isinstance(e, Event)]
    events += events[100:160] + events[2000:2040]  # repeats, within a run and across runs
    frame = frames.from_events(events, range(len(events)))
    runs = [(0, 700), (701, 1500), (1500, 2300), (2400, len(events))]
    together = summarize_runs(frame, runs, 60.0, ("control", "canary"))
    for (start, stop), a in zip(runs, together, strict=True):
        b = summarize_frame(frame.slice(start, stop - start), 60.0, ("control", "canary"))
        assert (a.ts == b.ts).all() and a.wids is not None and b.wids is not None and (a.wids == b.wids).all()
        assert (a.repeated is None) == (b.repeated is None)
        assert a.repeated is None or b.repeated is None or (a.repeated == b.repeated).all()
        assert a.repeats == b.repeats and a.labels == b.labels
        assert [w.wid for w in a.windows] == [w.wid for w in b.windows]
        for x, y in zip(a.windows, b.windows, strict=True):
            assert {f: dict(c) for f, c in x.stats.c.items()} == {f: dict(c) for f, c in y.stats.c.items()}
            assert x.stats.keys == y.stats.keys
            assert {v: sorted(k) for v, k in x.sticky.items()} == {v: sorted(k) for v, k in y.sticky.items()}
            assert x.stats.packed.counts.tolist() == y.stats.packed.counts.tolist()
        assert {w: h.tolist() for w, h in a.ids.hashes.items()} == \
            {w: h.tolist() for w, h in b.ids.hashes.items()}
        assert {w: a.ids.values(w) for w in a.ids.text} == {w: b.ids.values(w) for w in b.ids.text}
    assert any(p.repeats for p in together)


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
    regions = list(dict.fromkeys(row[1] for row in raw.labels[ROWS]))
    assert {k[1] for k in window.c["user"]} <= {*regions[:2], "other"}


@pytest.mark.parametrize("cut", [1, 4, 9])
def test_a_snapshot_between_chunks_resumes_as_if_never_stopped(cut: int) -> None:
    """The judge's whole state is the engine: ids merged by hash survive a pickle (settled to text)."""
    cfg = config_mod.parse(scenarios.scenario_config("healthy"))
    rng = random.Random(5)
    lines = list(_lines("healthy"))
    for _ in range(30):  # redelivered messages, after the first chunks: repeats of ids merged before
        lines.insert(rng.randrange(2000, len(lines)), lines[rng.randrange(2000)])
    lines.insert(1500, GARBAGE)
    chunks = [lines[i:i + 600] for i in range(0, len(lines), 600)]
    variants, max_bytes = (cfg.control, cfg.canary), cfg.limits.max_event_bytes

    def run(engine: Engine, part: list[list[bytes]], first: int) -> list[Output]:
        feeder = Feeder(engine)
        out: list[Output] = []
        for k, chunk in enumerate(part, first):
            pieces = decode_chunk(chunk, max_bytes, cfg.windows.size_s, variants)
            out += feeder.feed(pieces, ChunkEvents(chunk, lambda i, k=k: f"c{k}:{i}", max_bytes), "0")
        return out

    whole = Engine(cfg)
    expected = _outputs(run(whole, chunks, 0) + whole.close())
    first = Engine(cfg)
    before = run(first, chunks[:cut], 0)
    assert first.seen_ids.waiting or cut > 3  # merged ids whose text is not yet made
    resumed: Engine = pickle.loads(pickle.dumps(first))
    got = _outputs(before + run(resumed, chunks[cut:], cut) + resumed.close())
    assert got == expected
    assert whole.totals["duplicates"] > 0
