"""The telemetry schema's acceptance rules as data: one home for every field of a message.

Each field of a message (schema v1, docs/events.md) is one `Rule`: its
canonical JSON name and ASCII alias, its type, whether it is required, its
bounds or allowed values, whether it is a label (a non-empty string), whether
its text has few distinct values (dictionary-encoded: polars Categorical), and
the `Event` field it becomes.  Each object of the message is one `Block` of
rules.  `MESSAGE` lists them in the message's canonical order.

Everything that accepts or types a message is derived from this table:

* `codec` builds its msgspec structs from it (`msgspec_struct`) and takes its
  bounds, aliases and λ codes from it;
* `columns` builds the Parquet layouts, the column-wise checks and the
  mapping to `frame.SCHEMA` from it; the Parquet writer
  (`replay/parquet.py`) types its columns by it;
* `frame.SCHEMA` takes each Event column's dtype from it (`FRAME_DTYPES`);
* tests/test_rules.py holds schemas/telemetry.schema.json, the codec's
  structs and its Event mapping to it.

Adding a field is one `Rule` here and its entry in schemas/ and
docs/events.md; when the gates need it, also one field of `model.Event` and
its line in `codec._to_event` (tests/test_rules.py fails until all agree).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import msgspec
import polars as pl
from msgspec import UNSET, Meta, UnsetType

from pipeline.model import LAMBDA_STATES

Kind = Literal["ts", "str", "bool", "int", "float"]

MAX_FLOAT = sys.float_info.max  # JSON numbers are finite: the largest a float holds
# Integers the Event keeps are signed 64-bit: the frame, Parquet and the stream hold the same values.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
LAMBDA_WORDS = ("convergent", "divergent", "recursive", "chaotic")  # ASCII words, in LAMBDA_STATES' order
# symbols and words -> index into LAMBDA_STATES
LAMBDA_CODES: Mapping[str, int] = {
    **{s: i for i, s in enumerate(LAMBDA_STATES)}, **{w: i for i, w in enumerate(LAMBDA_WORDS)},
}


@dataclass(frozen=True)
class Rule:
    """One field of the message and what is accepted in it.

    `lo`/`hi` bound a number (inclusive; a float is also finite; an integer
    the Event keeps is bounded to signed 64 bits, as frames hold it); `values`
    are the allowed strings; `codes` maps them to the integer the Event holds
    (else the Event holds the value itself).  `absent` is the Event's value
    when the field is missing (`default` is the value the message means by a
    missing field, as the schema's `default`).  `attr` names the field in the
    decoder's struct when the JSON name is not an ASCII identifier.
    """

    name: str
    kind: Kind
    required: bool = False
    label: bool = False  # non-empty string (the schema's $defs/label)
    dictionary: bool = False  # few distinct values: Categorical in frames and Parquet
    lo: float | None = None
    hi: float | None = None
    values: tuple[str, ...] = ()
    codes: Mapping[str, int] | None = None
    alias: str | None = None
    event: str | None = None
    absent: Any = None
    default: Any = None
    attr: str | None = None

    @property
    def key(self) -> str:
        """The decoder struct's attribute name for the canonical field."""
        return self.attr or self.name


@dataclass(frozen=True)
class Block:
    """An object of the message ("block") and its fields.

    `presence` names the Event field that says whether the message had the
    block (None: the Event does not record it).
    """

    name: str
    fields: tuple[Rule, ...]
    required: bool = False
    presence: str | None = None

    @property
    def required_fields(self) -> tuple[str, ...]:
        return tuple(r.name for r in self.fields if r.required)


_LAMBDA = (*LAMBDA_STATES, *LAMBDA_WORDS)

# The message in its canonical order (the Parquet layouts' column order).
MESSAGE: tuple[Rule | Block, ...] = (
    Rule("ts", "ts", required=True, event="ts"),
    Rule("route", "str", required=True, label=True, dictionary=True, event="route"),
    Rule("variant", "str", required=True, label=True, dictionary=True, event="variant"),
    Rule("sticky", "str", required=True, label=True, event="sticky"),
    Rule("region", "str", required=True, label=True, dictionary=True, event="region"),
    Rule("edge_pop", "str", dictionary=True),
    Rule("x_exp", "str", dictionary=True, event="x_exp"),
    Rule("request_id", "str", event="request_id"),
    Rule("cold_start", "bool", required=True, event="cold_start"),
    Rule("x_warm", "bool", event="x_warm", absent=False, default=False),
    Block("latency_ms", (
        Rule("tffb", "float", required=True, lo=0, event="tffb"),
        Rule("tusable", "float", required=True, lo=0, event="tusable"),
        Rule("tfinal", "float", required=True, lo=0, event="tfinal"),
    ), required=True),
    Rule("status", "int", required=True, lo=100, hi=599, event="status"),
    Rule("failure_phase", "str", dictionary=True, values=("headers", "body"), event="failure_phase"),
    Block("retrieval", (
        Rule("k", "int"),
        Rule("metric", "str", dictionary=True, event="metric"),
        Rule("analyzer", "str", dictionary=True, event="analyzer"),
        Rule("INDEX_HASH", "str", dictionary=True, alias="index_hash", event="index_hash"),
        Rule("ΔS_q_r", "float", lo=0, hi=1, alias="delta_s_q_r", event="delta_s", attr="delta_s"),
        Rule("coverage", "float", lo=0, hi=1, event="coverage"),
        Rule("λ_state", "str", dictionary=True, values=_LAMBDA, codes=LAMBDA_CODES, alias="lambda_state",
             event="lambda_state", absent=-1, attr="lam"),
    ), presence="has_retrieval"),
    Block("probe", (
        Rule("question_id", "str", required=True, dictionary=True, event="probe_question"),
        Rule("topic", "str", required=True, dictionary=True, event="probe_topic"),
        Rule("paraphrase", "int", required=True, lo=INT64_MIN, hi=INT64_MAX, event="probe_paraphrase",
             absent=0),
        Rule("seed", "int", required=True, lo=INT64_MIN, hi=INT64_MAX, event="probe_seed", absent=0),
    )),
    Block("cache", (
        Rule("prefix", "str", required=True, dictionary=True, event="cache_prefix"),
        Rule("hit", "bool", required=True, event="cache_hit"),
    )),
    Block("egress", (
        Rule("webhook", "str", dictionary=True),
        Rule("tries", "int"),
        Rule("dedupe_key", "str"),
    )),
)

BLOCKS: dict[str, Block] = {b.name: b for b in MESSAGE if isinstance(b, Block)}
TOP: dict[str, Rule] = {r.name: r for r in MESSAGE if isinstance(r, Rule)}
REQUIRED: tuple[str, ...] = tuple(item.name for item in MESSAGE if item.required)


def leaves() -> Iterator[tuple[str, Rule]]:
    """(JSON path without `$.`, rule) of every field, blocks' fields dotted, in message order."""
    for item in MESSAGE:
        if isinstance(item, Block):
            for rule in item.fields:
                yield f"{item.name}.{rule.name}", rule
        else:
            yield item.name, item


LEAVES: dict[str, Rule] = dict(leaves())
# Event field -> the dotted path of the message field it comes from.
EVENT_SOURCES: dict[str, str] = {rule.event: path for path, rule in LEAVES.items() if rule.event}
STATUS = TOP["status"]
STATUS_RANGE = (int(STATUS.lo or 0), int(STATUS.hi or 0))
# Integer fields with bounds, as the codec checks them: dotted path -> (lo, hi).
INT_BOUNDS: dict[str, tuple[int, int]] = {
    path: (int(rule.lo), int(rule.hi)) for path, rule in LEAVES.items()
    if rule.kind == "int" and rule.lo is not None and rule.hi is not None}
ALIASES: tuple[tuple[str, str, str], ...] = tuple(  # (block, canonical, alias)
    (block.name, rule.name, rule.alias) for block in BLOCKS.values() for rule in block.fields if rule.alias)

# --------------------------------------------------------------------------- polars dtypes

_LAYOUT_KINDS: dict[str, pl.DataType] = {
    "ts": pl.Datetime("us", "UTC"), "str": pl.String(), "bool": pl.Boolean(),
    "int": pl.Int64(), "float": pl.Float64(),
}
_FRAME_KINDS: dict[str, pl.DataType] = {**_LAYOUT_KINDS, "ts": pl.Float64()}  # epoch seconds


def layout_dtype(rule: Rule) -> pl.DataType:
    """The field's column type in a Parquet archive."""
    return pl.Categorical() if rule.dictionary else _LAYOUT_KINDS[rule.kind]


def frame_dtype(rule: Rule) -> pl.DataType:
    """The dtype of the Event column the field becomes (`frame.SCHEMA`)."""
    if rule.codes is not None:
        return pl.Int8()
    return pl.Categorical() if rule.dictionary else _FRAME_KINDS[rule.kind]


# Event field -> frame dtype, for every Event field a rule or a block's presence fills.
FRAME_DTYPES: dict[str, pl.DataType] = {
    **{rule.event: frame_dtype(rule) for rule in LEAVES.values() if rule.event},
    **{b.presence: pl.Boolean() for b in BLOCKS.values() if b.presence},
}

# --------------------------------------------------------------------------- msgspec structs

Integer = int | float  # integral floats are integers in JSON Schema; the codec checks them


def _msgspec_type(rule: Rule) -> Any:
    if rule.values:
        return Literal[rule.values]
    if rule.kind == "int":
        return Integer  # bounds (status) are the codec's, in its own wording
    if rule.kind == "float":
        if rule.lo is None and rule.hi is None:
            return float
        return Annotated[float, Meta(ge=rule.lo, le=rule.hi)]
    if rule.kind == "bool":
        return bool
    if rule.label:
        return Annotated[str, Meta(min_length=1)]
    return str  # ts: its text, checked as RFC 3339 by the codec


def _struct_field(attr: str, typ: Any, json_name: str, required: bool,
                  default: Any = None) -> tuple[Any, ...]:
    if required:
        return (attr, typ) if attr == json_name else (attr, typ, msgspec.field(name=json_name))
    if default is not None:
        return (attr, typ, msgspec.field(default=default, name=json_name))
    return (attr, typ | UnsetType, msgspec.field(default=UNSET, name=json_name))


def msgspec_struct(name: str, items: tuple[Rule | Block, ...]) -> type[msgspec.Struct]:
    """A msgspec struct that accepts exactly what the rules' types, bounds and values allow.

    Required fields first, in order (msgspec names the first missing one); an
    alias is one more optional field beside its canonical one.  What a type
    cannot say (integral floats, status bounds with their own wording,
    alias/canonical pairs, RFC 3339) the codec checks after decoding.
    """
    required: list[tuple[Any, ...]] = []
    optional: list[tuple[Any, ...]] = []
    for item in items:
        if isinstance(item, Block):
            inner = msgspec_struct(f"_{item.name.title()}", item.fields)
            (required if item.required else optional).append(
                _struct_field(item.name, inner, item.name, item.required))
            continue
        typ = _msgspec_type(item)
        (required if item.required else optional).append(
            _struct_field(item.key, typ, item.name, item.required, item.default))
        if item.alias:
            optional.append(_struct_field(item.alias, typ, item.alias, False))
    return msgspec.defstruct(name, [*required, *optional], gc=False, module=__name__)


__all__ = [
    "ALIASES", "BLOCKS", "EVENT_SOURCES", "FRAME_DTYPES", "INT64_MAX", "INT64_MIN", "INT_BOUNDS",
    "LAMBDA_CODES", "LEAVES", "MESSAGE", "REQUIRED", "STATUS_RANGE", "TOP", "Block", "Rule", "frame_dtype",
    "layout_dtype", "msgspec_struct",
]
