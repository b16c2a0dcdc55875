"""The decoding rules (pipeline/decode/rules.py) and everything that must agree with them.

The JSON schema, the codec's structs and its Event mapping, frame.SCHEMA and
the Parquet layouts are each held to the one table of rules.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import msgspec
import polars as pl
import pytest

from pipeline import frame
from pipeline.decode import codec, columns, rules, timestamps
from pipeline.decode.rules import Block, Rule
from pipeline.model import DeadLetterReason, DecodeError, Event

SCHEMA = json.loads((Path(__file__).resolve().parent.parent / "schemas" / "telemetry.schema.json")
                    .read_text("utf-8"))
JSON_TYPES = {"str": "string", "bool": "boolean", "int": "integer", "float": "number", "ts": "string"}

VALID: dict[str, Any] = {
    "ts": "2025-08-27T06:30:00Z", "route": "chat.rag.answer", "variant": "canary", "sticky": "t-1",
    "region": "us-east", "edge_pop": "iad", "x_exp": "exp-1", "request_id": "r-1",
    "cold_start": False, "x_warm": True,
    "latency_ms": {"tffb": 1.5, "tusable": 2.5, "tfinal": 3.5},
    "status": 503, "failure_phase": "body",
    "retrieval": {"k": 10, "metric": "cosine", "analyzer": "bilstem", "INDEX_HASH": "0x9a77",
                  "ΔS_q_r": 0.25, "coverage": 0.75, "λ_state": "×"},
    "probe": {"question_id": "q-1", "topic": "billing", "paraphrase": 2, "seed": 7},
    "cache": {"prefix": "v2:", "hit": True},
    "egress": {"webhook": "out", "tries": 1, "dedupe_key": "d-1"},
}


def resolve(node: dict[str, Any]) -> dict[str, Any]:
    """A schema node with its $ref (into $defs) merged in."""
    ref = node.get("$ref")
    if ref is None:
        return node
    target = resolve(SCHEMA["$defs"][ref.rsplit("/", 1)[1]])
    return {**target, **{k: v for k, v in node.items() if k != "$ref"}}


def decode(doc: dict[str, Any]) -> Event | DecodeError:
    return codec.decode(json.dumps(doc, ensure_ascii=False).encode())


def changed(path: str, value: Any) -> dict[str, Any]:
    """VALID with one field set (`...` deletes it)."""
    doc = copy.deepcopy(VALID)
    *parents, name = path.split(".")
    target = doc
    for p in parents:
        target = target[p]
    if value is ...:
        del target[name]
    else:
        target[name] = value
    return doc


def check_rule(rule: Rule, prop: dict[str, Any]) -> None:
    node = resolve(prop)
    if rule.values:
        assert node["enum"] == list(rule.values), rule.name
        return
    assert node["type"] == JSON_TYPES[rule.kind], rule.name
    if rule.kind == "ts":
        assert node["format"] == "date-time"
    assert node.get("minLength") == (1 if rule.label else None), rule.name
    if rule.kind in ("int", "float"):
        assert node.get("minimum") == rule.lo, rule.name
        hi = rules.MAX_FLOAT if rule.kind == "float" and rule.hi is None else rule.hi
        assert node.get("maximum") == hi, rule.name
    assert node.get("default") == rule.default, rule.name


def test_the_json_schema_agrees_with_the_rules() -> None:
    assert set(SCHEMA["required"]) == set(rules.REQUIRED)
    assert set(SCHEMA["properties"]) == {item.name for item in rules.MESSAGE}
    for item in rules.MESSAGE:
        prop = SCHEMA["properties"][item.name]
        if isinstance(item, Rule):
            check_rule(item, prop)
            continue
        node = resolve(prop)
        assert node["type"] == "object"
        assert node.get("required", []) == list(item.required_fields), item.name
        names = [n for r in item.fields for n in (r.name, r.alias) if n]
        assert list(node["properties"]) == names, item.name
        for r in item.fields:
            check_rule(r, node["properties"][r.name])
            if r.alias:
                check_rule(r, node["properties"][r.alias])
        pairs = [c["not"]["required"] for c in node.get("allOf", [])]
        assert pairs == [[r.name, r.alias] for r in item.fields if r.alias], item.name


def test_the_schema_pattern_of_ts_is_the_codecs() -> None:
    pattern = SCHEMA["$defs"]["dateTime"]["pattern"]
    assert pattern == f"^{timestamps.RFC3339.pattern}$(?!\\n)"


def test_the_codec_struct_is_the_rules() -> None:
    def fields(struct: Any) -> dict[str, msgspec.structs.FieldInfo]:
        return {f.encode_name: f for f in msgspec.structs.fields(struct)}

    def check(struct: Any, items: tuple[Rule | Block, ...]) -> None:
        found = fields(struct)
        assert set(found) == {n for item in items for n in (item.name, getattr(item, "alias", None)) if n}
        for item in items:
            assert found[item.name].required == item.required, item.name
            if isinstance(item, Block):
                inner = msgspec.inspect.type_info(found[item.name].type)
                options = getattr(inner, "types", (inner,))  # an optional block: the struct or UNSET
                struct_type = next(t for t in options if isinstance(t, msgspec.inspect.StructType))
                check(struct_type.cls, item.fields)

    check(codec._Telemetry, rules.MESSAGE)


def test_every_event_field_has_one_source() -> None:
    event_fields = [f for f in Event.__struct_fields__ if f != "raw"]
    presence = [b.presence for b in rules.BLOCKS.values() if b.presence]
    sources = [r.event for r in rules.LEAVES.values() if r.event]
    assert sorted(event_fields) == sorted(sources + presence)
    assert list(frame.SCHEMA) == [*event_fields, "row"]
    assert {name: frame.SCHEMA[name] for name in event_fields} == rules.FRAME_DTYPES


def test_the_codec_maps_every_field_as_the_rules_say() -> None:
    event = decode(VALID)
    assert isinstance(event, Event)
    for path, rule in rules.LEAVES.items():
        if rule.event is None:
            continue
        doc: Any = VALID
        for part in path.split("."):
            doc = doc[part]
        want = rule.codes[doc] if rule.codes is not None else doc
        if rule.kind == "ts":
            want = codec.parse_ts(doc)
        assert getattr(event, rule.event) == want, path
    for block in rules.BLOCKS.values():
        if block.presence:
            assert getattr(event, block.presence) is True
            assert getattr(decode(changed(block.name, ...)), block.presence) is False


def test_absent_fields_take_the_rules_absent_value() -> None:
    minimal = {name: VALID[name] for name in rules.REQUIRED}
    event = decode(minimal)
    assert isinstance(event, Event)
    for rule in rules.LEAVES.values():
        if rule.event and not rule.required:
            assert getattr(event, rule.event) == rule.absent, rule.name
    for block in rules.BLOCKS.values():  # an optional block's required fields are absent with it
        if not block.required:
            for r in block.fields:
                if r.event:
                    assert getattr(event, r.event) == r.absent, r.name


def test_each_alias_reads_as_its_canonical_field_and_not_beside_it() -> None:
    for block, canonical, alias in rules.ALIASES:
        rule = rules.LEAVES[f"{block}.{canonical}"]
        value = VALID[block][canonical]
        doc = changed(f"{block}.{canonical}", ...)
        doc[block][alias] = value
        assert msgspec.structs.replace(decode(doc), raw=b"") == msgspec.structs.replace(  # type: ignore[type-var]
            decode(VALID), raw=b"")  # type: ignore[type-var]
        doc[block][canonical] = value
        error = decode(doc)
        assert isinstance(error, DecodeError) and error.reason == DeadLetterReason.SCHEMA
        assert error.detail == f"both `{alias}` and its canonical field are present - at `$.{block}.{alias}`"
        assert rule.alias == alias


def refused(path: str, value: Any) -> str:
    error = decode(changed(path, value))
    assert isinstance(error, DecodeError), (path, value)
    assert error.reason == DeadLetterReason.SCHEMA, (path, value, error.detail)
    return error.detail


@pytest.mark.parametrize("path", list(rules.LEAVES))
def test_the_codec_refuses_what_each_rule_refuses(path: str) -> None:
    rule = rules.LEAVES[path]
    block, _, name = path.rpartition(".")
    where = f" - at `$.{block}`" if block else ""
    if rule.required:
        assert refused(path, ...) == f"Object missing required field `{name}`{where}"
    wrong = {"str": 5, "ts": 5, "bool": "yes", "int": "1", "float": "1"}[rule.kind]
    assert f"at `$.{path}`" in refused(path, wrong)
    if rule.label:
        assert f"at `$.{path}`" in refused(path, "")
    if rule.values:
        assert f"at `$.{path}`" in refused(path, "x" + rule.values[0])
    if rule.kind == "int":
        assert refused(path, 2.5) == f"Expected `int`, got `float` 2.5 - at `$.{path}`"
        lo = rule.lo if rule.lo is not None else 100
        assert isinstance(decode(changed(path, float(lo))), Event)
    step = 1 if rule.kind == "int" else 0.5  # an integer's bound is passed by one (2**63 - 0.5 is 2**63)
    if rule.lo is not None:
        assert f"at `$.{path}`" in refused(path, rule.lo - step)
    if rule.hi is not None:
        assert f"at `$.{path}`" in refused(path, rule.hi + step)
    if rule.kind == "int" and rule.lo is not None and rule.hi is not None:
        bounds = f"Expected `int` in {rule.lo}..{rule.hi}"
        assert refused(path, rule.hi + 1) == f"{bounds}, got {rule.hi + 1} - at `$.{path}`"
        assert isinstance(decode(changed(path, rule.hi)), Event)
        assert isinstance(decode(changed(path, rule.lo)), Event)


def accepted_by_columns(docs: list[dict[str, Any]]) -> list[bool]:
    """Whether the rules' column checks accept each message (flat columns, canonical types)."""
    data: dict[str, list[Any]] = {}
    present: dict[str, list[bool]] = {}
    for path in rules.LEAVES:
        if path == "ts":
            continue
        values = []
        for doc in docs:
            node: Any = doc
            for part in path.split("."):
                node = node.get(part) if isinstance(node, dict) else None
            values.append(node)
        data[path] = values
    for name in rules.BLOCKS:
        present[name] = [name in doc for doc in docs]
    dtypes = {path: (pl.String() if rule.kind == "str" else rules.layout_dtype(rule))
              for path, rule in rules.LEAVES.items() if path != "ts"}
    df = pl.DataFrame(data, schema=dtypes).with_columns(
        pl.Series(f"?{name}", flags) for name, flags in present.items())
    leaf = {path: pl.col(path) for path in data}
    checks = columns.checks(leaf, {name: pl.col(f"?{name}") for name in rules.BLOCKS})
    ok = df.select(pl.all_horizontal(c.fill_null(False) for c in checks)).to_series().to_list()
    return [bool(x) for x in ok]


def test_the_column_checks_refuse_what_each_rule_refuses() -> None:
    docs = [VALID]
    for path, rule in rules.LEAVES.items():
        if path == "ts":
            continue
        if rule.required:
            docs.append(changed(path, None))
        if rule.label:
            docs.append(changed(path, ""))
        if rule.values:
            docs.append(changed(path, "x" + rule.values[0]))
        # An Int64 column holds nothing beyond signed 64 bits: those bounds have nothing to refuse.
        if rule.lo is not None and rule.lo > rules.INT64_MIN:
            docs.append(changed(path, rule.lo - 1))
        if rule.hi is not None and rule.hi < rules.INT64_MAX:
            docs.append(changed(path, rule.hi + 1))
        if rule.kind == "float":
            docs += [changed(path, float("nan")), changed(path, float("inf"))]
    docs.append(changed("latency_ms", {}))
    want = [isinstance(decode(d), Event) for d in docs]  # NaN and inf are not JSON: refused too
    assert accepted_by_columns(docs) == want
    assert want[0] and not any(want[1:])


def test_layouts_follow_the_rules() -> None:
    flat = [name for name in columns.LAYOUT if name not in ("raw", "raw_bytes")]
    want: list[str] = []
    for item in rules.MESSAGE:
        if isinstance(item, Block):
            want += [] if item.required else [item.name]
            want += [f"{item.name}.{r.name}" for r in item.fields]
        else:
            want.append(item.name)
    assert flat == want
    for path, rule in rules.LEAVES.items():
        assert columns.LAYOUT[path] == rules.layout_dtype(rule)
