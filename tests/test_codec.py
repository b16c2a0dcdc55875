"""Unit tests for the hot-path decoder, pipeline.decode.codec (SPEC section 1)."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest

from pipeline.decode.codec import decode, decode_batch, parse_ts
from pipeline.model import DeadLetterReason, DecodeError, Event

# The example event of the playbook (seeds/canary-release-serverless-edge.md).
PLAYBOOK_EVENT: dict[str, Any] = {
    "ts": "2025-08-27T06:30:00Z",
    "route": "chat.rag.answer",
    "variant": "canary-v2",
    "sticky": "h34",
    "region": "us-east",
    "edge_pop": "iad",
    "cold_start": False,
    "latency_ms": {"tffb": 160, "tusable": 380, "tfinal": 1320},
    "status": 200,
    "retrieval": {
        "k": 10,
        "metric": "cosine",
        "analyzer": "bilstem",
        "INDEX_HASH": "0x9a77",
        "ΔS_q_r": 0.34,
        "coverage": 0.76,
        "λ_state": "<>",
    },
    "cache": {"prefix": "v2-cnr:", "hit": True},
    "egress": {"webhook": "billing", "tries": 1, "dedupe_key": "sha256(...)"},
}


def encode(obj: object) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode()


def event_of(obj: object) -> Event:
    out = decode(encode(obj))
    assert isinstance(out, Event), out
    return out


def fields_of(e: Event) -> dict[str, Any]:
    """An event's decoded values, without the original bytes it carries."""
    return {f.name: getattr(e, f.name) for f in msgspec.structs.fields(e) if f.name != "raw"}


def error_of(raw: bytes, max_bytes: int = 1_048_576) -> DecodeError:
    out = decode(raw, max_bytes)
    assert isinstance(out, DecodeError), out
    return out


def with_changes(**changes: Any) -> dict[str, Any]:
    """The playbook event with top-level fields replaced (a value of ... deletes)."""
    obj = copy.deepcopy(PLAYBOOK_EVENT)
    for key, value in changes.items():
        if value is ...:
            del obj[key]
        else:
            obj[key] = value
    return obj


def with_retrieval(fields: dict[str, Any] | None = None, **more: Any) -> dict[str, Any]:
    """The playbook event with exactly these retrieval fields."""
    return with_changes(retrieval={**(fields or {}), **more})


# --- the example event -----------------------------------------------------------


def test_playbook_example_decodes_with_its_values() -> None:
    e = event_of(PLAYBOOK_EVENT)
    assert e.ts == datetime(2025, 8, 27, 6, 30, tzinfo=UTC).timestamp()
    assert (e.route, e.variant, e.sticky) == ("chat.rag.answer", "canary-v2", "h34")
    assert e.region == "us-east"
    assert e.cold_start is False
    assert e.x_warm is False
    assert e.request_id is None
    assert (e.tffb, e.tusable, e.tfinal) == (160, 380, 1320)
    assert e.status == 200 and type(e.status) is int
    assert e.failure_phase is None
    assert e.has_retrieval is True
    assert (e.index_hash, e.metric, e.analyzer) == ("0x9a77", "cosine", "bilstem")
    assert e.delta_s == pytest.approx(0.34)
    assert e.coverage == pytest.approx(0.76)
    assert e.lambda_state == 2  # "<>"
    assert e.probe_question is None and e.probe_topic is None
    assert (e.cache_prefix, e.cache_hit) == ("v2-cnr:", True)


def test_minimal_event_has_defaults() -> None:
    minimal = {k: PLAYBOOK_EVENT[k] for k in ("ts", "route", "variant", "sticky", "region",
                                              "cold_start", "latency_ms", "status")}
    e = event_of(minimal)
    assert e.x_warm is False
    assert e.has_retrieval is False
    assert (e.index_hash, e.metric, e.analyzer, e.delta_s, e.coverage) == (None,) * 5
    assert e.lambda_state == -1
    assert (e.cache_prefix, e.cache_hit) == (None, None)
    assert (e.probe_paraphrase, e.probe_seed) == (0, 0)


def test_optional_fields_are_read() -> None:
    e = event_of(with_changes(
        x_warm=True, request_id="req-1", x_exp="exp-7", failure_phase="body", status=503,
        probe={"question_id": "q17", "topic": "billing", "paraphrase": 2, "seed": 1},
    ))
    assert e.x_warm is True
    assert e.request_id == "req-1"
    assert e.failure_phase == "body"
    assert e.status == 503
    assert (e.probe_question, e.probe_topic) == ("q17", "billing")
    assert (e.probe_paraphrase, e.probe_seed) == (2, 1)


def test_empty_retrieval_block_counts_as_present() -> None:
    e = event_of(with_retrieval())
    assert e.has_retrieval is True
    assert e.lambda_state == -1 and e.delta_s is None and e.index_hash is None


# --- aliases ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("canonical", "alias"),
    [
        ({"INDEX_HASH": "0x9a76"}, {"index_hash": "0x9a76"}),
        ({"ΔS_q_r": 0.61}, {"delta_s_q_r": 0.61}),
        ({"λ_state": "→"}, {"lambda_state": "→"}),
        ({"λ_state": "→"}, {"λ_state": "convergent"}),
        ({"λ_state": "←"}, {"λ_state": "divergent"}),
        ({"λ_state": "<>"}, {"lambda_state": "recursive"}),
        ({"λ_state": "×"}, {"lambda_state": "chaotic"}),
    ],
)
def test_ascii_alias_maps_to_the_same_event(
    canonical: dict[str, Any], alias: dict[str, Any]
) -> None:
    expected = fields_of(event_of(with_retrieval(canonical)))
    assert fields_of(event_of(with_retrieval(alias))) == expected


def test_all_aliases_together_equal_the_canonical_event() -> None:
    ascii_only = with_retrieval(
        k=10, metric="cosine", analyzer="bilstem", index_hash="0x9a77",
        delta_s_q_r=0.34, coverage=0.76, lambda_state="recursive",
    )
    assert fields_of(event_of(ascii_only)) == fields_of(event_of(PLAYBOOK_EVENT))


@pytest.mark.parametrize("index", range(4))
def test_lambda_symbols_index_lambda_states(index: int) -> None:
    symbol = ["→", "←", "<>", "×"][index]
    assert event_of(with_retrieval({"λ_state": symbol})).lambda_state == index


@pytest.mark.parametrize(
    "both",
    [
        {"INDEX_HASH": "0x1", "index_hash": "0x1"},
        {"ΔS_q_r": 0.2, "delta_s_q_r": 0.2},
        {"λ_state": "→", "lambda_state": "convergent"},
        {"λ_state": "→", "lambda_state": "→"},
    ],
)
def test_alias_and_canonical_together_is_a_schema_violation(both: dict[str, Any]) -> None:
    err = error_of(encode(with_retrieval(both)))
    assert err.reason is DeadLetterReason.SCHEMA
    assert "$.retrieval." in err.detail
    assert err.variant == "canary-v2"


def test_unknown_lambda_word_is_rejected() -> None:
    err = error_of(encode(with_retrieval(lambda_state="sideways")))
    assert err.reason is DeadLetterReason.SCHEMA
    assert "$.retrieval.lambda_state" in err.detail


# --- dead-letter reasons ---------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"not json",
        b"{",
        b'{"ts": }',
        b"\xff\xfe{}",
        b"NaN",
        b'{"status": Infinity}',
        # Type errors come before the syntax error: still not JSON.
        b"[1, 2",
        b'{"a": 1} trailing',
        b'{"ts": 5, "route": ',
        # Bad UTF-8 inside a string: msgspec raises UnicodeDecodeError for it.
        b'{"ts": "2025-08-27T06:30:00\xffZ"}',
        b'"\xff"',
    ],
)
def test_not_json_is_invalid_json(raw: bytes) -> None:
    err = error_of(raw)
    assert err.reason is DeadLetterReason.INVALID_JSON
    assert err.raw == raw


@pytest.mark.parametrize("doc", [[], 1, "x", None, True, [PLAYBOOK_EVENT]])
def test_json_that_is_not_an_object_is_a_schema_violation(doc: object) -> None:
    assert error_of(encode(doc)).reason is DeadLetterReason.SCHEMA


def test_too_large_message() -> None:
    raw = encode(with_changes(padding="x" * 2048))
    err = error_of(raw, max_bytes=1024)
    assert err.reason is DeadLetterReason.TOO_LARGE
    assert "1024" in err.detail
    assert err.variant == "canary-v2"
    # A message exactly at the limit is decoded normally.
    assert isinstance(decode(raw, max_bytes=len(raw)), Event)


def test_too_large_default_limit_is_one_mebibyte() -> None:
    raw = encode(with_changes(padding="x" * (1 << 20)))
    assert error_of(raw).reason is DeadLetterReason.TOO_LARGE


def test_too_large_without_a_readable_variant() -> None:
    err = error_of(b"[" + b"1," * 1000 + b"1]", max_bytes=100)
    assert err.reason is DeadLetterReason.TOO_LARGE
    assert err.variant is None


# --- the failing field is named --------------------------------------------------


@pytest.mark.parametrize(
    ("obj", "path"),
    [
        (with_changes(latency_ms={"tffb": 1, "tusable": 2, "tfinal": "9"}), "$.latency_ms.tfinal"),
        (with_changes(latency_ms={"tffb": 1, "tusable": 2, "tfinal": -1}), "$.latency_ms.tfinal"),
        (with_changes(status=600), "$.status"),
        (with_changes(status=99), "$.status"),
        (with_changes(status=200.5), "$.status"),
        (with_changes(status="200"), "$.status"),
        (with_changes(status=True), "$.status"),
        (with_changes(cold_start=0), "$.cold_start"),
        (with_changes(route=""), "$.route"),
        (with_changes(ts="yesterday"), "$.ts"),
        (with_changes(failure_phase="trailers"), "$.failure_phase"),
        (with_retrieval(coverage=1.01), "$.retrieval.coverage"),
        (with_retrieval({"ΔS_q_r": -0.1}), "$.retrieval.ΔS_q_r"),
        (with_retrieval(k=2.5), "$.retrieval.k"),
        (with_changes(probe={"question_id": "q", "topic": "t", "paraphrase": 1.5, "seed": 1}),
         "$.probe.paraphrase"),
        (with_changes(egress={"tries": "1"}), "$.egress.tries"),
        (with_changes(cache={"prefix": "v1:", "hit": "yes"}), "$.cache.hit"),
        (with_changes(cache="v1:"), "$.cache"),
    ],
)
def test_schema_violation_names_the_field(obj: dict[str, Any], path: str) -> None:
    err = error_of(encode(obj))
    assert err.reason is DeadLetterReason.SCHEMA
    assert f"`{path}`" in err.detail


def test_missing_field_is_named() -> None:
    err = error_of(encode(with_changes(latency_ms={"tffb": 1, "tusable": 2})))
    assert err.reason is DeadLetterReason.SCHEMA
    assert "`tfinal`" in err.detail and "$.latency_ms" in err.detail

    err = error_of(encode(with_changes(ts=...)))
    assert err.reason is DeadLetterReason.SCHEMA
    assert "`ts`" in err.detail


# --- variant attribution ---------------------------------------------------------


def test_schema_violation_is_attributed_to_its_variant() -> None:
    err = error_of(encode(with_changes(status=0)))
    assert err.variant == "canary-v2"


def test_schema_violation_without_a_usable_variant() -> None:
    assert error_of(encode(with_changes(variant=...))).variant is None
    assert error_of(encode(with_changes(variant=""))).variant is None
    assert error_of(encode(with_changes(variant=7))).variant is None


def test_invalid_json_with_a_readable_variant_is_attributed() -> None:
    raw = b'{"ts": "2025-08-27T06:30:00Z", "variant" : "canary-v2", "status": 20'
    err = error_of(raw)
    assert err.reason is DeadLetterReason.INVALID_JSON
    assert err.variant == "canary-v2"


def test_invalid_utf8_is_invalid_json_and_still_attributed() -> None:
    raw = encode(PLAYBOOK_EVENT).replace(b'"h34"', b'"h\xff34"')
    err = error_of(raw)
    assert err.reason is DeadLetterReason.INVALID_JSON
    assert err.variant == "canary-v2"
    bad_variant = error_of(encode(PLAYBOOK_EVENT).replace(b'"canary-v2"', b'"canary\xff"'))
    assert bad_variant.reason is DeadLetterReason.INVALID_JSON
    assert bad_variant.variant == "canary\ufffd"


def test_invalid_json_without_a_variant_is_not_attributed() -> None:
    err = error_of(b'{"ts": "2025-08-27T06:30:00Z", "status": }')
    assert err.reason is DeadLetterReason.INVALID_JSON
    assert err.variant is None


# --- numbers ---------------------------------------------------------------------


@pytest.mark.parametrize("status", [200.0, 599.0, 100.0])
def test_integral_float_status_is_an_integer(status: float) -> None:
    e = event_of(with_changes(status=status))
    assert e.status == int(status) and type(e.status) is int


@pytest.mark.parametrize("literal", [b"200.0", b"2e2", b"2.00E+2", b"20000e-2"])
def test_integral_status_literals(literal: bytes) -> None:
    raw = encode(PLAYBOOK_EVENT).replace(b'"status": 200', b'"status": ' + literal)
    out = decode(raw)
    assert isinstance(out, Event) and out.status == 200


def test_integral_floats_in_other_integer_fields() -> None:
    e = event_of(with_changes(
        retrieval={"k": 10.0},
        probe={"question_id": "q", "topic": "t", "paraphrase": 3.0, "seed": -1.0},
        egress={"tries": 2.0},
    ))
    assert (e.probe_paraphrase, e.probe_seed) == (3, -1)
    assert type(e.probe_paraphrase) is int and type(e.probe_seed) is int


def test_number_beyond_float_range_is_a_schema_violation() -> None:
    raw = encode(with_changes(latency_ms={"tffb": 1, "tusable": 1, "tfinal": 1})).replace(
        b'"tfinal": 1', b'"tfinal": 1e400'
    )
    err = error_of(raw)
    assert err.reason is DeadLetterReason.SCHEMA
    assert "$.latency_ms.tfinal" in err.detail


@pytest.mark.parametrize("value", [0, 0.0, 1, 1.0])
def test_unit_interval_bounds_are_inclusive(value: float) -> None:
    e = event_of(with_retrieval(coverage=value, delta_s_q_r=value))
    assert e.coverage == value and e.delta_s == value


# --- timestamps ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2025-08-27T06:30:00Z", datetime(2025, 8, 27, 6, 30, tzinfo=UTC)),
        ("2025-08-27t06:30:00z", datetime(2025, 8, 27, 6, 30, tzinfo=UTC)),
        ("2025-08-27T08:30:00+02:00", datetime(2025, 8, 27, 6, 30, tzinfo=UTC)),
        ("2025-08-27T01:00:00-05:30", datetime(2025, 8, 27, 6, 30, tzinfo=UTC)),
        ("2025-08-27T06:30:00.250Z", datetime(2025, 8, 27, 6, 30, 0, 250000, tzinfo=UTC)),
        ("2024-02-29T00:00:00Z", datetime(2024, 2, 29, tzinfo=UTC)),
    ],
)
def test_rfc3339_timestamps(text: str, expected: datetime) -> None:
    assert parse_ts(text) == expected.timestamp()
    assert event_of(with_changes(ts=text)).ts == expected.timestamp()


@pytest.mark.parametrize(
    "text",
    [
        "2025-08-27T06:30:00",  # no offset
        "2025-13-01T00:00:00Z",  # month 13
        "2025-02-30T00:00:00Z",  # Feb 30
        "2025-02-29T00:00:00Z",  # not a leap year
        "2025-00-10T00:00:00Z",
        "2025-08-27T24:00:00Z",
        "2025-08-27T06:60:00Z",
        "2025-08-27T06:30:60Z",  # leap seconds are not accepted
        "2025-08-27T06:30:00+24:00",
        "2025-08-27T06:30:00+05:60",
        "2025-08-27T06:30:00+0200",
        "2025-08-27 06:30:00Z",
        "2025-08-27T06:30Z",
        "2025-08-27T06:30:00.Z",
        "2025-08-27",
        "0000-01-01T00:00:00Z",
        "2025-08-27T06:30:00Z\n",
        " 2025-08-27T06:30:00Z",
        "٢٠٢٥-08-27T06:30:00Z",  # non-ASCII digits
        "",
    ],
)
def test_bad_timestamps_are_rejected(text: str) -> None:
    with pytest.raises(ValueError, match=r"RFC 3339|range|must be|Invalid|offset"):
        parse_ts(text)
    err = error_of(encode(with_changes(ts=text)))
    assert err.reason is DeadLetterReason.SCHEMA
    assert "$.ts" in err.detail


# --- unknown fields --------------------------------------------------------------


def test_unknown_fields_are_ignored_everywhere() -> None:
    noisy = copy.deepcopy(PLAYBOOK_EVENT)
    noisy["schema_version"] = 1
    noisy["trace"] = {"span": [1, 2, {"x": None}]}
    noisy["latency_ms"]["tqueue"] = 4
    noisy["retrieval"]["reranker"] = "bge"
    noisy["cache"]["ttl_s"] = 60
    noisy["egress"]["age_ms"] = None
    noisy["probe"] = {"question_id": "q", "topic": "t", "paraphrase": 0, "seed": 0, "lang": "de"}
    plain = copy.deepcopy(PLAYBOOK_EVENT)
    plain["probe"] = {"question_id": "q", "topic": "t", "paraphrase": 0, "seed": 0}
    assert fields_of(event_of(noisy)) == fields_of(event_of(plain))


def test_alias_like_keys_elsewhere_are_just_unknown_fields() -> None:
    e = event_of(with_changes(index_hash="top-level", lambda_state=None))
    assert e.index_hash == "0x9a77"


# --- batches ---------------------------------------------------------------------


def test_decode_batch_keeps_order_and_never_raises() -> None:
    lines = [encode(PLAYBOOK_EVENT), b"{", encode(with_changes(status=700))]
    out = decode_batch(lines)
    assert isinstance(out[0], Event)
    assert isinstance(out[1], DecodeError) and out[1].reason is DeadLetterReason.INVALID_JSON
    assert isinstance(out[2], DecodeError) and out[2].reason is DeadLetterReason.SCHEMA
