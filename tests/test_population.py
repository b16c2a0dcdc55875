"""Populations, label rows and counter families: one definition, scalar and column forms alike."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import polars as pl
import pytest
from conftest import make_event, make_probe
from msgspec.structs import replace

from pipeline import frame, population
from pipeline.aggregate import families
from pipeline.aggregate.families import FAMILY, SIGNATURE, TABLE, count_probes, count_requests, signatures
from pipeline.aggregate.partial import summarize, summarize_frame
from pipeline.aggregate.stats import LabelCaps, WindowStats
from pipeline.model import Event


def _events(n: int, seed: int) -> list[Event]:
    """Every combination the rules tell apart: pings with and without questions, probes with and
    without ΔS / coverage / λ, user requests with and without errors, retrieval and cache blocks."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        kind = rng.choice(["user", "user", "probe", "ping"])
        ev = make_event(
            ts=1_756_274_400.0 + i * 0.01, variant=rng.choice(["control", "canary-v2", "other"]),
            region=rng.choice(["us-east", "eu-west"]), sticky=f"s-{rng.randrange(20)}",
            request_id=f"r-{i}", cold_start=rng.random() < 0.3, status=rng.choice([200, 404, 500, 503]),
            failure_phase=rng.choice([None, "headers", "body"]), has_retrieval=rng.random() < 0.5,
            index_hash=rng.choice([None, "0x1", "0x2"]), metric=rng.choice([None, "cosine"]),
            analyzer=rng.choice([None, "bilstem"]), cache_prefix=rng.choice([None, "v1:", "v2:"]),
            cache_hit=rng.choice([None, True, False]), tfinal=rng.uniform(100, 3000))
        if kind == "probe":
            ev = make_probe(**{f: getattr(ev, f) for f in ("ts", "variant", "region", "request_id")},
                            probe_question=f"q{rng.randrange(5)}", probe_topic=rng.choice(["a", "b"]),
                            delta_s=rng.choice([None, rng.random()]),
                            coverage=rng.choice([None, rng.random()]),
                            lambda_state=rng.randrange(-1, 4), probe_paraphrase=rng.randrange(3),
                            probe_seed=rng.randrange(3))
        elif kind == "ping":
            ev = replace(ev, x_warm=True, probe_question=rng.choice([None, "q9"]))
        out.append(ev)
    return out


EVENTS = _events(2000, 3)
FRAME = frame.from_events(EVENTS, list(range(len(EVENTS))))


def _column(expr: pl.Expr) -> list[Any]:
    return FRAME.select(expr).to_series().to_list()


def test_populations_partition_events_and_scalar_and_column_forms_agree() -> None:
    scalar = [population.population_of(e.x_warm, e.probe_question) for e in EVENTS]
    assert _column(population.POPULATION) == scalar
    assert Counter(scalar).keys() == set(population.POPULATIONS)
    for name, test, column in ((population.PINGS, population.is_ping, population.PING),
                               (population.PROBES, population.is_probe, population.PROBE),
                               (population.USERS, population.is_user, population.USER)):
        assert [test(e) for e in EVENTS] == [p == name for p in scalar] == _column(column)
    assert population.users_of(EVENTS) == [e for e in EVENTS if population.is_user(e)]
    assert population.probes_of(EVENTS) == [e for e in EVENTS if population.is_probe(e)]
    assert _column(population.ERROR) == [population.is_error(e.status) for e in EVENTS]
    assert population.error_class(503, None) == (503, "none")
    assert population.error_class(502, "body") == (502, population.error_phase("body")) == (502, "body")


def test_sticky_population_scalar_and_column_forms_agree() -> None:
    variants = ("control", "canary-v2")
    mask = _column(population.sticky_column(variants))
    assert mask == [population.gives_sticky(e, variants) for e in EVENTS] and any(mask)
    keys = population.sticky_keys(population.users_of(EVENTS), variants)
    for v in variants:
        want = list(dict.fromkeys(e.sticky for e, m in zip(EVENTS, mask, strict=True)
                                  if m and e.variant == v))
        assert keys[v] == want


def test_label_row_lists_every_label_kind_once_in_admission_order() -> None:
    assert population.LABEL_KINDS[0] == "variant"
    assert len(set(population.LABEL_KINDS)) == len(population.LABELS)
    assert set(population.LABEL_FIELDS) <= set(frame.SCHEMA)
    assert [kind for kind, _ in population.ADMITTED] == [*population.LABEL_KINDS, population.ROWS]
    ev = EVENTS[0]
    assert population.label_row(ev) == tuple(getattr(ev, f) for f in population.LABEL_FIELDS)
    # user requests carry no probe label: their rows can be built without those columns
    users = population.users_of(EVENTS)
    probe_fields = [f for k, f in population.LABELS if k in population.PROBE_LABELS]
    assert all(getattr(e, f) is None for e in users for f in probe_fields)
    short = [tuple(getattr(e, f) for k, f in population.LABELS if k not in population.PROBE_LABELS)
             for e in users]
    assert population.label_rows_of_users(short) == list(map(population.label_row, users))


def test_values_round_to_four_digits_as_python_does() -> None:
    assert population.rounded(0.12345) == round(0.12345, 4)
    assert population.rounded(0.00005) == round(0.00005, 4)  # Python's rounding of the binary value
    assert population.VALUE_DIGITS == 4


def test_family_table_names_fields_that_events_and_frames_have() -> None:
    columns = set(frame.SCHEMA)
    derived = {"cache", "reason"}  # cache: "n" / "hit"; reason: the engine's dead letters
    for f in TABLE:
        assert f.fields[0] == "variant", f.name  # every key starts with the variant (relabeling relies on it)
        assert set(f.fields) - derived <= columns, f.name
        assert len(f.kinds) == len(f.fields)
        assert f.when is None or f.when.field in columns
    assert tuple(f.name for f in TABLE) == families.FAMILIES
    # what count_requests reads covers every request family's fields and conditions
    read = {*SIGNATURE, *population.POPULATION_FIELDS, "cache"}
    for f in families.REQUEST_FAMILIES:
        assert set(f.fields) <= read and (f.when is None or f.when.field in read), f.name
    assert families.EVENT_SIGNATURE[families.POPULATION_AT:families.POPULATION_AT + 2] == \
        population.POPULATION_FIELDS


def _expected(ev: Event) -> dict[str, Counter[Any]]:
    """What one event adds to each family, keyed by the table's fields (an independent reading)."""
    out: dict[str, Counter[Any]] = {f.name: Counter() for f in TABLE}
    pop = population.population_of(ev.x_warm, ev.probe_question)
    for f in TABLE:
        if f.population not in (families.ALL, pop) or (f.when and not f.when.test(getattr(ev, f.when.field))):
            continue
        values = []
        for field in f.fields:
            if field == "cache":
                values.append("n")
            else:
                values.append(getattr(ev, field))
        out[f.name][f.key_of(values)] += 1
        if f.name == "cache" and ev.cache_hit:
            out[f.name][(ev.variant, "hit")] += 1
    return out


def test_every_family_key_follows_its_layout() -> None:
    """count_requests and count_probes build each key as the table lays it out, raw labels."""
    seen: set[str] = set()
    for ev in EVENTS[:400]:
        c: dict[str, Counter[Any]] = {f.name: Counter() for f in TABLE}
        capped = count_requests(c, signatures([ev]), None)
        count_probes(c, population.probes_of([ev]), None, capped)
        assert c == _expected(ev), ev
        seen |= {name for name, counter in c.items() if counter}
    assert seen == {f.name for f in TABLE if f.population is not None}


@pytest.mark.parametrize("limit", [2, 64])
def test_stream_summary_and_replay_summary_agree_with_the_table(limit: int) -> None:
    """The summaries (WindowStats.add_many; summarize_frame, from a frame and from events) count alike."""
    size = 60.0
    variants = ("control", "canary-v2")
    part = summarize(list(EVENTS), size, variants)
    assert part is not None
    mine = summarize_frame(FRAME, size, variants)
    assert [w.wid for w in part.windows] == [w.wid for w in mine.windows]
    for a, b in zip(part.windows, mine.windows, strict=True):
        assert {f: dict(c) for f, c in a.stats.c.items()} == {f: dict(c) for f, c in b.stats.c.items()}
        assert sorted(a.stats.keys) == sorted(b.stats.keys)
        assert {v: sorted(k) for v, k in a.sticky.items()} == {v: sorted(k) for v, k in b.sticky.items()}
    assert part.labels[population.ROWS] == list(dict.fromkeys(map(population.label_row, EVENTS)))
    assert mine.labels[population.ROWS] == part.labels[population.ROWS]
    # raw summaries, relabeled under caps, equal the capped window built event by event
    for summary in (part, mine):
        caps = LabelCaps(limit, {"variant": list(variants)})
        caps.admit_values(summary.labels)
        merged = WindowStats.new()
        for w in summary.windows:
            merged.merge_relabeled(w.stats, caps)
        direct_caps = LabelCaps(limit, {"variant": list(variants)})
        direct_caps.admit_all(EVENTS)
        direct = WindowStats.new()
        direct.add_many(EVENTS, direct_caps)
        assert merged.snapshot() == direct.snapshot()
        assert merged.latency.keys() == direct.latency.keys()
    every: Counter[str] = Counter()
    for ev in EVENTS:
        for name, counter in _expected(ev).items():
            every[name] += counter.total()
    assert {f: c.total() for f, c in direct.c.items() if c} == {f: n for f, n in every.items() if n}
    assert FAMILY["lam"].kinds == ("variant", "question", None, None, None)
