"""Bytes -> Event | DecodeError, per SPEC section 1 and schemas/telemetry.schema.json.

The hot path validates with msgspec structs (C speed, no per-event jsonschema)
plus a few explicit checks msgspec cannot express: RFC 3339 timestamps,
integral floats for integer fields (JSON Schema's ``integer`` accepts ``2.0``),
and alias/canonical pairs that must not both be present.  A property test keeps
this decoder and the JSON Schema in agreement.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Literal

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType, field

from pipeline.model import LAMBDA_STATES, DeadLetterReason, DecodeError, Event

NonNegative = Annotated[float, Meta(ge=0)]
Unit = Annotated[float, Meta(ge=0, le=1)]
Label = Annotated[str, Meta(min_length=1)]
Integer = int | float  # integral floats are integers in JSON Schema; checked below
LambdaWord = Literal["→", "←", "<>", "×", "convergent", "divergent", "recursive", "chaotic"]

_LAMBDA_INDEX = {s: i for i, s in enumerate(LAMBDA_STATES)}
_LAMBDA_INDEX.update({"convergent": 0, "divergent": 1, "recursive": 2, "chaotic": 3})

# RFC 3339 date-time (ASCII digits); the calendar (Feb 30, month 13) is checked by
# datetime, but datetime takes offset minutes up to 99 (+05:60), so the offset is
# bounded here.  schemas/telemetry.schema.json mirrors this pattern.
_RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?"
    r"(?:[Zz]|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])"
)


class _Latency(Struct):
    tffb: NonNegative
    tusable: NonNegative
    tfinal: NonNegative


class _Retrieval(Struct):
    k: Integer | UnsetType = UNSET
    metric: str | UnsetType = UNSET
    analyzer: str | UnsetType = UNSET
    INDEX_HASH: str | UnsetType = UNSET
    index_hash: str | UnsetType = UNSET
    delta_s: Unit | UnsetType = field(default=UNSET, name="ΔS_q_r")
    delta_s_q_r: Unit | UnsetType = UNSET
    coverage: Unit | UnsetType = UNSET
    lam: LambdaWord | UnsetType = field(default=UNSET, name="λ_state")
    lambda_state: LambdaWord | UnsetType = UNSET


class _Probe(Struct):
    question_id: str
    topic: str
    paraphrase: Integer
    seed: Integer


class _Cache(Struct):
    prefix: str
    hit: bool


class _Egress(Struct):
    webhook: str | UnsetType = UNSET
    tries: Integer | UnsetType = UNSET
    dedupe_key: str | UnsetType = UNSET


class _Telemetry(Struct):
    ts: str
    route: Label
    variant: Label
    sticky: Label
    region: Label
    cold_start: bool
    latency_ms: _Latency
    status: Integer
    edge_pop: str | UnsetType = UNSET
    x_warm: bool = False
    x_exp: str | UnsetType = UNSET
    request_id: str | UnsetType = UNSET
    failure_phase: Literal["headers", "body"] | UnsetType = UNSET
    retrieval: _Retrieval | UnsetType = UNSET
    probe: _Probe | UnsetType = UNSET
    cache: _Cache | UnsetType = UNSET
    egress: _Egress | UnsetType = UNSET


class _VariantOnly(Struct):
    variant: str | UnsetType = UNSET


_decoder = msgspec.json.Decoder(_Telemetry)
_variant_decoder = msgspec.json.Decoder(_VariantOnly)
_VARIANT_TEXT = re.compile(rb'"variant"\s*:\s*"([^"\\]{1,256})"')


class SchemaViolation(ValueError):
    """An event that parses as JSON but breaks the schema; names the field."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{problem} - at `{path}`")


def parse_ts(text: str) -> float:
    """RFC 3339 timestamp -> seconds since the epoch; ValueError if not RFC 3339."""
    if not _RFC3339.fullmatch(text):
        raise ValueError(f"not an RFC 3339 date-time: {text!r}")
    moment = datetime.fromisoformat(text.upper())
    return moment.timestamp()


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


def _to_event(t: _Telemetry) -> Event:
    try:
        ts = parse_ts(t.ts)
    except ValueError as exc:
        raise SchemaViolation("$.ts", str(exc)) from None
    status = _integer(t.status, "$.status")
    if not 100 <= status <= 599:
        raise SchemaViolation("$.status", f"Expected `int` in 100..599, got {status}")

    index_hash = metric = analyzer = None
    delta_s = coverage = None
    lam = -1
    r = t.retrieval
    has_retrieval = r is not UNSET
    if r is not UNSET:
        if r.k is not UNSET:
            _integer(r.k, "$.retrieval.k")
        ih = _one_of(r.INDEX_HASH, r.index_hash, "$.retrieval.index_hash", "index_hash")
        ds = _one_of(r.delta_s, r.delta_s_q_r, "$.retrieval.delta_s_q_r", "delta_s_q_r")
        ls = _one_of(r.lam, r.lambda_state, "$.retrieval.lambda_state", "lambda_state")
        index_hash = None if ih is UNSET else ih
        metric = None if r.metric is UNSET else r.metric
        analyzer = None if r.analyzer is UNSET else r.analyzer
        delta_s = None if ds is UNSET else ds
        coverage = None if r.coverage is UNSET else r.coverage
        lam = -1 if ls is UNSET else _LAMBDA_INDEX[ls]  # type: ignore[index]

    question = topic = None
    paraphrase = seed = 0
    p = t.probe
    if p is not UNSET:
        question, topic = p.question_id, p.topic
        paraphrase = _integer(p.paraphrase, "$.probe.paraphrase")
        seed = _integer(p.seed, "$.probe.seed")

    e = t.egress
    if e is not UNSET and e.tries is not UNSET:
        _integer(e.tries, "$.egress.tries")

    c = t.cache
    lat = t.latency_ms
    return Event(
        ts=ts,
        route=t.route,
        variant=t.variant,
        sticky=t.sticky,
        region=t.region,
        cold_start=t.cold_start,
        x_warm=t.x_warm,
        request_id=None if t.request_id is UNSET else t.request_id,
        tffb=lat.tffb,
        tusable=lat.tusable,
        tfinal=lat.tfinal,
        status=status,
        failure_phase=None if t.failure_phase is UNSET else t.failure_phase,
        has_retrieval=has_retrieval,
        index_hash=index_hash,  # type: ignore[arg-type]
        metric=metric,
        analyzer=analyzer,
        delta_s=delta_s,  # type: ignore[arg-type]
        coverage=coverage,
        lambda_state=lam,
        probe_question=question,
        probe_topic=topic,
        probe_paraphrase=paraphrase,
        probe_seed=seed,
        cache_prefix=None if c is UNSET else c.prefix,
        cache_hit=None if c is UNSET else c.hit,
    )


def _readable_variant(raw: bytes) -> str | None:
    try:
        found = _variant_decoder.decode(raw).variant
    except (msgspec.DecodeError, UnicodeDecodeError):  # msgspec raises the latter for bad UTF-8
        m = _VARIANT_TEXT.search(raw)
        return m.group(1).decode("utf-8", errors="replace") if m else None
    return found if isinstance(found, str) and found else None


def _syntax_error(raw: bytes) -> str | None:
    """Why raw is not JSON at all, or None when it is (numbers beyond float range are JSON)."""
    try:
        msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        return None if "out of range" in str(exc) else str(exc)
    except UnicodeDecodeError as exc:
        return f"not UTF-8: {exc}"
    return None


def decode(raw: bytes, max_bytes: int = 1_048_576) -> Event | DecodeError:
    """Decode one message; never raises for bad input."""
    if len(raw) > max_bytes:
        return DecodeError(
            raw[:max_bytes], DeadLetterReason.TOO_LARGE,
            f"message of {len(raw)} bytes exceeds limits.max_event_bytes={max_bytes}",
            _VARIANT_TEXT.search(raw[:65536]) and _readable_variant(raw[:65536]),
        )
    try:
        event = _to_event(_decoder.decode(raw))
        event.raw = raw
        return event
    except msgspec.ValidationError as exc:
        # msgspec stops at the first type error, before it has read the whole
        # message (`[1, 2` fails as "Expected `object`"): a schema matter only if it is JSON.
        syntax = _syntax_error(raw)
        if syntax is not None:
            return DecodeError(raw, DeadLetterReason.INVALID_JSON, syntax, _readable_variant(raw))
        return DecodeError(raw, DeadLetterReason.SCHEMA, str(exc), _readable_variant(raw))
    except SchemaViolation as exc:
        return DecodeError(raw, DeadLetterReason.SCHEMA, str(exc), _readable_variant(raw))
    except UnicodeDecodeError as exc:  # msgspec raises it, not DecodeError, for bad UTF-8 in a string
        return DecodeError(raw, DeadLetterReason.INVALID_JSON, f"not UTF-8: {exc}", _readable_variant(raw))
    except msgspec.DecodeError as exc:
        reason = DeadLetterReason.INVALID_JSON
        detail = str(exc)
        # Valid JSON that msgspec refuses (e.g. numbers beyond float range) is a schema matter.
        if "out of range" in detail:
            reason = DeadLetterReason.SCHEMA
        return DecodeError(raw, reason, detail, _readable_variant(raw))


def decode_batch(lines: list[bytes], max_bytes: int = 1_048_576) -> list[Event | DecodeError]:
    """Decode a micro-batch in order."""
    return [decode(line, max_bytes) for line in lines]
