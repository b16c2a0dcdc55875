"""Hostile input: nothing raises, every bad message is one counted dead letter, verdicts hold.

A generated healthy stream is the good traffic.  Hostile messages (random
bytes, strict prefixes and byte mutations of a valid event, documents over
limits.max_event_bytes, deep nesting, NaN / Infinity, numbers beyond any
range, a wrong type in every field, invalid UTF-8, event times in year 1, 1969,
1970 and 9999) are interleaved after the first good event (the first event
starts the clock).  They are sent as a third variant, so that no gate of the
control or canary may legitimately count them (a malformed canary message
*should* fail `schema_violations`).

For every hostile message: exactly one dead letter, with a reason in the
spec's set and a detail; the engine's dead counters count them; and every
verdict over the good events (decision, and each gate row's status, observed,
threshold, hard stop, canary_n and control_n) is what it is without them.
Checked through `Engine.feed`, through the decode-side summaries
(`summarize` + `Engine.feed_partial`) under hypothesis, and through the real
Bytewax dataflow.  Events far in the future or past must not open windows or
grow the state.
"""

from __future__ import annotations

import functools
import json
import math
import pickle
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from bytewax.testing import TestingSink, TestingSource, run_main
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline import config as config_mod
from pipeline import scenarios
from pipeline.aggregate.partial import summarize
from pipeline.decode import codec
from pipeline.engine import Engine, Output, Report
from pipeline.feed import ChunkEvents, Feeder, decode_chunk
from pipeline.flow import Sinks, build_flow
from pipeline.io.chunk import Chunk
from pipeline.model import DeadLetter, DecodeError, Event

SCENARIO = "healthy"
SEED = 5
MINUTES = 5
HOSTILE_VARIANT = "fuzz-variant"  # neither the control nor the canary
REASONS = {"invalid_json", "schema", "too_large", "future", "late"}

CFG = config_mod.parse(scenarios.scenario_config(SCENARIO))
MAX_BYTES = CFG.limits.max_event_bytes
SIZE = CFG.windows.size_s

FUZZ = settings(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@functools.cache
def _good() -> tuple[bytes, ...]:
    return tuple(scenarios.generate(SCENARIO, SEED, MINUTES))


@functools.cache
def _span() -> tuple[float, float]:
    """Event time of the first good event and the largest of all of them."""
    times = [e.ts for e in codec.decode_batch(list(_good())) if isinstance(e, Event)]
    return times[0], max(times)


@functools.cache
def _template_text() -> str:
    good = [json.loads(line) for line in _good()]
    probe = next(d for d in good if "probe" in d)
    doc = {**probe, **next(d for d in good if "cache" in d and "probe" not in d)}
    doc.update(variant=HOSTILE_VARIANT, request_id="fuzz-1", x_warm=False, failure_phase="body",
               egress={"webhook": "https://hook.example", "tries": 2, "dedupe_key": "d-1"},
               probe=probe["probe"], ts=probe["ts"])
    return json.dumps(doc)


def _template(**changes: Any) -> dict[str, Any]:
    """A valid event with every optional block (probe, cache, egress, ...), sent by the hostile variant."""
    doc: dict[str, Any] = json.loads(_template_text())
    doc.update(changes)
    return doc


def _dump(doc: Any) -> bytes:
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()


TEMPLATE = _dump(_template())


def _rfc3339(epoch_s: float, z: bool = False) -> str:
    text = datetime.fromtimestamp(epoch_s, tz=UTC).isoformat()
    return text.replace("+00:00", "Z") if z else text


# -- hostile messages --------------------------------------------------------------------------
# Every field of the template, with values of a type the schema refuses there.
_STRING = [None, 1, 2.5, True, [], {}]
_NUMBER = [None, "1", True, [], {}]
_INTEGER = [None, "200", True, 1.5, [], {}]
_BOOL = [None, 0, 1, "true", [], {}]
_BLOCK = [None, 1, "x", [], True]
WRONG_TYPES: dict[str, list[Any]] = {
    "ts": [None, 1756274400, 1.5, True, [], {}, "yesterday", "2025-08-27 06:00:00"],
    "route": [*_STRING, ""], "variant": [*_STRING, ""], "sticky": [*_STRING, ""],
    "region": [*_STRING, ""], "edge_pop": _STRING, "x_exp": _STRING, "request_id": _STRING,
    "cold_start": _BOOL, "x_warm": _BOOL,
    "latency_ms": _BLOCK, "latency_ms.tffb": [*_NUMBER, -1], "latency_ms.tusable": [*_NUMBER, -1],
    "latency_ms.tfinal": [*_NUMBER, -1],
    "status": [*_INTEGER, 99, 600, -200], "failure_phase": [*_STRING, "trailers"],
    "retrieval": _BLOCK, "retrieval.k": _INTEGER, "retrieval.metric": _STRING,
    "retrieval.analyzer": _STRING, "retrieval.index_hash": _STRING,
    "retrieval.delta_s_q_r": [*_NUMBER, 1.5, -0.1], "retrieval.coverage": [*_NUMBER, 2, -1],
    "retrieval.lambda_state": [*_STRING, "sideways"],
    "probe": _BLOCK, "probe.question_id": _STRING, "probe.topic": _STRING,
    "probe.paraphrase": _INTEGER, "probe.seed": _INTEGER,
    "cache": _BLOCK, "cache.prefix": _STRING, "cache.hit": _BOOL,
    "egress": _BLOCK, "egress.webhook": _STRING, "egress.tries": _INTEGER, "egress.dedupe_key": _STRING,
}
NUMERIC_FIELDS = ["latency_ms.tffb", "latency_ms.tusable", "latency_ms.tfinal", "status", "retrieval.k",
                  "retrieval.delta_s_q_r", "retrieval.coverage", "probe.paraphrase", "probe.seed",
                  "egress.tries"]
UNBOUNDED_INTEGERS = {"retrieval.k", "egress.tries"}  # no schema bounds (probe's are signed 64-bit)
# Literals that are not JSON (NaN, Infinity) or beyond every range (1e400, 10**400).
BAD_NUMBERS = [b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e400", b"1" + b"0" * 400,
               b"-1" + b"0" * 400, b"1" + b"0" * 5000]
INVALID_UTF8 = [b"\xff", b"\xfe\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xc0\xaf", b"\xf4\x90\x80\x80", b"\x80"]


def _with(path: str, value: Any) -> dict[str, Any]:
    doc = _template()
    *parents, leaf = path.split(".")
    node = doc
    for p in parents:
        node = node[p]
    node[leaf] = value
    return doc


def _with_raw_number(path: str, literal: bytes) -> bytes:
    marker = 123456.789012
    raw = _dump(_with(path, marker))
    assert raw.count(b"123456.789012") == 1
    return raw.replace(b"123456.789012", literal)


def _far_times() -> list[str]:
    first, last = _span()
    return [
        "1970-01-01T00:00:00Z", "1969-12-31T23:59:59Z", "0001-01-01T00:00:00Z",
        "0001-01-01T00:00:00+23:59", "9999-12-31T23:59:59Z", "9999-12-31T23:59:59-23:59",
        _rfc3339(first - 86_400), _rfc3339(last + 86_400, z=True), _rfc3339(-1.5), _rfc3339(-86_400 * 365),
    ]


@functools.cache
def _oversized() -> tuple[bytes, ...]:
    """Documents over limits.max_event_bytes: padded event, deep nesting, garbage, a huge number."""
    pad = MAX_BYTES + 1 - len(TEMPLATE)
    return (
        _dump(_template(padding="x" * pad)),
        b"[" * (MAX_BYTES + 1),
        b'{"variant":"' + HOSTILE_VARIANT.encode() + b'","a":' * (MAX_BYTES // 5 + 1),
        bytes(range(256)) * (MAX_BYTES // 256 + 1),
        _with_raw_number("status", b"1" * (MAX_BYTES + 1)),
    )


def _random_bytes() -> st.SearchStrategy[bytes]:
    return st.binary(min_size=0, max_size=400)


@st.composite
def _prefix(draw: st.DrawFn) -> bytes:
    return TEMPLATE[: draw(st.integers(0, len(TEMPLATE) - 1))]


@st.composite
def _mutated(draw: st.DrawFn) -> bytes:
    raw = bytearray(TEMPLATE)
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, len(raw) - 1))
        op = draw(st.sampled_from(["set", "delete", "insert"]))
        byte = draw(st.integers(0, 255))
        if op == "set":
            raw[at] = byte
        elif op == "delete":
            del raw[at]
        else:
            raw.insert(at, byte)
    return bytes(raw)


@st.composite
def _wrong_type(draw: st.DrawFn) -> bytes:
    path = draw(st.sampled_from(sorted(WRONG_TYPES)))
    return _dump(_with(path, draw(st.sampled_from(WRONG_TYPES[path]))))


@st.composite
def _bad_number(draw: st.DrawFn) -> bytes:
    return _with_raw_number(draw(st.sampled_from(NUMERIC_FIELDS)), draw(st.sampled_from(BAD_NUMBERS)))


@st.composite
def _bad_utf8(draw: st.DrawFn) -> bytes:
    bad = draw(st.sampled_from(INVALID_UTF8))
    where = draw(st.sampled_from([b'"route":"', b'"sticky":"', b'"region":"', b'"question_id":"', b'{']))
    return TEMPLATE.replace(where, where + bad, 1)


@st.composite
def _far_time(draw: st.DrawFn) -> bytes:
    """A valid event far outside the stream's time (future or late), or a broken one there."""
    first, last = _span()
    ts = draw(st.one_of(
        st.sampled_from(_far_times()),
        st.floats(-62_135_596_800, first - 3600).map(_rfc3339),
        st.floats(last + 3600, 253_402_300_799).map(_rfc3339),
    ))
    broken = draw(st.booleans())
    return _dump(_template(ts=ts, **({"status": "teapot"} if broken else {})))


def _deep() -> st.SearchStrategy[bytes]:
    deep_field = TEMPLATE[:-1] + b',"extra":' + b"[" * 5000 + b"]" * 5000 + b"}"
    return st.sampled_from([b"[" * 100_000, b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 100_000,
                            b'{"ts":' + b"[" * 100_000, deep_field,
                            b'{"variant":"' + HOSTILE_VARIANT.encode() + b'","x":' + b"{" * 20_000])


HOSTILE = st.one_of(
    _random_bytes(), _prefix(), _mutated(), _wrong_type(), _bad_number(), _bad_utf8(), _far_time(),
    _deep(), st.sampled_from(_oversized()),
    st.sampled_from([b"", b" ", b"\n", b"null", b"[]", b"{}", b'""', b"0", b"\x00" * 64,
                     b'{"variant":"' + HOSTILE_VARIANT.encode() + b'"}', TEMPLATE + TEMPLATE,
                     TEMPLATE + b"garbage", b"\xef\xbb\xbf" + TEMPLATE]),
)


def _expected_reason(raw: bytes) -> str | None:
    """The dead-letter reason `raw` must get when sent after the first good event, or None when
    it may legitimately be accepted (a mutation that left a valid event in the stream's time)."""
    first, last = _span()
    item = codec.decode(raw, MAX_BYTES)
    if isinstance(item, DecodeError):
        if item.variant in (CFG.control, CFG.canary):
            return None  # a message attributed to the canary rightly fails schema_violations
        return str(item.reason)
    if item.variant in (CFG.control, CFG.canary):
        return None
    if item.ts > last + CFG.windows.max_future_s:
        return "future"
    if (math.floor(item.ts / SIZE) + 1) * SIZE <= first - CFG.windows.allowed_lateness_s:
        return "late"  # its window closed before the first good event was even judged
    return None


# -- running the engine -------------------------------------------------------------------------
Runner = Callable[[list[bytes], int], tuple[list[Output], Engine]]


def _run_feed(lines: list[bytes], chunk: int) -> tuple[list[Output], Engine]:
    engine = Engine(CFG)
    out: list[Output] = []
    for i in range(0, len(lines), chunk):
        out += engine.feed(codec.decode_batch(lines[i : i + chunk], MAX_BYTES))
    out += engine.close()
    return out, engine


def _run_partial(lines: list[bytes], chunk: int) -> tuple[list[Output], Engine]:
    """The dataflow's path: each chunk decoded into a frame, cut and summarised, fed by `Feeder`."""
    engine = Engine(CFG)
    feeder = Feeder(engine)
    out: list[Output] = []
    for i in range(0, len(lines), chunk):
        part = lines[i : i + chunk]
        pieces = decode_chunk(part, MAX_BYTES, SIZE, (CFG.control, CFG.canary))
        out += feeder.feed(pieces, ChunkEvents(part, str, MAX_BYTES), "0")
    out += engine.close()
    return out, engine


def _verdicts(out: list[Any]) -> list[tuple[Any, ...]]:
    """What must not change: decision and every gate row's numbers, per window."""
    return [(r.verdict.window_end, str(r.verdict.decision),
             tuple((g.gate, g.region, str(g.status), g.observed, g.threshold, g.hard_stop,
                    g.canary_n, g.control_n) for g in r.verdict.gates))
            for r in out if isinstance(r, Report)]


def _first_window_end() -> float:
    return (math.floor(_span()[0] / SIZE) + 1) * SIZE


@functools.cache
def _baseline(runner: str, chunk: int) -> tuple[tuple[Any, ...], ...]:
    out, engine = RUNNERS[runner](list(_good()), chunk)
    assert len([o for o in out if isinstance(o, Report)]) == MINUTES
    assert not [o for o in out if isinstance(o, DeadLetter)], "the good stream has no dead letters"
    assert not [k for k in engine.totals if k.startswith("dead_")]
    return tuple(_verdicts(out))


RUNNERS: dict[str, Runner] = {"feed": _run_feed, "partial": _run_partial}


def _interleave(hostile: list[bytes], slots: list[int]) -> list[bytes]:
    """The good stream with hostile[i] inserted after good event slots[i] (never before the first,
    which starts the clock)."""
    good = list(_good())
    after: dict[int, list[bytes]] = {}
    for raw, slot in zip(hostile, slots, strict=True):
        after.setdefault(slot, []).append(raw)
    lines: list[bytes] = []
    for i, line in enumerate(good):
        lines.append(line)
        lines += after.get(i, [])
    return lines


def _check_dead_letters(out: list[Output], engine: Engine, hostile: list[bytes], reasons: list[str]) -> None:
    dead = [o for o in out if isinstance(o, DeadLetter)]
    assert Counter(d.raw for d in dead) == Counter(hostile), "one dead letter per hostile message"
    for d in dead:
        assert str(d.reason) in REASONS
        assert d.detail.strip(), d
    got = Counter(str(d.reason) for d in dead)
    assert got == Counter(reasons), (got, Counter(reasons))
    counted = {k[len("dead_"):]: n for k, n in engine.totals.items() if k.startswith("dead_") and n}
    assert counted == dict(got)
    last = [o for o in out if isinstance(o, Report)][-1]  # what the metrics read
    assert {k[len("dead_"):]: n for k, n in last.totals.items() if k.startswith("dead_") and n} == dict(got)


# -- tests ---------------------------------------------------------------------------------------
def test_hostile_catalogue_decodes_to_dead_letters_without_raising() -> None:
    """Each fixed hostile family decodes (alone) to the reason it must get, with a detail."""
    too_large = _oversized()
    for raw in too_large:
        item = codec.decode(raw, MAX_BYTES)
        assert isinstance(item, DecodeError) and str(item.reason) == "too_large" and item.detail
    for raw in [b"[" * 100_000, b'{"a":' * 100_000, b"[" * 100_000 + b"]" * 100_000,
                TEMPLATE[:-1] + b',"extra":' + b"[" * 5000 + b"]" * 5000 + b"}"]:
        item = codec.decode(raw, MAX_BYTES)
        assert isinstance(item, DecodeError) and str(item.reason) == "invalid_json", item
        assert "nested too deeply" in item.detail
    for field in NUMERIC_FIELDS:
        for literal in BAD_NUMBERS:
            item = codec.decode(_with_raw_number(field, literal), MAX_BYTES)
            if field in UNBOUNDED_INTEGERS and literal.lstrip(b"-").isdigit() and len(literal) <= 4301:
                # the schema puts no bound on these integers: a valid event (Python ints are unbounded)
                assert isinstance(item, Event), (field, literal[:20], item)
                continue
            assert isinstance(item, DecodeError), (field, literal[:20])
            want = "invalid_json" if literal.lstrip(b"-")[:1] in (b"N", b"I") else "schema"
            assert str(item.reason) == want, (field, literal[:20], item.detail)
            assert item.variant == HOSTILE_VARIANT
    # a number out of range does not hide a syntax error after it
    item = codec.decode(b'{"status":1e400, ]', MAX_BYTES)
    assert isinstance(item, DecodeError) and str(item.reason) == "invalid_json"
    for bad in INVALID_UTF8:
        item = codec.decode(TEMPLATE.replace(b'"sticky":"', b'"sticky":"' + bad, 1), MAX_BYTES)
        assert isinstance(item, DecodeError) and str(item.reason) == "invalid_json", (bad, item)
        assert item.variant == HOSTILE_VARIANT  # still attributed


@pytest.mark.parametrize("path", sorted(WRONG_TYPES))
def test_a_wrong_type_in_every_field_is_a_schema_dead_letter(path: str) -> None:
    for value in WRONG_TYPES[path]:
        item = codec.decode(_dump(_with(path, value)), MAX_BYTES)
        assert isinstance(item, DecodeError), (path, value)
        assert str(item.reason) == "schema", (path, value, item.detail)
        assert f"`$.{path}`" in item.detail, (path, value, item.detail)  # names the failing field
        if path != "variant":
            assert item.variant == HOSTILE_VARIANT


def test_far_times_are_valid_events_far_outside_the_stream() -> None:
    """The far timestamps decode (the codec does not refuse them); the clock must deal with them."""
    for ts in _far_times():
        item = codec.decode(_dump(_template(ts=ts)), MAX_BYTES)
        assert isinstance(item, Event), (ts, item)
        assert _expected_reason(item.raw) in ("future", "late"), ts


@settings(FUZZ, max_examples=60)
@given(hostile=st.lists(HOSTILE, min_size=1, max_size=12), data=st.data(),
       runner=st.sampled_from(sorted(RUNNERS)), chunk=st.sampled_from([13, 97, 500, 5000]))
def test_hostile_messages_are_dead_letters_and_verdicts_do_not_move(
        hostile: list[bytes], data: st.DataObject, runner: str, chunk: int) -> None:
    kept: list[bytes] = []
    reasons: list[str] = []
    for raw in hostile:
        reason = _expected_reason(raw)
        if reason is not None:
            kept.append(raw)
            reasons.append(reason)
    n_good = len(_good())
    # slot i: after good event i, so never before the first one (it starts the clock)
    slots = data.draw(st.lists(st.integers(0, n_good - 1), min_size=len(kept), max_size=len(kept)))
    out, engine = RUNNERS[runner](_interleave(kept, slots), chunk)
    _check_dead_letters(out, engine, kept, reasons)
    assert _verdicts(out) == list(_baseline(runner, chunk))


def _state(engine: Engine) -> tuple[int, int | None, int, int]:
    return len(engine.open), engine.next_close, len(engine.history), len(pickle.dumps(engine))


STATE_TOLERANCE = 512  # bytes: the hostile variant's name in the caps and its dead counters


@settings(FUZZ, max_examples=40)
@given(times=st.lists(st.one_of(
           st.sampled_from(_far_times()),
           st.floats(-62_135_596_800, 1_000_000_000).map(_rfc3339),
           st.floats(1e11, 253_402_300_799).map(_rfc3339)), min_size=1, max_size=60),
       data=st.data(), stop=st.sampled_from([0.5, 0.75, 1.0]), runner=st.sampled_from(sorted(RUNNERS)))
def test_far_future_and_past_events_open_no_window_and_grow_no_state(
        times: list[str], data: st.DataObject, stop: float, runner: str) -> None:
    good = list(_good())
    cut = int(len(good) * stop)
    far = [_dump(_template(ts=ts, request_id=f"far-{i}")) for i, ts in enumerate(times)]
    slots = data.draw(st.lists(st.integers(0, cut - 1), min_size=len(far), max_size=len(far)))

    def fed(lines: list[bytes]) -> tuple[Engine, list[Output]]:
        engine = Engine(CFG)
        out: list[Output] = []
        for i in range(0, len(lines), 400):
            items = codec.decode_batch(lines[i : i + 400], MAX_BYTES)
            part = summarize(items, SIZE, (CFG.control, CFG.canary)) if runner == "partial" else None
            out += (engine.feed(items) if part is None
                    else engine.feed_partial(part, "0", lambda items=items: items))
        return engine, out

    plain, plain_out = fed(good[:cut])
    after: dict[int, list[bytes]] = {}
    for raw, slot in zip(far, slots, strict=True):
        after.setdefault(slot, []).append(raw)
    lines = [x for i, line in enumerate(good[:cut]) for x in (line, *after.get(i, []))]
    hostile, hostile_out = fed(lines)
    dead = [o for o in hostile_out if isinstance(o, DeadLetter)]
    assert len(dead) == len(far) and {str(d.reason) for d in dead} <= {"future", "late"}
    assert _verdicts(hostile_out) == _verdicts(plain_out)
    assert hostile.max_seen == plain.max_seen and hostile.watermark == plain.watermark
    assert sorted(hostile.open) == sorted(plain.open)
    assert hostile.next_close == plain.next_close and len(hostile.history) == len(plain.history)
    grown = _state(hostile)[3] - _state(plain)[3]
    assert 0 <= grown <= STATE_TOLERANCE, grown
    # and the state does not grow with the number of far events: one more batch adds nothing new
    again = [_dump(_template(ts=ts, request_id=f"again-{i}")) for i, ts in enumerate(times)]
    before = _state(hostile)
    hostile.feed(codec.decode_batch(again, MAX_BYTES))
    assert _state(hostile)[:3] == before[:3]
    assert _state(hostile)[3] - before[3] <= 64, "more far events, same state (only counts change)"


# -- the real dataflow -------------------------------------------------------------------------
def _flow(lines: list[bytes], chunk: int = 300) -> tuple[list[Report], list[DeadLetter]]:
    chunks = [Chunk("0", lines[i : i + chunk], "hostile", i + 1, last=i + chunk >= len(lines))
              for i in range(0, len(lines), chunk)]
    verdicts: list[Any] = []
    dead: list[Any] = []
    run_main(build_flow(CFG, TestingSource(chunks, batch_size=3),
                        Sinks([TestingSink(verdicts)], [TestingSink(dead)])))
    return [v for _, v in verdicts], [d for _, d in dead]


def test_dataflow_dead_letters_every_hostile_family_and_judges_alike() -> None:
    hostile = [
        b"\x00\xff garbage", TEMPLATE[:57], TEMPLATE[:-1], TEMPLATE.replace(b'"', b"'", 3),
        *_oversized()[:2], b"[" * 100_000, b'{"a":' * 100_000,
        TEMPLATE[:-1] + b',"extra":' + b"[" * 5000 + b"]" * 5000 + b"}",
        _with_raw_number("latency_ms.tfinal", b"NaN"), _with_raw_number("status", b"Infinity"),
        _with_raw_number("latency_ms.tffb", b"-Infinity"), _with_raw_number("retrieval.coverage", b"1e400"),
        _with_raw_number("probe.seed", b"1" + b"0" * 5000), _with_raw_number("status", b"1" + b"0" * 400),
        *(_dump(_with(path, values[0])) for path, values in sorted(WRONG_TYPES.items())),
        TEMPLATE.replace(b'"sticky":"', b'"sticky":"\xed\xa0\x80', 1), b"\xff" + TEMPLATE,
        *(_dump(_template(ts=ts, request_id=f"far-{i}")) for i, ts in enumerate(_far_times())),
        _dump(_template(ts="9999-12-31T23:59:59Z", status="teapot")),
        _dump(_template(ts="1970-01-01T00:00:00Z", status="teapot")),
    ]
    reasons = [_expected_reason(raw) for raw in hostile]
    assert None not in reasons
    good = list(_good())
    step = len(good) // (len(hostile) + 1)
    lines = _interleave(hostile, [1 + i * step for i in range(len(hostile))])
    base, base_dead = _flow(good)
    got, dead = _flow(lines)
    assert base_dead == [] and len(base) == MINUTES  # one verdict per minute of good events
    assert Counter(d.raw for d in dead) == Counter(hostile)
    assert Counter(str(d.reason) for d in dead) == Counter(reasons)
    assert {str(d.reason) for d in dead} == REASONS  # every reason shows up
    assert all(d.detail and d.source and d.source.startswith("hostile:") for d in dead)
    for d in dead:  # the source names the line the message was on
        assert lines[int(d.source.rsplit(":", 1)[1]) - 1] == d.raw
    assert _verdicts(got) == _verdicts(base)
    assert got[-1].totals["events_in"] - base[-1].totals["events_in"] == reasons.count("future") + \
        reasons.count("late")  # far events were decoded (counted in), then dead-lettered


# -- dead letters stamped long ago open no window (Engine._dead clamps to next_close) ---------------


def test_a_dead_letter_opens_no_window_before_the_first_events() -> None:
    """SPEC section 4: verdicts for every window from the first event's; a dead letter is no event."""
    good = list(_good())
    assert _span()[0] % SIZE < CFG.windows.allowed_lateness_s  # the watermark starts in the window before
    late = _dump(_template(ts="1970-01-01T00:00:00Z"))
    broken = _dump(_template(ts="1970-01-01T00:00:00Z", status="teapot"))  # its time is still read
    out, _ = _run_feed([good[0], late, broken, *good[1:]], 500)
    assert [str(d.reason) for d in out if isinstance(d, DeadLetter)] == ["late", "schema"]
    ends = [v[0] for v in _verdicts(out)]
    assert ends[0] == _first_window_end(), "a verdict for a window before the first event's"


def test_an_old_dead_letter_does_not_open_a_window_while_a_partition_is_silent() -> None:
    """Two partitions, one silent (watermark not yet known): a broken message stamped 1970 must not
    open window 0, or the first watermark would close ~29 million windows (one verdict each)."""
    engine = Engine(CFG, ("0", "1"))
    engine.feed(codec.decode_batch(list(_good())[:100]), "0")
    broken = codec.decode(_dump(_template(ts="1970-01-01T00:00:00Z", status="teapot")), MAX_BYTES)
    assert isinstance(broken, DecodeError) and broken.ts == 0.0
    out = engine.feed([broken], "0")
    assert [str(d.reason) for d in out if isinstance(d, DeadLetter)] == ["schema"]
    first = math.floor(_span()[0] / SIZE)
    assert min(engine.open) >= first and engine.next_close == first, (min(engine.open), engine.next_close)
