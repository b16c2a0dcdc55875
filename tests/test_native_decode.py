"""The native micro-batch decoder (native/, `decode.batch.decode_frame_native`) against the reference.

`decode_frame_reference` (codec.decode per message, then frame.from_events)
is the definition; the native decoder must return exactly its frame (dtypes
and float bits included) and its dead letters (index, reason, detail,
variant, ts, raw) for any batch: realistic lines from the scenarios, the
schema tests' valid and mutated events, and those lines edited as text
(numbers the codec reads its own way, escapes, repeated keys, whitespace,
deep nesting, bad UTF-8, truncation, over max_bytes) and random bytes.

These tests need the extension built (`make venv`); without it they fail:
CI must run the native path.
"""

from __future__ import annotations

import json
import random
import re
from itertools import islice
from typing import Any

import canary_gate_native  # the extension itself: an ImportError here means `make venv` was not run
import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_schema_equivalence import any_timestamps, mutated_events, valid_events

from pipeline import frame as frames
from pipeline import scenarios
from pipeline.decode import batch, codec, rules, timestamps
from pipeline.model import LAMBDA_STATES, DecodeError

PROPERTY = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Realistic lines, good and broken: a few minutes of scenarios whose streams hold every block,
# aliases, probes, pings, 5xx classes, schema violations and truncated JSON.
_REAL_SCENARIOS = ("healthy", "schema_violations", "lambda_flips", "new_5xx_class", "cache_prefix_collision")
REAL: list[bytes] = [line for name in _REAL_SCENARIOS for line in islice(scenarios.generate(name, 7, 2), 400)]

DeadKey = tuple[int, str, str, str | None, float | None, bytes]


def dead_keys(dead: list[tuple[int, DecodeError]]) -> list[DeadKey]:
    return [(i, str(e.reason), e.detail, e.variant, e.ts, e.raw) for i, e in dead]


def float_bits(frame: pl.DataFrame) -> dict[str, list[int]]:
    """Each Float64 column's values as their bits (null as None): -0.0 is not 0.0 here."""
    out = {}
    for name, dtype in frames.SCHEMA.items():
        if dtype == pl.Float64:
            column = frame.get_column(name)
            bits = column.to_numpy().astype(np.float64).view(np.uint64).tolist()
            nulls = column.is_null().to_list()
            out[name] = [None if null else b for b, null in zip(bits, nulls, strict=True)]
    return out


def assert_same(lines: list[bytes], max_bytes: int = 1_048_576) -> tuple[pl.DataFrame, list[DeadKey]]:
    """The native decoder's answer is the reference's: frame, dtypes, float bits and dead letters."""
    want, want_dead = batch.decode_frame_reference(lines, max_bytes)
    got, got_dead = batch.decode_frame_native(lines, max_bytes)
    assert dict(got.schema) == frames.SCHEMA
    assert dict(want.schema) == frames.SCHEMA
    assert got.equals(want), (got, want)
    assert float_bits(got) == float_bits(want)
    assert dead_keys(got_dead) == dead_keys(want_dead)
    return got, dead_keys(got_dead)


def encode(doc: Any, rnd: random.Random) -> bytes:
    """JSON text of a document in one of the ways producers write it."""
    ascii_only = rnd.random() < 0.3  # escapes every non-ASCII character, keys (ΔS_q_r, λ_state) too
    separators = rnd.choice([(",", ":"), (", ", ": "), (" ,  ", " :\t")])
    return json.dumps(doc, ensure_ascii=ascii_only, separators=separators).encode("utf-8")


# --- text edits ------------------------------------------------------------------

_NUMBER = re.compile(rb"(?<![\w.\"])-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?")
ODD_NUMBERS = [
    b"1e400", b"-1e400", b"1" + b"0" * 400, b"-0", b"-0.0", b"0.0", b"2.0", b"200.0", b"1e2", b"1E+2",
    b"5E-1",
    b"100000000000000000000", b"9007199254740993", b"9007199254740993.0", b"-9223372036854775808",
    b"9223372036854775807", b"9223372036854775808", b"-9223372036854775809", b"18446744073709551616",
    b"5e-324", b"2.2250738585072014e-308", b"2.225073858507201e-308", b"1.7976931348623157e308",
    b"1.7976931348623159e308", b"0.1e-400", b"123456789012345678901234567890e-20", b"0.30000000000000004",
    b"1e22", b"1e23", b"9e15", b"0.000001", b"1e-7", b"1.000000000000000000001", b"0e9999",
    b"00", b"01", b"1.", b".5", b"+1", b"0x10", b"1e", b"-", b"NaN", b"Infinity", b"-Infinity", b"1_000",
    b"100", b"599", b"99", b"600", b"599.0", b"599.5", b"1", b"0", b"0.5", b"1.0000001", b"-1",
]
KNOWN_PAIRS = [
    b'"status":500', b'"variant":"x"', b'"ts":"2025-08-27T06:00:00Z"', b'"retrieval":{}', b'"probe":null',
    b'"cache":{"prefix":"p","hit":true}', b'"latency_ms":{"tffb":1,"tusable":2,"tfinal":3}',
    b'"x_warm":true', b'"x_warm":null', b'"request_id":"dup"', b'"route":""', b'"edge_pop":5',
]
INSERTS = [
    b" ", b"\t", b"\n", b"\r", b"\x0b", b"\x00", b"\x01", b"\x7f", b"\xff", b"\xc3", b"\xed\xa0\x80",
    b"\xf0\x9f\x98\x80", "é".encode(), b"\\", b'"', b",", b":", b"{", b"}", b"[", b"]", b"\\u0000",
    b"\\ud800",
    b"\\udc00", b"\\ud83d\\ude00", b"\\/", b"\\n", b"\\x41",
]


def _at(rnd: random.Random, raw: bytes) -> int:
    return rnd.randrange(len(raw) + 1)


def edit(raw: bytes, rnd: random.Random) -> bytes:
    """One text-level edit of a line: what a producer, a proxy or a disk does to JSON."""
    op = rnd.choice(["number", "number", "insert", "duplicate", "deep", "escape", "truncate", "wrap",
                     "unknown_escape_key", "cut_block"])
    if op == "number":
        found = list(_NUMBER.finditer(raw))
        if found:
            m = rnd.choice(found)
            return raw[:m.start()] + rnd.choice(ODD_NUMBERS) + raw[m.end():]
        return raw
    if op == "insert":
        at = _at(rnd, raw)
        return raw[:at] + rnd.choice(INSERTS) + raw[at:]
    if op == "duplicate":
        at = raw.find(b"{")
        if at < 0:
            return raw
        where = rnd.choice([at + 1, raw.rfind(b"}")])
        pair = rnd.choice(KNOWN_PAIRS)
        return raw[:where] + (pair + b"," if where == at + 1 else b"," + pair) + raw[where:]
    if op == "deep":
        depth = rnd.choice([1, 2, 31, 32, 33, 64, 200, 1500])
        nested = b"[" * depth + b"1" + b"]" * depth
        if rnd.random() < 0.5:
            nested = b'{"a":' * depth + b"null" + b"}" * depth
        at = raw.find(b"{")
        return raw if at < 0 else raw[:at + 1] + b'"deep":' + nested + b"," + raw[at + 1:]
    if op == "escape":  # a plain character written as \\uXXXX, maybe inside a key
        letters = [i for i, c in enumerate(raw) if 0x61 <= c <= 0x7a]
        if not letters:
            return raw
        i = rnd.choice(letters)
        return raw[:i] + b"\\u%04x" % raw[i] + raw[i + 1:]
    if op == "truncate":
        return raw[:_at(rnd, raw)]
    if op == "wrap":
        before = rnd.choice([b" ", b"\t", b"\r\n", b"\n", b""])
        return before + raw + rnd.choice([b" ", b"\n", b"x", b"{}", b""])
    if op == "unknown_escape_key":
        at = raw.find(b"{")
        return raw if at < 0 else raw[:at + 1] + b'"\\u00e9t\\u00e9":"\\u00e9",' + raw[at + 1:]
    # cut_block: a block replaced by another JSON value
    for block in (b'"latency_ms":', b'"retrieval":', b'"probe":', b'"cache":', b'"egress":'):
        at = raw.find(block)
        if at >= 0 and rnd.random() < 0.5:
            start = at + len(block)
            end = raw.find(b"}", start)
            if end > 0:
                return raw[:start] + rnd.choice([b"null", b"[]", b"1", b'"x"', b"{}"]) + raw[end + 1:]
    return raw


@st.composite
def lines(draw: st.DrawFn) -> bytes:
    """One message: realistic, a schema test's event, edited as text, or random bytes."""
    rnd = random.Random(draw(st.integers(min_value=0, max_value=2**32)))
    source = draw(st.sampled_from(["real", "real", "valid", "mutated", "bytes", "blank"]))
    if source == "real":
        raw = draw(st.sampled_from(REAL))
    elif source == "valid":
        raw = encode(draw(valid_events()), rnd)
    elif source == "mutated":
        raw = encode(draw(mutated_events()), rnd)
    elif source == "bytes":
        return draw(st.binary(max_size=64))
    else:
        return draw(st.sampled_from([b"", b" ", b"\t", b"{}", b"null", b"[]", b"\xef\xbb\xbf{}"]))
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        raw = edit(raw, rnd)
    return raw


max_bytes = st.one_of(st.just(1_048_576), st.sampled_from([0, 1, 200, 400, 600]))


# --- the extension --------------------------------------------------------------------


def test_the_native_decoder_is_built_and_chosen(monkeypatch: pytest.MonkeyPatch) -> None:
    """CI must run the native path: without the extension this fails (run `make venv`)."""
    assert batch.native is canary_gate_native
    assert batch._decoder is batch.decode_frame_native, "CANARY_GATE_DECODER must be unset for the tests"
    monkeypatch.delenv(batch.DECODER_ENV, raising=False)
    assert batch._chosen() is batch.decode_frame_native


def test_the_decoder_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(batch.DECODER_ENV, "reference")
    assert batch._chosen() is batch.decode_frame_reference
    monkeypatch.setenv(batch.DECODER_ENV, "fast")
    with pytest.raises(ValueError, match="CANARY_GATE_DECODER must be one of"):
        batch._chosen()
    # Without the extension: auto falls back to the reference and says so; native refuses to run.
    monkeypatch.setattr(batch, "native", None)
    monkeypatch.setenv(batch.DECODER_ENV, "auto")
    with pytest.warns(RuntimeWarning, match="canary_gate_native. is not built"):
        assert batch._chosen() is batch.decode_frame_reference
    monkeypatch.setenv(batch.DECODER_ENV, "native")
    assert batch._chosen() is batch.decode_frame_native
    with pytest.raises(RuntimeError, match="make venv"):
        batch.decode_frame_native(REAL[:1])


def test_native_constants_are_the_rules() -> None:
    lam, phases, status = canary_gate_native.constants()
    assert dict(lam) == dict(rules.LAMBDA_CODES)
    assert [LAMBDA_STATES[code] for word, code in lam if word in LAMBDA_STATES] == list(LAMBDA_STATES)
    assert tuple(phases) == rules.TOP["failure_phase"].values
    assert tuple(status) == rules.STATUS_RANGE
    # The native reader takes signed 64-bit integers only: the bounds it does not check are those.
    for path, (lo, hi) in rules.INT_BOUNDS.items():
        assert path == "status" or (lo, hi) == (-(2**63), 2**63 - 1), path


# --- exactly the reference's answer ----------------------------------------------------


@PROPERTY
@given(st.lists(lines(), min_size=1, max_size=12), max_bytes)
def test_any_batch_decodes_as_the_reference(batch_lines: list[bytes], limit: int) -> None:
    assert_same(batch_lines, limit)


@settings(PROPERTY, max_examples=150)
@given(st.lists(st.binary(max_size=200), max_size=8))
def test_random_bytes_decode_as_the_reference(batch_lines: list[bytes]) -> None:
    assert_same(batch_lines)


def test_realistic_streams_decode_as_the_reference_and_mostly_natively() -> None:
    for name in scenarios.SCENARIOS:
        stream = list(islice(scenarios.generate(name, 3, 2), 3000))
        before = canary_gate_native.counters()
        _, dead = assert_same(stream)
        fast, slow = (after - b for after, b in zip(canary_gate_native.counters(), before, strict=True))
        # Only the lines the codec rejects take its path: every accepted scenario event is read natively.
        assert slow == len(dead), name
        assert fast == len(stream) - len(dead), name


def test_one_bad_line_leaves_the_others_native() -> None:
    good = list(islice(scenarios.generate("healthy", 1, 1), 500))
    # Dead letters, and one the codec accepts that the native reader leaves to it (a 50-digit number).
    unusual = good[0].replace(b"{", b'{"other":' + b"1" * 50 + b",", 1)
    for bad in (b'{"ts": 1}', b"\xff", b"", good[0][:-1], unusual):
        lines_ = [*good[:250], bad, *good[250:]]
        columns, slow = canary_gate_native.decode_batch(lines_, 1_048_576)
        assert slow == [250]
        assert len(pl.Series(dict(columns)["row"])) == 500
        frame, dead = assert_same(lines_)
        assert frame.get_column("row").to_list() == [i for i in range(501) if i != 250 or not dead]


def test_empty_and_non_list_batches() -> None:
    assert_same([])
    frame, dead = batch.decode_frame_native(tuple(REAL[:20]))
    want, want_dead = batch.decode_frame_reference(REAL[:20])
    assert frame.equals(want) and dead_keys(dead) == dead_keys(want_dead)
    assert_same([bytearray(REAL[0]), memoryview(REAL[1]), REAL[2]])  # not bytes: the codec's


def _line(**fields: Any) -> bytes:
    doc: dict[str, Any] = {
        "ts": "2025-08-27T06:30:00Z", "route": "chat.rag.answer", "variant": "canary-v2", "sticky": "h34",
        "region": "us-east", "cold_start": False,
        "latency_ms": {"tffb": 160, "tusable": 380, "tfinal": 1320}, "status": 200,
    }
    doc.update(fields)
    return json.dumps(doc, ensure_ascii=False).encode()


@pytest.mark.parametrize("number", ODD_NUMBERS)
@pytest.mark.parametrize("field", ["status", "tfinal", "delta", "coverage", "paraphrase", "seed", "k",
                                   "tries", "unknown"])
def test_odd_numbers_in_every_kind_of_field(field: str, number: bytes) -> None:
    base = _line(retrieval={"k": 7, "ΔS_q_r": 0.25, "coverage": 0.5},
                 probe={"question_id": "q", "topic": "t", "paraphrase": 3, "seed": 4},
                 egress={"tries": 6}, other=8)
    old = {"status": b'"status": 200', "tfinal": b'"tfinal": 1320', "delta": b'"\xce\x94S_q_r": 0.25',
           "coverage": b'"coverage": 0.5', "paraphrase": b'"paraphrase": 3', "seed": b'"seed": 4',
           "k": b'"k": 7', "tries": b'"tries": 6', "unknown": b'"other": 8'}[field]
    assert old in base
    assert_same([base.replace(old, old.rsplit(b" ", 1)[0] + b" " + number)])


@settings(PROPERTY, max_examples=400)
@given(st.one_of(
    st.floats(min_value=0, max_value=1),
    st.floats(min_value=0, max_value=1e300),
    st.tuples(st.integers(min_value=0, max_value=10**20), st.integers(min_value=-30, max_value=30)),
))
def test_floats_are_bit_identical(value: float | tuple[int, int]) -> None:
    text = repr(value) if isinstance(value, float) else f"{value[0]}e{value[1]}"
    lines_ = [_line(retrieval={"coverage": 0.5}).replace(b'"coverage": 0.5', b'"coverage": ' + text.encode()),
              _line().replace(b'"tfinal": 1320', b'"tfinal": ' + text.encode())]
    assert_same(lines_)


@settings(PROPERTY, max_examples=500)
@given(any_timestamps)
def test_native_event_time_is_parse_ts(text: str) -> None:
    got = canary_gate_native.parse_ts(text)
    try:
        want: float | None = timestamps.parse_ts(text)
    except ValueError:
        want = None
    # Every RFC 3339 time of the years 1..9999 is read natively, to the same bits.
    assert (got is None) == (want is None), text
    if got is not None and want is not None:
        assert np.float64(got).view(np.uint64) == np.float64(want).view(np.uint64), text
    assert_same([_line(ts=text)])


def test_event_times_at_the_edges() -> None:
    edges = ["2025-08-27T06:30:00Z", "1970-01-01T00:00:00Z", "1969-12-31T23:59:59.999999Z",
             "2255-06-05T23:47:34.740991Z", "2255-06-05T23:47:34.740992Z", "1684-07-28T00:12:25.259008Z",
             "1684-07-28T00:12:25.259007Z", "0001-01-01T00:00:00Z", "9999-12-31T23:59:59.999999Z",
             "2024-02-29T12:00:00.1234567+23:59", "2023-02-29T12:00:00Z", "2025-08-27t06:30:00.5z",
             "2025-08-27T06:30:00-00:00", "2025-08-27T06:30:00.000000000000001-12:30"]
    assert_same([_line(ts=t) for t in edges])
    for t in edges:
        native = canary_gate_native.parse_ts(t)
        want = None if t.startswith("2023-02-29") else timestamps.parse_ts(t)
        assert native == want, t


def test_strings_with_escapes_and_unicode() -> None:
    values = ["é", "日本", "😀", "a\"b", "a\\b", "tab\there", "nul\u0000", "\u2028", "x" * 5000, " ", "→"]
    lines_ = []
    for v in values:
        for ascii_only in (True, False):
            doc = {"ts": "2025-08-27T06:30:00Z", "route": v, "variant": v, "sticky": v, "region": v,
                   "request_id": v, "cold_start": True, "latency_ms": {"tffb": 1, "tusable": 2, "tfinal": 3},
                   "status": 200, "retrieval": {"metric": v, "analyzer": v, "INDEX_HASH": v},
                   "probe": {"question_id": v, "topic": v, "paraphrase": 1, "seed": 2},
                   "cache": {"prefix": v, "hit": False}, v: v}
            lines_.append(json.dumps(doc, ensure_ascii=ascii_only).encode())
    frame, dead = assert_same(lines_)
    assert not dead and len(frame) == len(lines_)
    _, slow = canary_gate_native.decode_batch(lines_)
    assert slow == []  # escapes in values and keys are decoded natively


def test_aliases_and_their_canonical_fields() -> None:
    lines_ = []
    for block in ({"index_hash": "a"}, {"INDEX_HASH": "a", "index_hash": "a"}, {"delta_s_q_r": 0.5},
                  {"ΔS_q_r": 0.5, "delta_s_q_r": 0.5}, {"lambda_state": "chaotic"}, {"λ_state": "×"},
                  {"λ_state": "×", "lambda_state": "chaotic"}, {"λ_state": "Chaotic"}, {"λ_state": None},
                  {"ΔS_q_r": 1.0000001}, {"ΔS_q_r": -0.0}, {"coverage": 1}, {}):
        lines_.append(_line(retrieval=block))
    _, dead = assert_same(lines_)
    assert len(dead) == 6


def test_over_max_bytes_and_codec_unchanged() -> None:
    line = _line()
    assert_same([line, line, line], max_bytes=len(line))
    assert_same([line, line], max_bytes=len(line) - 1)
    error = codec.decode(line, len(line) - 1)
    assert isinstance(error, DecodeError) and error.reason == "too_large"
