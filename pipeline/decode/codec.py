"""Bytes -> Event | DecodeError, per docs/events.md and schemas/telemetry.schema.json.

The hot path validates with msgspec structs built from `rules` (C speed, no
per-event jsonschema) plus a few explicit checks msgspec cannot express, with
their bounds and names from `rules` too: RFC 3339 timestamps (`timestamps`),
integral floats for integer fields (JSON Schema's ``integer`` accepts ``2.0``),
the bounds of integer fields (status, probe paraphrase and seed), and
alias/canonical pairs that must not both be present.  A
property test keeps this decoder and the JSON Schema in agreement.
"""

from __future__ import annotations

import json
import re
from typing import Any

import msgspec
from msgspec import UNSET, Struct

from pipeline.decode import rules
from pipeline.decode.timestamps import parse_ts
from pipeline.model import DeadLetterReason, DecodeError, Event

_LAMBDA_INDEX = rules.LAMBDA_CODES  # symbols and words -> index into LAMBDA_STATES
_STATUS_MIN, _STATUS_MAX = rules.STATUS_RANGE
_PARAPHRASE_MIN, _PARAPHRASE_MAX = rules.INT_BOUNDS["probe.paraphrase"]  # signed 64-bit, as frames hold them
_SEED_MIN, _SEED_MAX = rules.INT_BOUNDS["probe.seed"]

# The message's structs, built from the rules: the attribute of a field is its JSON name
# (`delta_s` for ΔS_q_r, `lam` for λ_state, see rules.Rule.attr).
_Telemetry: Any = rules.msgspec_struct("_Telemetry", rules.MESSAGE)


class _Readable(Struct):
    """What is still read from a message that breaks the schema (any types)."""

    variant: object = None
    ts: object = None
    route: object = None
    x_exp: object = None


_decoder = msgspec.json.Decoder(_Telemetry)
_readable_decoder = msgspec.json.Decoder(_Readable)
# msgspec recurses once per nesting level and raises RecursionError past the
# interpreter's limit (about 1,000 levels); RFC 8259 section 9 lets a parser bound
# nesting, so such a message is dead-lettered as invalid_json with this detail.
_TOO_DEEP = "JSON nested too deeply to decode (more levels than the decoder allows)"
_VARIANT_TEXT = re.compile(rb'"variant"\s*:\s*"([^"\\]{1,256})"')
_TS_TEXT = re.compile(rb'"ts"\s*:\s*"([0-9A-Za-z:.+-]{1,64})"')


class SchemaViolation(ValueError):
    """An event that parses as JSON but breaks the schema; names the field."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{problem} - at `{path}`")


def _integer(value: int | float, path: str) -> int:
    if type(value) is int:
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise SchemaViolation(path, f"Expected `int`, got `float` {value!r}")


def _one_of(canonical: object, alias: object, path: str, alias_name: str) -> object:
    if canonical is UNSET:
        return alias
    if alias is not UNSET:
        raise SchemaViolation(path, f"both `{alias_name}` and its canonical field are present")
    return canonical


def _to_event(t: Any, raw: bytes) -> Event:
    """The Event of a decoded message, after the checks its struct cannot make.

    Written out field by field (this runs once per event); tests/test_rules.py
    holds it to `rules.EVENT_SOURCES` and the integer and alias rules.
    """
    try:
        ts = parse_ts(t.ts)
    except ValueError as exc:
        raise SchemaViolation("$.ts", str(exc)) from None
    status = t.status
    if type(status) is not int:
        status = _integer(status, "$.status")
    if not _STATUS_MIN <= status <= _STATUS_MAX:
        raise SchemaViolation("$.status", f"Expected `int` in {_STATUS_MIN}..{_STATUS_MAX}, got {status}")

    r = t.retrieval
    if r is UNSET:
        has_retrieval = False
        index_hash = metric = analyzer = None
        delta_s = coverage = None
        lam = -1
    else:
        has_retrieval = True
        if r.k is not UNSET and type(r.k) is not int:
            _integer(r.k, "$.retrieval.k")
        ih = r.INDEX_HASH
        ds = r.delta_s
        ls = r.lam
        if r.index_hash is not UNSET or r.delta_s_q_r is not UNSET or r.lambda_state is not UNSET:
            ih = _one_of(ih, r.index_hash, "$.retrieval.index_hash", "index_hash")
            ds = _one_of(ds, r.delta_s_q_r, "$.retrieval.delta_s_q_r", "delta_s_q_r")
            ls = _one_of(ls, r.lambda_state, "$.retrieval.lambda_state", "lambda_state")
        index_hash = None if ih is UNSET else ih
        metric = None if r.metric is UNSET else r.metric
        analyzer = None if r.analyzer is UNSET else r.analyzer
        delta_s = None if ds is UNSET else ds
        coverage = None if r.coverage is UNSET else r.coverage
        lam = -1 if ls is UNSET else _LAMBDA_INDEX[ls]

    p = t.probe
    if p is UNSET:
        question = topic = None
        paraphrase = seed = 0
    else:
        question, topic = p.question_id, p.topic
        paraphrase = (p.paraphrase if type(p.paraphrase) is int
                      else _integer(p.paraphrase, "$.probe.paraphrase"))
        if not _PARAPHRASE_MIN <= paraphrase <= _PARAPHRASE_MAX:
            raise SchemaViolation("$.probe.paraphrase",
                                  f"Expected `int` in {_PARAPHRASE_MIN}..{_PARAPHRASE_MAX}, got {paraphrase}")
        seed = p.seed if type(p.seed) is int else _integer(p.seed, "$.probe.seed")
        if not _SEED_MIN <= seed <= _SEED_MAX:
            raise SchemaViolation("$.probe.seed", f"Expected `int` in {_SEED_MIN}..{_SEED_MAX}, got {seed}")

    e = t.egress
    if e is not UNSET and e.tries is not UNSET and type(e.tries) is not int:
        _integer(e.tries, "$.egress.tries")

    c = t.cache
    lat = t.latency_ms
    rid = t.request_id
    phase = t.failure_phase
    # Positional: this runs once per event and keyword passing costs a third more.
    return Event(
        ts, t.route, t.variant, t.sticky, t.region, t.cold_start, t.x_warm,
        None if rid is UNSET else rid,
        lat.tffb, lat.tusable, lat.tfinal, status,
        None if phase is UNSET else phase,
        has_retrieval, index_hash, metric, analyzer, delta_s, coverage, lam,
        question, topic, paraphrase, seed,
        None if c is UNSET else c.prefix,
        None if c is UNSET else c.hit,
        None if (x := t.x_exp) is UNSET else x,
        raw,
    )


def _readable(raw: bytes) -> tuple[str | None, float | None]:
    """The variant and event time of a broken message, where they can still be read."""
    try:
        found = _readable_decoder.decode(raw)
        variant = found.variant if isinstance(found.variant, str) and found.variant else None
        ts_text = found.ts if isinstance(found.ts, str) else None
    # msgspec raises UnicodeDecodeError for bad UTF-8, RecursionError for deep nesting
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        m = _VARIANT_TEXT.search(raw)
        variant = m.group(1).decode("utf-8", errors="replace") if m else None
        t = _TS_TEXT.search(raw)
        ts_text = t.group(1).decode("ascii", errors="replace") if t else None
    try:
        ts = parse_ts(ts_text) if ts_text is not None else None
    except ValueError:
        ts = None
    return variant, ts


def _text_field(name: bytes) -> re.Pattern[bytes]:
    return re.compile(rb'"' + name + rb'"\s*:\s*"([^"\\]{1,256})"')


_ROUTE_TEXT = _text_field(b"route")
_X_EXP_TEXT = _text_field(b"x_exp")


def readable_routing(raw: bytes) -> tuple[str | None, str | None, str | None]:
    """The x_exp, route and variant of a broken message, where they can still be read (fleet routing)."""
    def text(value: object) -> str | None:
        return value if isinstance(value, str) and value else None

    try:
        found = _readable_decoder.decode(raw)
        return text(found.x_exp), text(found.route), text(found.variant)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        got = [p.search(raw) for p in (_X_EXP_TEXT, _ROUTE_TEXT, _VARIANT_TEXT)]
        x_exp, route, variant = (m.group(1).decode("utf-8", errors="replace") if m else None for m in got)
        return x_exp, route, variant


def _failure(raw: bytes, reason: DeadLetterReason, detail: str, readable: bytes | None = None) -> DecodeError:
    variant, ts = _readable(raw if readable is None else readable)
    return DecodeError(raw, reason, detail, variant, ts)


def _reject_constant(name: str) -> float:
    """json.loads hook: NaN, Infinity and -Infinity are not JSON."""
    raise ValueError(f"{name} is not a JSON number")


def _syntax_error(raw: bytes) -> str | None:
    """Why raw is not JSON at all, or None when it is (numbers beyond float range are JSON)."""
    try:
        msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        if "out of range" not in str(exc):
            return str(exc)
        # msgspec stops at the number it cannot hold, before the rest is read:
        # the standard parser checks the rest (numbers unconverted, NaN refused).
        try:
            json.loads(raw.decode("utf-8"), parse_float=len, parse_int=len,
                       parse_constant=_reject_constant)
        except RecursionError:
            return _TOO_DEEP
        except ValueError as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            return f"JSON is malformed: {err}"
        return None
    except UnicodeDecodeError as exc:
        return f"not UTF-8: {exc}"
    except RecursionError:
        return _TOO_DEEP
    return None


def decode(raw: bytes, max_bytes: int = 1_048_576) -> Event | DecodeError:
    """Decode one message; never raises for bad input."""
    if len(raw) > max_bytes:
        return _failure(raw, DeadLetterReason.TOO_LARGE,
                        f"message of {len(raw)} bytes exceeds limits.max_event_bytes={max_bytes}",
                        readable=raw[:65536])
    try:
        return _to_event(_decoder.decode(raw), raw)
    except msgspec.ValidationError as exc:
        # msgspec stops at the first type error, before it has read the whole
        # message (`[1, 2` fails as "Expected `object`"): a schema matter only if it is JSON.
        syntax = _syntax_error(raw)
        if syntax is not None:
            return _failure(raw, DeadLetterReason.INVALID_JSON, syntax)
        return _failure(raw, DeadLetterReason.SCHEMA, str(exc))
    except SchemaViolation as exc:
        return _failure(raw, DeadLetterReason.SCHEMA, str(exc))
    except UnicodeDecodeError as exc:  # msgspec raises it, not DecodeError, for bad UTF-8 in a string
        return _failure(raw, DeadLetterReason.INVALID_JSON, f"not UTF-8: {exc}")
    except RecursionError:  # skipping a deeply nested unknown field recurses too
        return _failure(raw, DeadLetterReason.INVALID_JSON, _TOO_DEEP)
    except msgspec.DecodeError as exc:
        detail = str(exc)
        # Valid JSON that msgspec refuses (e.g. numbers beyond float range) is a schema matter.
        if "out of range" in detail:
            syntax = _syntax_error(raw)
            if syntax is not None:
                return _failure(raw, DeadLetterReason.INVALID_JSON, syntax)
            return _failure(raw, DeadLetterReason.SCHEMA, detail)
        return _failure(raw, DeadLetterReason.INVALID_JSON, detail)


def decode_batch(lines: list[bytes], max_bytes: int = 1_048_576) -> list[Event | DecodeError]:
    """Decode a micro-batch in order."""
    return [decode(line, max_bytes) for line in lines]


__all__ = ["SchemaViolation", "decode", "decode_batch", "parse_ts", "readable_routing"]
