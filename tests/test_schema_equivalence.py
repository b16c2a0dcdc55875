"""Property tests: pipeline.decode.codec.decode and schemas/telemetry.schema.json agree.

The decoder is the hot path; the JSON Schema is the published contract.  For
every JSON document the decoder returns an Event exactly when the schema (with
date-time format checking) accepts it, and a `schema` dead letter otherwise.
No input, JSON or not, makes the decoder raise.
"""

from __future__ import annotations

import calendar
import copy
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from pipeline.decode.codec import decode
from pipeline.model import (
    LADDER,
    DeadLetterReason,
    Decision,
    DecodeError,
    Event,
    GateRow,
    GateStatus,
    Verdict,
)

SCHEMAS = Path(__file__).resolve().parent.parent / "schemas"
TELEMETRY_SCHEMA = json.loads((SCHEMAS / "telemetry.schema.json").read_text("utf-8"))
VERDICT_SCHEMA = json.loads((SCHEMAS / "verdict.schema.json").read_text("utf-8"))
FORMAT_CHECKER = Draft202012Validator.FORMAT_CHECKER
TELEMETRY = Draft202012Validator(TELEMETRY_SCHEMA, format_checker=FORMAT_CHECKER)
VERDICT = Draft202012Validator(VERDICT_SCHEMA, format_checker=FORMAT_CHECKER)

PROPERTY = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

MAX_FLOAT = 1.7976931348623157e308
LAMBDA_WORDS = ["→", "←", "<>", "×", "convergent", "divergent", "recursive", "chaotic"]
GATES = [
    "schema_violations", "delta_s_median", "index_skew", "p95_warm_latency", "new_5xx_class",
    "coverage", "region_skew", "cache_namespace", "lambda_convergence", "error_rate",
    "cache_hit_regression", "sticky_flip",
]

# Field names of each block, "" being the top level.
KNOWN: dict[str, tuple[str, ...]] = {
    "": ("ts", "route", "variant", "sticky", "region", "edge_pop", "cold_start", "x_warm",
         "x_exp", "request_id", "latency_ms", "status", "failure_phase", "retrieval", "probe",
         "cache", "egress"),
    "latency_ms": ("tffb", "tusable", "tfinal"),
    "retrieval": ("k", "metric", "analyzer", "INDEX_HASH", "index_hash", "ΔS_q_r",
                  "delta_s_q_r", "coverage", "λ_state", "lambda_state"),
    "probe": ("question_id", "topic", "paraphrase", "seed"),
    "cache": ("prefix", "hit"),
    "egress": ("webhook", "tries", "dedupe_key"),
}
ALIASES = (("INDEX_HASH", "index_hash"), ("ΔS_q_r", "delta_s_q_r"), ("λ_state", "lambda_state"))


def encode(obj: object) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode()


def schema_accepts(raw: bytes) -> bool:
    return TELEMETRY.is_valid(json.loads(raw))


# --- strategies: valid events ----------------------------------------------------

labels = st.text(min_size=1, max_size=12)
strings = st.text(max_size=12)
# Integers as JSON Schema sees them: any int, or a float with no fractional part.
integers = st.one_of(
    st.integers(),
    st.integers(min_value=-(2**53), max_value=2**53).map(float),
    st.sampled_from([1e20, -1e300, 2.0**80]),
)
# Signed 64-bit integers (probe paraphrase and seed), integral floats among them.
int64s = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.integers(min_value=-(2**53), max_value=2**53).map(float),
    st.sampled_from([-(2**63), 2**63 - 1, -(2.0**63), 1e18]),
)
milliseconds = st.one_of(
    st.integers(min_value=0, max_value=10**300),
    st.floats(min_value=0, max_value=MAX_FLOAT),
    st.just(-0.0),
)
units = st.one_of(st.floats(min_value=0, max_value=1), st.sampled_from([0, 1, -0.0]))
statuses = st.one_of(
    st.integers(min_value=100, max_value=599),
    st.integers(min_value=100, max_value=599).map(float),
)
lambda_words = st.sampled_from(LAMBDA_WORDS)


_years = st.integers(min_value=1, max_value=9999)
_months = st.integers(min_value=1, max_value=12)
_days = st.integers(min_value=1, max_value=31)
_hours = st.integers(min_value=0, max_value=23)
_sixty = st.integers(min_value=0, max_value=59)
_fractions = st.one_of(st.just(""), st.text("0123456789", min_size=1, max_size=12).map(".{}".format))
_offsets = st.one_of(
    st.sampled_from(["Z", "z", "+00:00", "-00:00"]),
    st.tuples(st.sampled_from("+-"), _hours, _sixty).map(lambda t: f"{t[0]}{t[1]:02d}:{t[2]:02d}"),
)


@st.composite
def timestamps(draw: st.DrawFn) -> str:
    """RFC 3339 date-times over the whole range, with any offset and fraction."""
    year, month = draw(_years), draw(_months)
    day = min(draw(_days), calendar.monthrange(year, month)[1])
    sep = draw(st.sampled_from("Tt"))
    clock = f"{draw(_hours):02d}:{draw(_sixty):02d}:{draw(_sixty):02d}"
    return f"{year:04d}-{month:02d}-{day:02d}{sep}{clock}{draw(_fractions)}{draw(_offsets)}"


json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
)
# Two levels deep is enough to stand in for any JSON value, and much cheaper than st.recursive.
json_values = st.one_of(
    json_scalars,
    st.lists(json_scalars, max_size=3),
    st.dictionaries(st.text(max_size=6), json_scalars, max_size=3),
)
any_json = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)


def _unknown_fields(block: str) -> st.SearchStrategy[dict[str, Any]]:
    names = st.text(max_size=10).filter(lambda name: name not in KNOWN[block])
    return st.dictionaries(names, json_values, max_size=2)


# Extra fields each block does not know: allowed and ignored.  Built once: building
# strategies inside a draw costs more than drawing from them.
UNKNOWN_FIELDS = {block: _unknown_fields(block) for block in KNOWN}


PAIR_VALUES = {"INDEX_HASH": strings, "ΔS_q_r": units, "λ_state": lambda_words}


@st.composite
def retrievals(draw: st.DrawFn) -> dict[str, Any]:
    block: dict[str, Any] = draw(
        st.fixed_dictionaries(
            {},
            optional={"k": integers, "metric": strings, "analyzer": strings, "coverage": units},
        )
    )
    for canonical, alias in ALIASES:
        spelling = draw(st.sampled_from([None, canonical, alias]))
        if spelling is not None:
            block[spelling] = draw(PAIR_VALUES[canonical])
    return block


BLOCKS: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "latency_ms": st.fixed_dictionaries(
        {"tffb": milliseconds, "tusable": milliseconds, "tfinal": milliseconds}
    ),
    "retrieval": retrievals(),
    "probe": st.fixed_dictionaries(
        {"question_id": strings, "topic": strings, "paraphrase": int64s, "seed": int64s}
    ),
    "cache": st.fixed_dictionaries({"prefix": strings, "hit": st.booleans()}),
    "egress": st.fixed_dictionaries(
        {}, optional={"webhook": strings, "tries": integers, "dedupe_key": strings}
    ),
}


@st.composite
def valid_events(draw: st.DrawFn) -> dict[str, Any]:
    """Events the schema accepts: every optional block, alias and number form."""
    event: dict[str, Any] = draw(
        st.fixed_dictionaries(
            {
                "ts": timestamps(),
                "route": labels,
                "variant": labels,
                "sticky": labels,
                "region": labels,
                "cold_start": st.booleans(),
                "latency_ms": BLOCKS["latency_ms"],
                "status": statuses,
            },
            optional={
                "edge_pop": strings,
                "x_warm": st.booleans(),
                "x_exp": strings,
                "request_id": strings,
                "failure_phase": st.sampled_from(["headers", "body"]),
                "retrieval": BLOCKS["retrieval"],
                "probe": BLOCKS["probe"],
                "cache": BLOCKS["cache"],
                "egress": BLOCKS["egress"],
            },
        )
    )
    if draw(st.booleans()):
        for block in [""] + [b for b in KNOWN if b in event]:
            extra = draw(UNKNOWN_FIELDS[block])
            target = event if block == "" else event[block]
            target.update(extra)
    # Shuffle key order: the decoder must not depend on it.
    keys = draw(st.permutations(list(event)))
    return {key: event[key] for key in keys}


# --- strategies: mutations -------------------------------------------------------

BAD_TIMESTAMPS = [
    "2025-02-30T00:00:00Z", "2025-02-29T00:00:00Z", "2025-13-01T00:00:00Z",
    "2025-00-01T00:00:00Z", "2025-01-00T00:00:00Z", "2025-01-32T00:00:00Z",
    "2025-08-27T24:00:00Z", "2025-08-27T06:60:00Z", "2025-08-27T06:30:60Z",
    "2025-08-27T06:30:00", "2025-08-27T06:30:00+24:00", "2025-08-27T06:30:00+05:60",
    "2025-08-27T06:30:00+0500", "2025-08-27 06:30:00Z", "2025-08-27T06:30Z",
    "2025-08-27T06:30:00.Z", "2025-08-27T06:30:00Z\n", "\n2025-08-27T06:30:00Z",
    " 2025-08-27T06:30:00Z", "2025-08-27T06:30:00ZZ", "0000-01-01T00:00:00Z",
    "25-08-27T06:30:00Z", "12025-08-27T06:30:00Z", "٢٠٢٥-08-27T06:30:00Z",
    "2025-08-27T06:30:00.５Z", "2025-08-27", "",
]
EDGE_VALUES: list[Any] = [
    None, True, False, 0, 1, -1, 99, 100, 599, 600, 2.0, 200.0, 200.5, -0.0, 0.5, 1.0,
    1.0000001, -1e-300, 5e-324, MAX_FLOAT, 10**400, -(10**400), 2**64, 2**63, -(2**63) - 1,
    "", "x", "200", "true", "null", "headers", "body", "trailers", "HEADERS",
    *LAMBDA_WORDS, "Convergent", "->", [], {}, [1], {"a": 1},
    "2025-08-27T06:30:00Z", *BAD_TIMESTAMPS,
]


@st.composite
def edited_timestamps(draw: st.DrawFn) -> str:
    """A valid timestamp with one character deleted, replaced or inserted."""
    text = draw(timestamps())
    at = draw(st.integers(min_value=0, max_value=len(text)))
    char = draw(st.one_of(st.sampled_from("0123456789:-+.TtZz \n"), st.characters()))
    edit = draw(st.sampled_from(["delete", "replace", "insert"]))
    if edit == "insert":
        return text[:at] + char + text[at:]
    if edit == "delete":
        return text[:at] + text[at + 1 :]
    return text[:at] + char + text[at + 1 :]


_loose_two = st.one_of(
    st.integers(min_value=0, max_value=99),
    st.sampled_from([0, 1, 12, 13, 23, 24, 28, 29, 30, 31, 32, 59, 60]),
)
_loose_years = st.one_of(
    st.integers(min_value=0, max_value=9999), st.sampled_from([0, 1, 1900, 2000, 2024, 2025])
)


@st.composite
def loose_timestamps(draw: st.DrawFn) -> str:
    """Well-formed timestamps whose fields may be out of range: month 13, Feb 30, +05:60."""
    year = draw(_loose_years)
    month, day, hour, minute, second = (draw(_loose_two) for _ in range(5))
    offset = draw(st.sampled_from(["Z", "+", "-"]))
    if offset != "Z":
        offset += f"{draw(_loose_two):02d}:{draw(_loose_two):02d}"
    return (
        f"{year:04d}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:{second:02d}"
        f"{draw(_fractions)}{offset}"
    )


any_timestamps = st.one_of(
    timestamps(), loose_timestamps(), edited_timestamps(), st.sampled_from(BAD_TIMESTAMPS)
)

wild_values = st.one_of(
    st.sampled_from(EDGE_VALUES),
    json_values,
    any_timestamps,
    integers,
    int64s,
    milliseconds,
    units,
    statuses,
    lambda_words,
)


def _blocks_present(event: dict[str, Any]) -> list[str]:
    return [""] + [b for b in KNOWN if b and isinstance(event.get(b), dict)]


@st.composite
def mutated_events(draw: st.DrawFn) -> Any:
    """A valid event with one to three targeted edits; may or may not stay valid."""
    event: Any = copy.deepcopy(draw(valid_events()))
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        if not isinstance(event, dict):
            break
        block = draw(st.sampled_from(_blocks_present(event)))
        target = event if block == "" else event[block]
        op = draw(
            st.sampled_from(
                ["delete", "replace", "replace", "replace", "ts", "ts", "both", "extra",
                 "add_block", "top"]
            )
        )
        names = sorted(set(KNOWN[block]) | set(target))
        name = draw(st.sampled_from(names))
        if op == "ts":
            event["ts"] = draw(any_timestamps)
        elif op == "delete":
            target.pop(name, None)
        elif op == "replace":
            target[name] = draw(wild_values)
        elif op == "both":
            retrieval = event.setdefault("retrieval", {})
            if isinstance(retrieval, dict):
                canonical, alias = draw(st.sampled_from(ALIASES))
                retrieval[canonical] = draw(PAIR_VALUES[canonical])
                retrieval[alias] = draw(PAIR_VALUES[canonical])
        elif op == "extra":
            target.update(draw(UNKNOWN_FIELDS[block]))
        elif op == "add_block":
            name = draw(st.sampled_from([b for b in KNOWN if b]))
            event[name] = draw(st.one_of(BLOCKS[name], wild_values))
        else:
            event = draw(st.one_of(json_values, st.lists(st.just(event), max_size=1)))
    return event


def _example(**changes: Any) -> dict[str, Any]:
    event = {
        "ts": "2025-08-27T06:30:00Z", "route": "chat.rag.answer", "variant": "canary-v2",
        "sticky": "h34", "region": "us-east", "cold_start": False,
        "latency_ms": {"tffb": 160, "tusable": 380, "tfinal": 1320}, "status": 200,
    }
    event.update(changes)
    return event


# --- the format checker is real --------------------------------------------------


def test_schemas_are_valid_2020_12_schemas() -> None:
    Draft202012Validator.check_schema(TELEMETRY_SCHEMA)
    Draft202012Validator.check_schema(VERDICT_SCHEMA)
    assert TELEMETRY_SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_date_time_format_is_really_checked() -> None:
    """Without rfc3339-validator jsonschema silently skips date-time: fail loudly instead."""
    assert "date-time" in FORMAT_CHECKER.checkers, "pip install rfc3339-validator"
    only_format = Draft202012Validator({"format": "date-time"}, format_checker=FORMAT_CHECKER)
    assert only_format.is_valid("2025-02-28T00:00:00Z")
    assert not only_format.is_valid("2025-02-30T00:00:00Z")
    assert not only_format.is_valid("2025-13-01T00:00:00Z")


@pytest.mark.parametrize("ts", BAD_TIMESTAMPS)
def test_bad_timestamps_fail_both(ts: str) -> None:
    raw = encode(_example(ts=ts))
    assert not schema_accepts(raw)
    out = decode(raw)
    assert isinstance(out, DecodeError) and out.reason is DeadLetterReason.SCHEMA


def test_playbook_example_is_valid_for_both() -> None:
    playbook_event = _example(
        edge_pop="iad",
        retrieval={"k": 10, "metric": "cosine", "analyzer": "bilstem", "INDEX_HASH": "0x9a77",
                   "ΔS_q_r": 0.34, "coverage": 0.76, "λ_state": "<>"},
        cache={"prefix": "v2-cnr:", "hit": True},
        egress={"webhook": "billing", "tries": 1, "dedupe_key": "sha256(...)"},
    )
    raw = encode(playbook_event)
    assert schema_accepts(raw)
    assert isinstance(decode(raw), Event)


@settings(PROPERTY, max_examples=300)
@given(any_timestamps)
def test_timestamps_agree(ts: str) -> None:
    raw = encode(_example(ts=ts))
    out = decode(raw)
    assert isinstance(out, Event) == schema_accepts(raw), out
    assert isinstance(out, Event) or out.reason is DeadLetterReason.SCHEMA


@pytest.mark.parametrize(
    "literal",
    # Valid JSON that json.dumps cannot write: numbers beyond the double range.
    [b"1e400", b"-1e400", b"1" + b"0" * 400, b"1e308", b"1.7976931348623157e308"],
)
@pytest.mark.parametrize("field", ["status", "tfinal", "k", "coverage"])
def test_huge_number_literals_agree(field: str, literal: bytes) -> None:
    event = _example(retrieval={"k": 7, "coverage": 0.5})
    raw = encode(event)
    old = {"status": b'"status": 200', "tfinal": b'"tfinal": 1320', "k": b'"k": 7',
           "coverage": b'"coverage": 0.5'}[field]
    raw = raw.replace(old, old.split(b":")[0] + b": " + literal)
    out = decode(raw)
    assert isinstance(out, Event) == schema_accepts(raw), out
    assert isinstance(out, Event) or out.reason is DeadLetterReason.SCHEMA


# --- (a) valid events ------------------------------------------------------------


@settings(PROPERTY, max_examples=200)
@given(valid_events())
def test_valid_events_pass_schema_and_decoder(event: dict[str, Any]) -> None:
    raw = encode(event)
    assert TELEMETRY.is_valid(json.loads(raw)), list(TELEMETRY.iter_errors(json.loads(raw)))
    out = decode(raw)
    assert isinstance(out, Event), out
    assert (out.route, out.variant, out.sticky, out.region) == (
        event["route"], event["variant"], event["sticky"], event["region"]
    )
    assert out.status == event["status"] and type(out.status) is int
    assert out.x_warm is event.get("x_warm", False)
    assert out.tfinal == float(event["latency_ms"]["tfinal"])
    retrieval = event.get("retrieval")
    assert out.has_retrieval is (retrieval is not None)
    if retrieval is not None:
        assert out.index_hash == retrieval.get("INDEX_HASH", retrieval.get("index_hash"))
        assert out.delta_s == retrieval.get("ΔS_q_r", retrieval.get("delta_s_q_r"))
        word = retrieval.get("λ_state", retrieval.get("lambda_state"))
        assert out.lambda_state == (-1 if word is None else LAMBDA_WORDS.index(word) % 4)
    if "probe" in event:
        assert out.probe_paraphrase == event["probe"]["paraphrase"]
        assert type(out.probe_paraphrase) is int


@settings(PROPERTY, max_examples=100)
@given(valid_events(), st.data())
def test_unknown_fields_keep_events_valid(event: dict[str, Any], data: st.DataObject) -> None:
    for block in _blocks_present(event):
        target = event if block == "" else event[block]
        target.update(data.draw(UNKNOWN_FIELDS[block]))
    raw = encode(event)
    assert schema_accepts(raw)
    assert isinstance(decode(raw), Event)


# --- (b) mutations: accepted iff the schema accepts --------------------------------


@PROPERTY
@given(mutated_events())
def test_decoder_accepts_exactly_what_the_schema_accepts(doc: Any) -> None:
    raw = encode(doc)
    out = decode(raw)
    valid = schema_accepts(raw)
    assert isinstance(out, Event) == valid, (out, [e.message for e in TELEMETRY.iter_errors(doc)])
    if not valid:
        assert isinstance(out, DecodeError)
        assert out.reason is DeadLetterReason.SCHEMA, out


@settings(PROPERTY, max_examples=100)
@given(valid_events(), st.sampled_from(ALIASES), st.data())
def test_alias_and_canonical_together_fail_both(
    event: dict[str, Any], pair: tuple[str, str], data: st.DataObject
) -> None:
    canonical, alias = pair
    value = data.draw(PAIR_VALUES[canonical])
    retrieval = dict(event.get("retrieval") or {})
    retrieval[canonical] = value
    retrieval[alias] = value
    raw = encode({**event, "retrieval": retrieval})
    assert not schema_accepts(raw)
    out = decode(raw)
    assert isinstance(out, DecodeError) and out.reason is DeadLetterReason.SCHEMA
    assert out.variant == event["variant"]


# --- (c) never crash -------------------------------------------------------------


@settings(PROPERTY, max_examples=200)
@given(st.one_of(any_json, st.dictionaries(st.sampled_from(KNOWN[""]), any_json)))
def test_arbitrary_json_agrees_and_never_crashes(doc: Any) -> None:
    raw = encode(doc)
    out = decode(raw)
    assert isinstance(out, Event | DecodeError)
    assert isinstance(out, Event) == schema_accepts(raw)
    if isinstance(out, DecodeError):
        assert out.reason is DeadLetterReason.SCHEMA


@PROPERTY
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_crash(raw: bytes) -> None:
    out = decode(raw)
    assert isinstance(out, Event | DecodeError)
    if isinstance(out, DecodeError):
        assert out.reason in (DeadLetterReason.INVALID_JSON, DeadLetterReason.SCHEMA)
        assert out.raw == raw


def _classify(raw: bytes) -> tuple[str, Any]:
    """Read raw as RFC 8259 JSON in UTF-8: ("json", value) or why not."""

    def no_constants(name: str) -> Any:
        raise ValueError(name)

    def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        if len({k for k, _ in pairs}) != len(pairs):
            raise KeyError("duplicate key")
        return dict(pairs)

    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return "not_utf8", None
    try:
        return "json", json.loads(text, parse_constant=no_constants, object_pairs_hook=unique_keys)
    except KeyError:
        return "duplicate_keys", None
    except ValueError:
        return "not_json", None


@settings(PROPERTY, max_examples=150)
@given(valid_events(), st.data())
def test_corrupted_bytes_never_crash_and_are_classified(
    event: dict[str, Any], data: st.DataObject
) -> None:
    raw = bytearray(encode(event))
    for _ in range(data.draw(st.integers(min_value=1, max_value=3))):
        at = data.draw(st.integers(min_value=0, max_value=len(raw)))
        byte = data.draw(
            st.one_of(st.sampled_from(b'{}[]",:\\ 0e.-\xff\xc3'), st.integers(0, 255))
        )
        edit = data.draw(st.sampled_from(["delete", "replace", "insert", "truncate"]))
        if edit == "insert":
            raw[at:at] = bytes([byte])
        elif edit == "replace":
            raw[at : at + 1] = bytes([byte])
        elif edit == "delete":
            del raw[at : at + 1]
        else:
            del raw[at:]
    out = decode(bytes(raw))
    assert isinstance(out, Event | DecodeError)
    kind, doc = _classify(bytes(raw))
    if kind == "json":
        assert isinstance(out, Event) == TELEMETRY.is_valid(doc), out
        assert isinstance(out, Event) or out.reason is DeadLetterReason.SCHEMA
    elif kind == "not_json":
        assert isinstance(out, DecodeError), out
        # msgspec reports a number beyond the double range before any later syntax error.
        assert out.reason is DeadLetterReason.INVALID_JSON or "out of range" in out.detail, out
    elif kind == "not_utf8":
        # Known leniency: msgspec does not check UTF-8 inside fields it skips.
        assert isinstance(out, Event) or out.reason is DeadLetterReason.INVALID_JSON, out
    # Duplicate keys: RFC 8259 leaves the meaning open; not crashing is all we ask.


# --- verdict records -------------------------------------------------------------


def test_spec_verdict_example_is_valid() -> None:
    record = {
        "id": "chat-rag-v2/2025-08-27T06:31:00Z",
        "rollout": "chat-rag-v2", "stage": "1%", "window_end": "2025-08-27T06:31:00Z",
        "decision": "stop",
        "gates": [{"gate": "p95_warm_latency", "status": "fail", "region": "us-east",
                   "observed": 1.41, "threshold": 1.25, "p_value": 0.0004, "hard_stop": True,
                   "canary_n": 812, "control_n": 80311,
                   "reason": "canary/control p95 tfinal 1.41 > 1.25"}],
        "reasons": ["p95_warm_latency us-east: canary/control p95 tfinal 1.41 > 1.25"],
    }
    assert VERDICT.is_valid(record), list(VERDICT.iter_errors(record))
    older = {**record, "gates": [{k: v for k, v in record["gates"][0].items() if k != "p_value"}]}
    assert VERDICT.is_valid(older), "records written before the sequential tests lack p_value"
    for broken in (
        {**record, "gates": [{**record["gates"][0], "p_value": 1.5}]},
        {**record, "gates": [{**record["gates"][0], "p_value": "0.01"}]},
        {**record, "extra": 1},
        {**record, "stage": "2%"},
        {**record, "decision": "rollback"},
        {**record, "window_end": "2025-02-30T00:00:00Z"},
        {**record, "gates": [{**record["gates"][0], "gate": "p99_latency"}]},
        {**record, "gates": [{**record["gates"][0], "canary_n": -1}]},
        {**record, "gates": [{**record["gates"][0], "hard_stop": 1}]},
        {**record, "gates": [{**record["gates"][0], "note": ""}]},
        {k: v for k, v in record.items() if k != "reasons"},
    ):
        assert not VERDICT.is_valid(broken), broken


gate_rows = st.builds(
    GateRow,
    gate=st.sampled_from(GATES),
    status=st.sampled_from(list(GateStatus)),
    region=st.one_of(st.none(), labels),
    observed=st.one_of(st.none(), st.floats(allow_nan=False, allow_infinity=False)),
    threshold=st.one_of(st.none(), st.floats(allow_nan=False, allow_infinity=False)),
    hard_stop=st.booleans(),
    canary_n=st.integers(min_value=0, max_value=10**9),
    control_n=st.integers(min_value=0, max_value=10**9),
    reason=strings,
)


@settings(PROPERTY, max_examples=50)
@given(
    st.builds(
        Verdict,
        rollout=strings,
        stage=st.sampled_from(LADDER),
        window_end=st.one_of(
            st.integers(min_value=0, max_value=4_102_444_800),
            st.floats(min_value=0, max_value=4_102_444_800),
        ),
        decision=st.sampled_from(list(Decision)),
        gates=st.lists(gate_rows, max_size=5).map(tuple),
    )
)
def test_every_verdict_record_is_valid(verdict: Verdict) -> None:
    record = json.loads(json.dumps(verdict.to_record()))
    assert VERDICT.is_valid(record), list(VERDICT.iter_errors(record))
