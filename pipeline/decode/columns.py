"""The decoding rules column by column: Parquet layouts, polars checks and the mapping to frame.SCHEMA.

Everything here is derived from `rules`, as the codec's structs are: a typed
Parquet row passes `checks` exactly when the codec accepts the message the row
stands for (the archive adds the checks of its own making: raw rows, the
event time's column type), and `frame_columns` maps it to `frame.SCHEMA` as
`codec._to_event` maps a message to an Event.

Each check is one vectorised polars expression per field, so the cost is a
few comparisons per row and field: on one core about a fifth of the time
reading a flat Parquet archive takes (the rest is Parquet decoding).
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Mapping
from typing import Any

import polars as pl

from pipeline import frame as frames
from pipeline.decode import rules
from pipeline.decode.rules import Block, Rule


def _struct(block: Block) -> pl.Struct:
    return pl.Struct({r.name: rules.layout_dtype(r) for r in block.fields})


# Each block as a polars struct (the nested layout's column), in the message's order.
BLOCKS: dict[str, pl.Struct] = {name: _struct(block) for name, block in rules.BLOCKS.items()}

# The nested layout (read, no longer written), in the message's canonical order (raw columns last).
NESTED_LAYOUT: dict[str, pl.DataType] = {
    **{item.name: BLOCKS[item.name] if isinstance(item, Block) else rules.layout_dtype(item)
       for item in rules.MESSAGE},
    "raw": pl.String(),
    "raw_bytes": pl.Binary(),
}


def _flattened(nested: dict[str, pl.DataType]) -> dict[str, pl.DataType]:
    """The flat layout: each block's fields as "<block>.<field>" columns after its presence column."""
    flat: dict[str, pl.DataType] = {}
    for name, dtype in nested.items():
        if isinstance(dtype, pl.Struct):
            if not rules.BLOCKS[name].required:  # a required block's presence goes without saying
                flat[name] = pl.Boolean()
            for f in dtype.fields:
                inner = f.dtype
                flat[f"{name}.{f.name}"] = inner if isinstance(inner, pl.DataType) else inner()
        else:
            flat[name] = dtype
    return flat


# The Parquet layout as written, in serialization order (raw columns last).
LAYOUT: dict[str, pl.DataType] = _flattened(NESTED_LAYOUT)

# Required top-level columns besides the required blocks (flat: their fields are named instead).
REQUIRED_COLUMNS = tuple(name for name in rules.REQUIRED if name not in rules.BLOCKS)
REQUIRED_BLOCKS = tuple(name for name in rules.REQUIRED if name in rules.BLOCKS)
# Block -> its required fields, for the blocks that have some.
REQUIRED_FIELDS: dict[str, tuple[str, ...]] = {
    name: block.required_fields for name, block in rules.BLOCKS.items() if block.required_fields}
# Fields of optional blocks the frame takes as they are: an absent block's must be null for the
# column-wise mapping (Parquet makes a null struct's fields null; in the flat layout the archive checks).
FRAME_FIELDS: dict[str, tuple[str, ...]] = {
    name: tuple(r.name for r in block.fields if r.event)
    for name, block in rules.BLOCKS.items() if not block.required and any(r.event for r in block.fields)}
# Block -> its float fields: a NaN or infinity there cannot be written as JSON.
FLOAT_FIELDS: dict[str, tuple[str, ...]] = {
    name: tuple(r.name for r in block.fields if r.kind == "float")
    for name, block in rules.BLOCKS.items() if any(r.kind == "float" for r in block.fields)}


def field_check(rule: Rule, x: pl.Expr) -> pl.Expr | None:
    """Whether a column's values pass the rule (null when a required value is missing), or None: any does.

    Polars orders NaN above +inf, so one range test also rejects NaN and infinities
    (half the cost of is_finite() & a bound).
    """
    if rule.label:
        check = x != ""
    elif rule.kind == "float":
        lo = -math.inf if rule.lo is None else float(rule.lo)
        hi = math.inf if rule.hi is None else float(rule.hi)
        closed = {(True, True): "both", (True, False): "left", (False, True): "right",
                  (False, False): "none"}[(math.isfinite(lo), math.isfinite(hi))]
        check = x.is_between(lo, hi, closed=closed)  # type: ignore[arg-type]
    elif rule.kind == "int" and (rule.lo is not None or rule.hi is not None):
        check = x.is_between(rule.lo if rule.lo is not None else -(2**63),
                             rule.hi if rule.hi is not None else 2**63 - 1)
    elif rule.values:
        check = x.is_in(list(rule.values))
    elif rule.required:
        return x.is_not_null()
    else:
        return None
    return check if rule.required else x.is_null() | check


def checks(leaf: Mapping[str, pl.Expr], present: Mapping[str, pl.Expr]) -> list[pl.Expr]:
    """The rules' checks of a typed row, one expression per field (or block), null meaning fail.

    `leaf` maps every dotted path but `ts` to its column in the canonical type,
    `present` every block to whether the row has it (never null).
    """
    out: list[pl.Expr] = []
    for item in rules.MESSAGE:
        if isinstance(item, Block):
            found = (field_check(r, leaf[f"{item.name}.{r.name}"]) for r in item.fields)
            inner = [c for c in found if c is not None]
            if item.required:
                out += [present[item.name], *inner]
            elif inner:
                out.append(~present[item.name] | functools.reduce(operator.and_, inner))
        elif item.kind != "ts":  # the event time's check depends on its column type: the archive's
            check = field_check(item, leaf[item.name])
            if check is not None:
                out.append(check)
    return out


def frame_columns(leaf: Mapping[str, pl.Expr], present: Mapping[str, pl.Expr],
                  ts: pl.Expr) -> list[pl.Expr]:
    """frame.SCHEMA's Event columns of a valid typed row, as codec._to_event maps the message.

    `ts` is the event time's expression (the archive's: it depends on the column type).
    """
    presence = {block.presence: name for name, block in rules.BLOCKS.items() if block.presence}
    out: list[pl.Expr] = []
    for name in frames.EVENT_COLUMNS:
        if name in presence:
            expr = present[presence[name]]
        elif name == "ts":
            expr = ts
        else:
            path = rules.EVENT_SOURCES[name]
            expr = _coded(leaf[path], rules.LEAVES[path])
        out.append(expr.cast(frames.SCHEMA[name]).alias(name))
    return out


def _coded(x: pl.Expr, rule: Rule) -> pl.Expr:
    """A field's column as the Event holds it: its code, or its value (`absent` when null)."""
    if rule.codes is None:
        return x if rule.absent is None else x.fill_null(rule.absent)
    # A when/then chain of equality tests: on Categorical each compares integer codes, ten
    # times faster than replace_strict, which maps the text of every row.
    coded: Any = pl
    for key, index in rule.codes.items():
        coded = coded.when(x == key).then(pl.lit(index, pl.Int8))
    # null or unknown (the latter never valid)
    return coded.otherwise(pl.lit(rule.absent, pl.Int8))  # type: ignore[no-any-return]


__all__ = [
    "BLOCKS", "FLOAT_FIELDS", "FRAME_FIELDS", "LAYOUT", "NESTED_LAYOUT", "REQUIRED_BLOCKS",
    "REQUIRED_COLUMNS", "REQUIRED_FIELDS", "checks", "field_check", "frame_columns",
]
