"""Archive readers and the Parquet writer (replay/archive.py): both formats read as the codec decodes."""

from __future__ import annotations

import copy
import gzip
import json
import math
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import polars as pl
import polars.selectors as cs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from pipeline import cli, scenarios
from pipeline import frame as frames
from pipeline.decode import codec
from pipeline.model import DeadLetterReason, DecodeError, Event
from pipeline.replay import archive, parquet
from pipeline.replay.archive import ArchiveError, Batch, open_archives, write_parquet

MINUTES = 6
# Scenarios whose streams differ in what the readers must carry: dead letters
# (truncated JSON and schema breaks), delivery order, λ flips, 5xx classes, cache prefixes.
SCENARIOS = ("healthy", "schema_violations", "out_of_order", "lambda_flips", "new_5xx_class",
             "cache_prefix_collision")

DeadKey = tuple[int, str, str, str | None, float | None]


# --------------------------------------------------------------------------- helpers


def expected(lines: list[bytes]) -> tuple[pl.DataFrame, list[DeadKey]]:
    """What the stream makes of the lines: codec.decode one by one."""
    events, rows, dead = [], [], []
    for i, line in enumerate(lines):
        out = codec.decode(line)
        if isinstance(out, Event):
            events.append(out)
            rows.append(i)
        else:
            dead.append((i, out))
    return frames.from_events(events, rows), keys(dead)


def keys(dead: list[tuple[int, DecodeError]]) -> list[DeadKey]:
    return [(row, str(e.reason), e.detail, e.variant, e.ts) for row, e in dead]


def read(paths: list[str], batch_rows: int = 1_000_000) -> tuple[pl.DataFrame, list[DeadKey], list[Batch]]:
    """Every batch of the archives, frames concatenated and dead letters joined."""
    opened = open_archives(paths, batch_rows=batch_rows)
    batches = list(opened)
    assert sum(b.done_bytes for b in batches) == opened.total_bytes
    assert opened.total_bytes == sum(os.path.getsize(f) for f in opened.files)
    frame = pl.concat([b.frame for b in batches])
    dead = [d for b in batches for d in b.dead]
    return frame, keys(dead), batches


def write_jsonl(path: Path, lines: list[bytes]) -> str:
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return str(path)


def fields(e: Event) -> tuple[Any, ...]:
    return tuple(getattr(e, name) for name in frames.EVENT_COLUMNS)


# The two Parquet layouts: flat ("<block>.<field>" columns, what write_parquet writes) and
# nested (struct columns, the earlier layout, still read).
LAYOUTS = ("flat", "nested")


def nest(df: pl.DataFrame) -> pl.DataFrame:
    """A flat-layout frame in the nested layout: each block a struct, null where the block is absent."""
    columns: list[pl.Expr] = []
    for name in archive.NESTED_LAYOUT:
        block = archive.BLOCKS.get(name)
        if block is None:
            columns.append(pl.col(name))
            continue
        values = [pl.col(f"{name}.{f.name}").alias(f.name) for f in block.fields]
        has = pl.col(name) if name in df.columns else pl.any_horizontal(v.is_not_null() for v in values)
        columns.append(pl.when(has).then(pl.struct(values)).alias(name))
    return df.select(columns)


def flatten(df: pl.DataFrame) -> pl.DataFrame:
    """A nested-layout frame in the flat layout (as write_parquet writes it)."""
    columns: list[pl.Expr] = []
    for name in df.columns:
        block = archive.BLOCKS.get(name)
        if block is None:
            columns.append(pl.col(name))
            continue
        if name != "latency_ms":
            columns.append(pl.col(name).is_not_null().alias(name))
        columns += [pl.col(name).struct.field(f.name).alias(f"{name}.{f.name}") for f in block.fields]
    return df.select(columns)


def write_archive(lines: list[bytes], path: Path, layout: str = "flat", row_group_rows: int = 131_072) -> str:
    """write_parquet's file, rewritten in the nested layout when asked."""
    assert write_parquet(lines, path, row_group_rows) == len(lines)
    if layout == "nested":
        nest(pl.read_parquet(path)).write_parquet(path, row_group_size=row_group_rows)
    return str(path)


_scenario_cache: dict[str, list[bytes]] = {}


def scenario_lines(name: str) -> list[bytes]:
    if name not in _scenario_cache:
        _scenario_cache[name] = list(scenarios.generate(name, 7, MINUTES))
    return _scenario_cache[name]


def test_scenario_names_exist() -> None:
    assert set(SCENARIOS) <= set(scenarios.SCENARIOS)
    # schema_violations is the one that must give dead letters of both kinds.
    _, dead = expected(scenario_lines("schema_violations"))
    assert {d[1] for d in dead} == {"invalid_json", "schema"}


# --------------------------------------------------------------------------- JSONL and Parquet agree


@pytest.mark.parametrize("name", SCENARIOS)
def test_both_formats_read_as_the_codec_decodes(tmp_path: Path, name: str) -> None:
    lines = scenario_lines(name)
    want_frame, want_dead = expected(lines)
    jsonl = write_jsonl(tmp_path / "s.jsonl", lines)
    flat = write_archive(lines, tmp_path / "s.parquet")
    nested = write_archive(lines, tmp_path / "n.parquet", "nested")
    assert isinstance(pl.read_parquet_schema(nested)["retrieval"], pl.Struct)

    for path in (jsonl, flat, nested):
        frame, dead, batches = read([path])
        assert frame.schema == pl.Schema(frames.SCHEMA)
        assert_frame_equal(frame.sort("row"), want_frame)
        assert frame["row"].is_sorted()
        assert dead == want_dead
        assert all(b.source == path for b in batches)


def test_gzip_reads_as_plain(tmp_path: Path) -> None:
    lines = scenario_lines("schema_violations")
    plain = write_jsonl(tmp_path / "s.jsonl", lines)
    with gzip.open(tmp_path / "s.jsonl.gz", "wb") as f:
        f.write(Path(plain).read_bytes())
    frame, dead, _ = read([plain])
    gz_frame, gz_dead, gz_batches = read([str(tmp_path / "s.jsonl.gz")])
    assert_frame_equal(gz_frame, frame)
    assert gz_dead == dead
    assert gz_batches[-1].done_bytes >= 0


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet", ".nested.parquet"])
def test_batch_boundaries_do_not_change_the_result(tmp_path: Path, suffix: str) -> None:
    lines = scenario_lines("schema_violations")
    first_dead = next(i for i, line in enumerate(lines) if not isinstance(codec.decode(line), Event))
    short = lines[: first_dead + 20]  # batches of one message are read over this one
    for part, sizes in ((lines, (777, 1024, len(lines), len(lines) - 1)), (short, (1, 3))):
        path = tmp_path / f"s{len(part)}{suffix}"
        if suffix == ".jsonl":
            write_jsonl(path, part)
        else:
            layout = "nested" if suffix.startswith(".nested") else "flat"
            write_archive(part, path, layout, row_group_rows=1000)
        whole, whole_dead, _ = read([str(path)])
        assert whole_dead
        for batch_rows in sizes:
            frame, dead, batches = read([str(path)], batch_rows)
            assert_frame_equal(frame, whole)
            assert dead == whole_dead
            assert len(batches) == -(-len(part) // batch_rows)
            start = 0
            for b in batches:
                dead_rows = [r for r, _ in b.dead]
                rows = b.frame["row"].to_list() + dead_rows
                assert len(rows) <= batch_rows
                assert b.frame["row"].is_sorted() and dead_rows == sorted(dead_rows)
                assert all(start <= r < start + batch_rows for r in rows)
                start += batch_rows


def test_archives_form_one_stream_in_order(tmp_path: Path) -> None:
    a, b = scenario_lines("healthy")[:300], scenario_lines("schema_violations")[:500]
    write_archive(a, tmp_path / "a.parquet")
    write_jsonl(tmp_path / "b.jsonl", b)
    write_archive(a, tmp_path / "c.parquet", "nested")  # each file's layout is its own
    paths = [str(tmp_path / name) for name in ("b.jsonl", "a.parquet", "c.parquet")]
    frame, dead, batches = read(paths, batch_rows=200)
    assert [Path(x.source).name for x in batches] == ["b.jsonl"] * 3 + ["a.parquet"] * 2 + ["c.parquet"] * 2
    want = [expected(b), expected(a), expected(a)]
    assert_frame_equal(frame, pl.concat([w for w, _ in want]))
    assert dead == want[0][1]


def test_folders_and_globs_expand_sorted(tmp_path: Path) -> None:
    lines = scenario_lines("healthy")[:50]
    folder = tmp_path / "arch"
    folder.mkdir()
    write_jsonl(folder / "c.jsonl", lines)
    write_parquet(lines, folder / "a.parquet")
    with gzip.open(folder / "b.jsonl.gz", "wb") as f:
        f.write(b"".join(line + b"\n" for line in lines))
    (folder / "notes.txt").write_text("not an archive")
    (folder / "sub.jsonl").mkdir()  # a folder named like an archive is not one
    names = ["a.parquet", "b.jsonl.gz", "c.jsonl"]
    assert open_archives([str(folder)]).files == [str(folder / n) for n in names]
    assert open_archives([str(folder / "*")]).files == [str(folder / n) for n in names]
    assert open_archives([str(folder / "*.jsonl*")]).files == [str(folder / n) for n in names[1:]]
    # the given order of paths is kept; each folder or glob is sorted within
    both = open_archives([str(folder / "c.jsonl"), str(folder)])
    assert both.files == [str(folder / "c.jsonl")] + [str(folder / n) for n in names]
    frame, dead, _ = read([str(folder)])
    want, want_dead = expected(lines)
    assert dead == want_dead == []
    assert_frame_equal(frame, pl.concat([want] * 3))


# --------------------------------------------------------------------------- JSONL as the stream reads it


def test_jsonl_lines_are_numbered_as_the_file_source_does(tmp_path: Path) -> None:
    good = scenario_lines("healthy")[0]
    path = tmp_path / "x.jsonl"
    path.write_bytes(good + b"\r\n" + b"\n" + b"  \t\n" + b"{not json\n" + good + b"\n" + good)
    opened = open_archives([str(path)])
    (batch,) = list(opened)
    assert batch.frame["row"].to_list() == [0, 4, 5]  # blank lines are not messages, keep their number
    assert [r for r, _ in batch.dead] == [3]
    assert batch.locate(3) == "x.jsonl:4"  # the stream's dead-letter source for that line
    assert batch.raws([0, 3, 5]) == [good, b"{not json", good]
    assert batch.done_bytes == path.stat().st_size


def test_jsonl_raws_are_the_lines(tmp_path: Path) -> None:
    lines = scenario_lines("schema_violations")
    path = write_jsonl(tmp_path / "s.jsonl", lines)
    for b in open_archives([path], batch_rows=1000):
        rows = b.frame["row"].to_list()[::50] + [r for r, _ in b.dead]
        assert b.raws(rows) == [lines[r] for r in rows]
        with pytest.raises(KeyError):
            b.raws([rows[0] + 5000])


# --------------------------------------------------------------------------- hostile lines, both formats

BASE: dict[str, Any] = {
    "ts": "2025-08-27T06:00:01.123Z",
    "route": "chat.rag.answer",
    "variant": "canary-v2",
    "sticky": "k-1",
    "region": "us-east",
    "edge_pop": "iad",
    "x_exp": "exp-1",
    "request_id": "r-1",
    "cold_start": False,
    "latency_ms": {"tffb": 150.0, "tusable": 400.0, "tfinal": 1300.0},
    "status": 200,
    "retrieval": {"k": 10, "metric": "cosine", "analyzer": "bilstem", "INDEX_HASH": "0x9a77",
                  "ΔS_q_r": 0.3, "coverage": 0.8, "λ_state": "→"},
    "cache": {"prefix": "v2-cnr:", "hit": True},
}


def changed(base: dict[str, Any] | None = None, **changes: Any) -> dict[str, Any]:
    """A copy of BASE with dotted paths set (None removes the key)."""
    doc = copy.deepcopy(BASE if base is None else base)
    for dotted, value in changes.items():
        *parents, leaf = dotted.split("__")
        target = doc
        for p in parents:
            target = target.setdefault(p, {})
        if value is None:
            target.pop(leaf, None)
        else:
            target[leaf] = value
    return doc


def encode(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, ensure_ascii=False).encode()


HOSTILE: list[bytes] = [
    encode(BASE),
    encode(changed(status=200.0, ts="2025-08-27t06:00:01.1234567+05:30")),
    encode(changed(retrieval={"index_hash": "h", "delta_s_q_r": 0.5, "lambda_state": "chaotic", "k": 3.0})),
    encode(changed(retrieval={"INDEX_HASH": "h", "index_hash": "h"})),  # alias and canonical: schema
    encode(changed(probe={"question_id": "q", "topic": "", "paraphrase": 2.0, "seed": 2**70})),  # > Int64
    encode(changed(probe={"question_id": "q", "topic": "t", "paraphrase": 1, "seed": 1})),
    encode(changed(retrieval={"k": 2**64})),  # accepted, k beyond Int64: kept raw by the writer
    encode(changed(egress={"webhook": "w", "tries": 1e19, "dedupe_key": "d"})),
    encode(changed(ts="1500-01-01T00:00:00Z")),  # outside the typed years: raw
    encode(changed(ts="9999-12-31T23:59:59.999999-01:00")),
    encode(changed(ts="0001-01-01T00:00:00+01:00")),
    encode(changed(x_warm=True, failure_phase="body", status=502, extra={"deep": [1, 2, {"x": None}]})),
    encode(changed(latency_ms={"tffb": 0, "tusable": -0.0, "tfinal": 1e308})),
    b'{"ts": "2025-08-27T06:00:01Z", "variant": "canary-v2", "latency_ms": {"tffb": 1e999}}',
    b'{"variant": "canary-v2", "ts": "2025-08-27T06:00:01Z", "route": "\xff\xfe"}',  # not UTF-8
    b'{"variant": "canary-v2", "route": "a\\ud800"}',  # lone surrogate
    b"[" * 5000 + b"]" * 5000,  # nested too deep
    b"null",
    b'"just a string"',
    encode(changed(variant="control", sticky="x" * 2000)),
    encode(changed(route="é" * 10, region="日本")),
    b'{"variant": "canary-v2", "ts": "2025-08-27T06:00:01Z"',  # truncated
]


def test_hostile_lines_read_as_the_codec_decodes(tmp_path: Path) -> None:
    want_frame, want_dead = expected(HOSTILE)
    # A probe seed beyond signed 64 bits breaks the rules (rules.INT64_MAX): the stream's dead letter too.
    assert (4, "schema", "Expected `int` in -9223372036854775808..9223372036854775807, "
            "got 1180591620717411303424 - at `$.probe.seed`", "canary-v2", ROW_TS) in want_dead
    jsonl = write_jsonl(tmp_path / "h.jsonl", HOSTILE)
    nested = write_archive(HOSTILE, tmp_path / "n.parquet", "nested")
    for path in (jsonl, write_archive(HOSTILE, tmp_path / "h.parquet"), nested):
        frame, dead, _ = read([path])
        assert_frame_equal(frame, want_frame)
        assert dead == want_dead

    stored = pl.read_parquet(tmp_path / "h.parquet")
    raw_rows = stored.with_row_index().filter(pl.col("raw").is_not_null() | pl.col("raw_bytes").is_not_null())
    typed_kept_raw = {4, 6, 7, 8, 9, 10}  # Int64 overflow, or years outside 1698..2242
    rejected = {r for r, *_ in want_dead}
    assert set(raw_rows["index"].to_list()) == rejected | typed_kept_raw
    assert stored["raw_bytes"].drop_nulls().to_list() == [HOSTILE[14]]


def test_writer_types_accepted_lines_with_canonical_names(tmp_path: Path) -> None:
    write_parquet(HOSTILE[:3], tmp_path / "w.parquet")
    stored = pl.read_parquet(tmp_path / "w.parquet")
    assert stored.schema == pl.Schema(archive.LAYOUT)
    # flat: no struct column; each block's fields are "<block>.<field>" columns
    assert not any(isinstance(dtype, pl.Struct) for dtype in stored.schema.values())
    retrieval = stored.select(pl.col("^retrieval\\..*$")).row(2, named=True)
    assert retrieval == {"retrieval.k": 3, "retrieval.metric": None, "retrieval.analyzer": None,
                         "retrieval.INDEX_HASH": "h", "retrieval.ΔS_q_r": 0.5, "retrieval.coverage": None,
                         "retrieval.λ_state": "×"}
    assert stored["latency_ms.tffb"].to_list() == [150.0, 150.0, 150.0]
    assert stored["ts"][1] == datetime(2025, 8, 27, 0, 30, 1, 123456, tzinfo=UTC)
    assert stored["status"].to_list() == [200, 200, 200]
    # presence columns: whether the message had the block
    assert stored["retrieval"].to_list() == [True, True, True]
    assert stored["cache"].to_list() == [True, True, True]
    assert stored["probe"].to_list() == [False, False, False] == stored["egress"].to_list()
    assert stored["probe.question_id"].null_count() == 3 and stored["egress.tries"].null_count() == 3
    assert stored["x_warm"].to_list() == [False, False, False]
    assert "latency_ms" not in stored.columns  # required: no presence column


# --------------------------------------------------------------------------- typed Parquet rows

ROW: dict[str, Any] = {
    "ts": datetime(2025, 8, 27, 6, 0, 1, 123000, tzinfo=UTC),
    "route": "chat.rag.answer",
    "variant": "canary-v2",
    "sticky": "k-1",
    "region": "us-east",
    "edge_pop": "iad",
    "x_exp": None,
    "request_id": "r-1",
    "cold_start": False,
    "x_warm": None,
    "latency_ms": {"tffb": 150.0, "tusable": 400.0, "tfinal": 1300.0},
    "status": 200,
    "failure_phase": None,
    "retrieval": {"k": 10, "metric": "cosine", "analyzer": "bilstem", "INDEX_HASH": "0x9a77",
                  "ΔS_q_r": 0.3, "coverage": 0.8, "λ_state": "→"},
    "probe": None,
    "cache": {"prefix": "v2-cnr:", "hit": True},
    "egress": None,
    "raw": None,
}
ROW_TS = 1_756_274_401.123


def row(**changes: Any) -> dict[str, Any]:
    """ROW with dotted (`a__b`) fields set; a value of ... sets null."""
    doc = copy.deepcopy(ROW)
    for dotted, value in changes.items():
        *parents, leaf = dotted.split("__")
        target = doc
        for p in parents:
            target = target[p]
        target[leaf] = None if value is ... else value
    return doc


def as_json(doc: dict[str, Any]) -> bytes:
    """The JSON message a typed row stands for (nulls omitted, written here independently of archive)."""
    out: dict[str, Any] = {}
    for key, value in doc.items():
        if value is None or key == "raw":
            continue
        if isinstance(value, datetime):
            out[key] = value.astimezone(UTC).isoformat().replace("+00:00", "Z")
        elif isinstance(value, dict):
            # fields in the layout's order (the canonical message order); NaN and
            # infinities have no JSON form: null, as archive writes them
            order = [f.name for f in archive.BLOCKS[key].fields]
            items = sorted(value.items(), key=lambda kv: order.index(kv[0]))
            out[key] = {k: None if isinstance(v, float) and not math.isfinite(v) else v
                        for k, v in items if v is not None}
        else:
            out[key] = value
    return json.dumps(out, ensure_ascii=False).encode()


def plain(dtype: pl.DataType) -> pl.DataType:
    """The layout type with String for Categorical: what other writers produce."""
    if isinstance(dtype, pl.Categorical):
        return pl.String()
    if isinstance(dtype, pl.Struct):
        return pl.Struct({f.name: plain(f.dtype) for f in dtype.fields})  # type: ignore[arg-type]
    return dtype


def typed_file(path: Path, rows: list[dict[str, Any]], strings: str = "categorical", layout: str = "flat",
               **overrides: pl.DataType) -> str:
    """Rows (nested dicts, None for an absent block) as a Parquet file of the given layout."""
    schema = {name: dtype if strings == "categorical" else plain(dtype)
              for name, dtype in archive.NESTED_LAYOUT.items()}
    schema.update(overrides)
    schema.pop("raw_bytes")
    df = pl.DataFrame(rows, schema=schema)
    (df if layout == "nested" else flatten(df)).write_parquet(path)
    return str(path)


NAN, INF = math.nan, math.inf
VIOLATIONS: list[tuple[dict[str, Any], str]] = [
    (row(ts=...), "Object missing required field `ts`"),
    (row(route=...), "Object missing required field `route`"),
    (row(route=""), "Expected `str` of length >= 1 - at `$.route`"),
    (row(variant=""), "Expected `str` of length >= 1 - at `$.variant`"),
    (row(region=...), "Object missing required field `region`"),
    (row(cold_start=...), "Object missing required field `cold_start`"),
    (row(latency_ms=...), "Object missing required field `latency_ms`"),
    (row(latency_ms__tffb=-1.0), "Expected `float` >= 0.0 - at `$.latency_ms.tffb`"),
    (row(latency_ms__tusable=...), "Object missing required field `tusable` - at `$.latency_ms`"),
    (row(latency_ms__tusable=NAN), "Expected `float`, got `NaN` - at `$.latency_ms.tusable`"),
    (row(latency_ms__tfinal=INF), "Expected `float`, got `inf` - at `$.latency_ms.tfinal`"),
    (row(status=...), "Object missing required field `status`"),
    (row(status=99), "Expected `int` in 100..599, got 99 - at `$.status`"),
    (row(status=600), "Expected `int` in 100..599, got 600 - at `$.status`"),
    (row(failure_phase="trailers"), "Invalid enum value 'trailers' - at `$.failure_phase`"),
    (row(failure_phase=""), "Invalid enum value '' - at `$.failure_phase`"),
    (row(retrieval__ΔS_q_r=1.5), "Expected `float` <= 1.0 - at `$.retrieval.ΔS_q_r`"),
    (row(retrieval__coverage=-0.1), "Expected `float` >= 0.0 - at `$.retrieval.coverage`"),
    (row(retrieval__coverage=-INF), "Expected `float`, got `-inf` - at `$.retrieval.coverage`"),
    (row(retrieval__ΔS_q_r=NAN), "Expected `float`, got `NaN` - at `$.retrieval.ΔS_q_r`"),
    (row(retrieval__λ_state="sideways"), "Invalid enum value 'sideways' - at `$.retrieval.λ_state`"),
    (row(probe={"question_id": "q", "topic": None, "paraphrase": 1, "seed": 1}),
     "Object missing required field `topic` - at `$.probe`"),
    (row(probe={"question_id": "q", "topic": "t", "paraphrase": 1, "seed": None}),
     "Object missing required field `seed` - at `$.probe`"),
    (row(cache={"prefix": "v2-cnr:", "hit": None}), "Object missing required field `hit` - at `$.cache`"),
    # the first failing field in message order, as msgspec reports it
    (row(route="", latency_ms__tffb=-1.0), "Expected `str` of length >= 1 - at `$.route`"),
    (row(status=99, latency_ms__tffb=-1.0), "Expected `float` >= 0.0 - at `$.latency_ms.tffb`"),
    (row(region=..., failure_phase="x"), "Invalid enum value 'x' - at `$.failure_phase`"),
]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("strings", ["categorical", "string"])
def test_typed_violations_are_the_codecs_dead_letters(tmp_path: Path, strings: str, layout: str) -> None:
    rows = [ROW] + [doc for doc, _ in VIOLATIONS] + [ROW]
    path = typed_file(tmp_path / "v.parquet", rows, strings, layout)
    frame, dead, (batch,) = read([path])
    assert frame["row"].to_list() == [0, len(rows) - 1]
    assert len(dead) == len(VIOLATIONS)
    for (r, reason, detail, variant, ts), (doc, want) in zip(dead, VIOLATIONS, strict=True):
        assert reason == "schema"
        assert detail == want, (r, doc)
        assert variant == (doc["variant"] or None)
        assert ts == (ROW_TS if doc["ts"] is not None else None)
        # ... and what the codec says of the JSON the row stands for (NaN and inf have none)
        if "NaN" not in want and "inf" not in want:
            assert codec.decode(as_json(doc)).detail == want  # type: ignore[union-attr]
        # the dead letter carries the row's JSON serialization, and so does raws()
        message = batch.raws([r])[0]
        assert next(e for i, e in batch.dead if i == r).raw == message
        assert json.loads(message).get("variant") == doc["variant"]


@pytest.mark.parametrize(("text", "want"), [
    ("yesterday", "not an RFC 3339 date-time: 'yesterday' - at `$.ts`"),
    ("2025-08-27 06:00:01Z", "not an RFC 3339 date-time: '2025-08-27 06:00:01Z' - at `$.ts`"),
    ("2025-02-30T00:00:00Z", "day is out of range for month - at `$.ts`"),
    ("2025-08-27T24:00:00Z", "hour must be in 0..23 - at `$.ts`"),
    ("2025-08-27T06:00:60Z", "second must be in 0..59 - at `$.ts`"),
    ("2025-08-27T06:00:01+24:00", "not an RFC 3339 date-time: '2025-08-27T06:00:01+24:00' - at `$.ts`"),
    ("0000-01-01T00:00:00Z", "year 0 is out of range - at `$.ts`"),
    ("", "not an RFC 3339 date-time: '' - at `$.ts`"),
])
def test_string_ts_that_is_not_rfc3339(tmp_path: Path, text: str, want: str) -> None:
    path = typed_file(tmp_path / "t.parquet", [row(ts=text)], ts=pl.String())
    frame, dead, _ = read([path])
    assert frame.is_empty()
    assert dead == [(0, "schema", want, "canary-v2", None)]
    assert codec.decode(as_json(row(ts=text))).detail == want  # type: ignore[union-attr]


VALID: list[dict[str, Any]] = [
    ROW,
    row(x_warm=True, failure_phase="body", status=502, request_id=...),
    row(status=100), row(status=599),
    row(latency_ms={"tffb": 0.0, "tusable": -0.0, "tfinal": 1.7976931348623157e308}),
    row(retrieval__ΔS_q_r=0.0, retrieval__coverage=1.0),
    row(retrieval__λ_state="chaotic"), row(retrieval__λ_state="<>"), row(retrieval__λ_state=...),
    row(retrieval={"k": None, "metric": None, "analyzer": None, "INDEX_HASH": None, "ΔS_q_r": None,
                   "coverage": None, "λ_state": None}),  # an empty retrieval block is still a block
    row(retrieval=..., cache=...),
    row(probe={"question_id": "q001", "topic": "", "paraphrase": -3, "seed": 2**62}),
    row(cache={"prefix": "", "hit": False}),
    row(egress={"webhook": "w", "tries": None, "dedupe_key": "d"}),
    row(route="é", sticky="\x00\n\"", region="日本"),
    row(ts=datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)),
    row(ts=datetime(1500, 1, 1, tzinfo=UTC)),  # beyond 2**53 us: mapped by the codec
    row(ts=datetime(999, 2, 3, 4, 5, 6, 70, tzinfo=UTC)),
    row(ts=datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)),
]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("strings", ["categorical", "string"])
def test_valid_typed_rows_equal_the_codecs_events(tmp_path: Path, strings: str, layout: str) -> None:
    path = typed_file(tmp_path / "ok.parquet", VALID, strings, layout)
    frame, dead, (batch,) = read([path])
    assert dead == []
    want = frames.from_events([codec.decode(as_json(doc)) for doc in VALID], range(len(VALID)))  # type: ignore[misc]
    assert_frame_equal(frame, want)
    assert frame["has_retrieval"].to_list()[9:11] == [True, False]
    assert frame["lambda_state"].to_list()[6:9] == [3, 2, -1]
    # raws() round-trips: the codec decodes each row's JSON to the frame's event
    for r, message in enumerate(batch.raws(range(len(VALID)))):
        decoded = codec.decode(message)
        assert isinstance(decoded, Event)
        assert fields(decoded) == fields(frames.to_events(frame.slice(r, 1))[0])


@pytest.mark.parametrize("layout", LAYOUTS)
def test_rows_are_written_as_json_alike_column_wise_and_row_by_row(tmp_path: Path, layout: str) -> None:
    lines = scenario_lines("lambda_flips")[:3000] + HOSTILE
    write_archive(lines, tmp_path / "s.parquet", layout)
    docs = [*VALID, *(doc for doc, _ in VIOLATIONS)]
    typed_file(tmp_path / "t.parquet", docs, "string", layout)
    for name in ("s.parquet", "t.parquet"):
        for b in open_archives([str(tmp_path / name)]):
            rows = list(range(len(b.frame) + len(b.dead)))
            lookup = b._lookup
            assert isinstance(lookup, parquet._RowLookup)
            typed = stored_typed_rows(tmp_path / name)
            assert b.raws(typed) == [m for m, _ in lookup.typed(typed)]
            some = rows[::-37]
            assert b.raws(some) == [b.raws([r])[0] for r in some]  # in any order and grouping


def stored_typed_rows(path: Path) -> list[int]:
    stored = pl.read_parquet(path).with_row_index()
    if "raw_bytes" not in stored.columns:
        stored = stored.with_columns(raw_bytes=pl.lit(None))
    return stored.filter(pl.col("raw").is_null() & pl.col("raw_bytes").is_null())["index"].to_list()


def test_timestamps_of_any_unit_and_zone(tmp_path: Path) -> None:
    moment = datetime(2025, 8, 27, 6, 0, 1, 123456, tzinfo=UTC)
    paris = ZoneInfo("Europe/Paris")
    cases: list[tuple[pl.DataType, Any, str]] = [
        (pl.Datetime("us"), moment.replace(tzinfo=None), "2025-08-27T06:00:01.123456Z"),  # naive = UTC
        (pl.Datetime("ms", "UTC"), moment, "2025-08-27T06:00:01.123Z"),
        (pl.Datetime("ns", "Europe/Paris"), moment.astimezone(paris), "2025-08-27T08:00:01.123456+02:00"),
        (pl.Datetime("ns"), datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC).replace(tzinfo=None),
         "1969-12-31T23:59:59.999999Z"),
        (pl.String(), "2025-08-27t11:30:01.1234569+05:30", "2025-08-27t11:30:01.1234569+05:30"),
        (pl.String(), "2025-08-27T06:00:01z", "2025-08-27T06:00:01z"),
        (pl.String(), "2024-02-29T23:59:59.5-23:59", "2024-02-29T23:59:59.5-23:59"),
        (pl.String(), "1600-02-29T00:00:00Z", "1600-02-29T00:00:00Z"),
        (pl.String(), "2300-01-01T00:00:00Z", "2300-01-01T00:00:00Z"),
    ]
    for i, (dtype, value, text) in enumerate(cases):
        path = typed_file(tmp_path / f"ts{i}.parquet", [row(ts=value)], ts=dtype)
        frame, dead, _ = read([path])
        assert dead == [], (dtype, value)
        assert frame["ts"].to_list() == [codec.parse_ts(text)], (dtype, value)


def test_nanoseconds_are_cut_as_fromisoformat_cuts_digits(tmp_path: Path) -> None:
    values = [-1500, -1, 0, 999, 1_756_274_401_123_456_789]
    df = pl.DataFrame({"ts": pl.Series(values, dtype=pl.Int64).cast(pl.Datetime("ns"))})
    rows = [row() for _ in values]
    path = typed_file(tmp_path / "ns.parquet", rows, ts=pl.Datetime("ns"))
    pl.read_parquet(path).with_columns(df["ts"]).write_parquet(path)
    frame, _, _ = read([path])
    texts = ["1969-12-31T23:59:59.9999985Z", "1969-12-31T23:59:59.999999999Z", "1970-01-01T00:00:00Z",
             "1970-01-01T00:00:00.000000999Z", "2025-08-27T06:00:01.123456789Z"]
    assert frame["ts"].to_list() == [codec.parse_ts(t) for t in texts]


# --------------------------------------------------------------------------- flat layout: block presence


EMPTY_BLOCKS = [
    encode(changed(retrieval={})),  # an empty block is still a block: has_retrieval
    encode(changed(retrieval={}, cache=None, egress={})),
    encode(BASE),
    encode(changed(retrieval=None, probe={"question_id": "q", "topic": "t", "paraphrase": 0, "seed": 0})),
]


def test_flat_presence_columns_keep_empty_blocks(tmp_path: Path) -> None:
    path = write_archive(EMPTY_BLOCKS, tmp_path / "e.parquet")
    stored = pl.read_parquet(path)
    assert stored["retrieval"].to_list() == [True, True, True, False]
    assert stored["egress"].to_list() == [False, True, False, False]
    assert stored["probe"].to_list() == [False, False, False, True]
    assert stored.select(pl.col("^retrieval\\..*$")).row(0) == (None,) * 7
    want_frame, want_dead = expected(EMPTY_BLOCKS)
    assert want_frame["has_retrieval"].to_list() == [True, True, True, False]
    frame, dead, (batch,) = read([path])
    assert_frame_equal(frame, want_frame)
    assert dead == want_dead == []
    messages = [json.loads(m) for m in batch.raws(range(4))]
    assert messages[0]["retrieval"] == {} and messages[1]["egress"] == {} and "egress" not in messages[0]
    assert "retrieval" not in messages[3]
    for message in batch.raws(range(4)):  # and the JSON decodes to the same event
        decoded = codec.decode(message)
        assert isinstance(decoded, Event)
        assert decoded.has_retrieval == ("retrieval" in json.loads(message))


def test_flat_file_without_presence_columns_infers_presence_from_fields(tmp_path: Path) -> None:
    path = write_archive(EMPTY_BLOCKS, tmp_path / "e.parquet")
    pl.read_parquet(path).drop("retrieval", "probe", "cache", "egress").write_parquet(path)
    # a block is present when any of its fields is non-null: an empty block reads as absent
    inferred = [encode(json.loads(line) | {"retrieval": None}) if i < 2 else line
                for i, line in enumerate(EMPTY_BLOCKS)]
    inferred = [encode({k: v for k, v in json.loads(line).items() if v is not None and v != {}})
                for line in inferred]
    want_frame, _ = expected(inferred)
    assert want_frame["has_retrieval"].to_list() == [False, False, True, False]
    frame, dead, (batch,) = read([path])
    assert dead == []
    assert_frame_equal(frame, want_frame)
    messages = [json.loads(m) for m in batch.raws(range(4))]
    assert [("retrieval" in m, "probe" in m, "cache" in m, "egress" in m) for m in messages] == [
        (False, False, True, False), (False, False, False, False), (True, False, True, False),
        (False, True, True, False)]


def test_flat_block_called_absent_ignores_its_fields(tmp_path: Path) -> None:
    probed = row(probe={"question_id": "q", "topic": "t", "paraphrase": 2, "seed": 7})
    path = typed_file(tmp_path / "a.parquet", [ROW, ROW, ROW, probed, probed])
    df = pl.read_parquet(path).with_columns(
        retrieval=pl.Series([True, False, None, True, True]),  # false or null: the block is absent
        probe=pl.Series([False, False, False, True, False]),
    )
    df.write_parquet(path)
    docs = [ROW, row(retrieval=...), row(retrieval=...), probed, row(probe=...)]
    frame, dead, (batch,) = read([path])
    assert dead == []
    want = frames.from_events([codec.decode(as_json(doc)) for doc in docs], range(5))  # type: ignore[misc]
    assert_frame_equal(frame, want)
    assert frame["has_retrieval"].to_list() == [True, False, False, True, True]
    assert frame["index_hash"].to_list() == ["0x9a77", None, None, "0x9a77", "0x9a77"]
    assert frame["probe_seed"].to_list() == [0, 0, 0, 7, 0]
    got = [json.loads(m).keys() for m in batch.raws(range(5))]
    assert got == [json.loads(as_json(d)).keys() for d in docs]


def test_nested_and_flat_files_read_alike(tmp_path: Path) -> None:
    lines = scenario_lines("schema_violations")[:2000] + HOSTILE + EMPTY_BLOCKS
    flat = write_archive(lines, tmp_path / "f.parquet")
    nested = write_archive(lines, tmp_path / "n.parquet", "nested")
    typed = pl.col("raw").is_null() & pl.col("raw_bytes").is_null()  # raw rows: presence null in `flat`
    assert flatten(pl.read_parquet(nested)).filter(typed).equals(pl.read_parquet(flat).filter(typed))
    (f,), (n,) = list(open_archives([flat])), list(open_archives([nested]))
    assert_frame_equal(f.frame, n.frame)
    assert keys(f.dead) == keys(n.dead)
    everything = range(len(lines))
    assert f.raws(everything) == n.raws(everything)


def test_compatible_column_types_are_accepted(tmp_path: Path) -> None:
    path = typed_file(tmp_path / "c.parquet", VALID[:4], layout="nested")
    df = pl.read_parquet(path).with_columns(
        pl.col("route", "variant").cast(pl.Categorical),
        pl.col("status").cast(pl.Int16),
        pl.col("latency_ms").cast(pl.Struct({"tffb": pl.Float32, "tusable": pl.Int32, "tfinal": pl.Float64})),
        pl.lit(None).alias("egress"),  # Null type
        pl.lit("ignored").alias("extra_column"),
    ).drop("x_exp", "probe", "raw")  # optional columns may be missing
    df.write_parquet(path)
    frame, dead, (batch,) = read([path])
    assert dead == []
    want = frames.from_events([codec.decode(as_json(doc)) for doc in VALID[:4]], range(4))  # type: ignore[misc]
    assert_frame_equal(frame, want)
    assert json.loads(batch.raws([0])[0])["latency_ms"] == {"tffb": 150.0, "tusable": 400.0, "tfinal": 1300.0}


def test_compatible_flat_column_types_are_accepted(tmp_path: Path) -> None:
    path = typed_file(tmp_path / "c.parquet", VALID[:4], "string")
    df = pl.read_parquet(path).with_columns(
        pl.col("route", "variant").cast(pl.Categorical),
        pl.col("status").cast(pl.Int16),
        pl.col("latency_ms.tffb").cast(pl.Float32),
        pl.col("latency_ms.tusable").cast(pl.Int32),
        pl.col("retrieval.k").cast(pl.UInt32),
        pl.lit(None).alias("egress"),  # Null type: presence from the fields
        pl.lit(True).alias("latency_ms"),  # a presence column for latency_ms is accepted
        pl.lit("ignored").alias("extra_column"),
        pl.lit(1).alias("retrieval.extra_field"),
    ).drop("x_exp", cs.starts_with("probe"), "raw", "egress.webhook")  # optional columns may be missing
    df.write_parquet(path)
    frame, dead, (batch,) = read([path])
    assert dead == []
    want = frames.from_events([codec.decode(as_json(doc)) for doc in VALID[:4]], range(4))  # type: ignore[misc]
    assert_frame_equal(frame, want)
    assert json.loads(batch.raws([0])[0])["latency_ms"] == {"tffb": 150.0, "tusable": 400.0, "tfinal": 1300.0}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_raw_rows_decode_as_the_stream(tmp_path: Path, layout: str) -> None:
    lines = [b'{"variant": "canary-v2", "ts": "2025-08-27T06:00:01Z"', encode(BASE), b"x" * 2000]
    rows = [row(raw=lines[0].decode()), row(raw=lines[1].decode(), route=""), row(raw=lines[2].decode())]
    path = typed_file(tmp_path / "r.parquet", rows, layout=layout)
    opened = open_archives([path], max_bytes=1000)
    (batch,) = list(opened)
    want = [(0, codec.decode(lines[0])), (2, codec.decode(lines[2], 1000))]
    assert keys(batch.dead) == keys(want)  # type: ignore[arg-type]
    assert batch.dead[1][1].reason is DeadLetterReason.TOO_LARGE
    assert batch.frame["row"].to_list() == [1]  # raw wins over the typed columns
    assert batch.raws([0, 1, 2]) == lines


@pytest.mark.parametrize("layout", LAYOUTS)
def test_typed_rows_round_trip_through_raws(tmp_path: Path, layout: str) -> None:
    lines = scenario_lines("lambda_flips") + HOSTILE
    write_archive(lines, tmp_path / "s.parquet", layout)
    for b in open_archives([str(tmp_path / "s.parquet")], batch_rows=2000):
        rows = b.frame["row"].to_list()
        events = frames.to_events(b.frame)
        for message, event in zip(b.raws(rows), events, strict=True):
            decoded = codec.decode(message)
            assert isinstance(decoded, Event)
            assert fields(decoded) == fields(event)
        assert [b.raws([r])[0] for r, _ in b.dead] == [e.raw for _, e in b.dead]


# --------------------------------------------------------------------------- property: columns vs codec

_floats = st.one_of(st.none(), st.sampled_from([0.0, -0.0, 0.5, 1.0, 1.5, -1.0, NAN, INF, -INF, 1e308]),
                    st.floats(allow_nan=False, allow_infinity=False, width=64))
_labels = st.one_of(st.none(), st.sampled_from(["", "a", "canary-v2", "é"]))
_lambda = st.one_of(st.none(), st.sampled_from(["→", "←", "<>", "×", "convergent", "chaotic", "", "up"]))
_ts_text = st.one_of(
    st.builds(lambda y, mo, d, h, mi, s, frac, off:
              f"{y:04d}-{mo:02d}-{d:02d}T{h:02d}:{mi:02d}:{s:02d}{frac}{off}",
              st.integers(0, 9999), st.integers(0, 13), st.integers(0, 32), st.integers(0, 24),
              st.integers(0, 60), st.integers(0, 60),
              st.sampled_from(["", ".5", ".123456", ".1234567", "."]),
              st.sampled_from(["Z", "z", "+00:00", "-23:59", "+24:00", "+05:60", ""])),
    st.text(max_size=30),
)


_ts_moment = st.one_of(st.none(), st.datetimes(timezones=st.just(UTC)),
                       st.datetimes(datetime(1960, 1, 1, tzinfo=UTC).replace(tzinfo=None),
                                    datetime(2100, 1, 1, tzinfo=UTC).replace(tzinfo=None),
                                    timezones=st.just(UTC)))


@st.composite
def typed_rows(draw: st.DrawFn, ts_text: bool) -> dict[str, Any]:
    return {
        "ts": draw(_ts_text if ts_text else _ts_moment),
        "route": draw(_labels), "variant": draw(_labels), "sticky": "s", "region": draw(_labels),
        "edge_pop": None, "x_exp": None, "request_id": draw(st.one_of(st.none(), st.text(max_size=5))),
        "cold_start": draw(st.one_of(st.none(), st.booleans())),
        "x_warm": draw(st.one_of(st.none(), st.booleans())),
        "latency_ms": draw(st.one_of(st.none(), st.fixed_dictionaries(
            {"tffb": _floats, "tusable": _floats, "tfinal": _floats}))),
        "status": draw(st.one_of(st.none(), st.integers(-5, 700))),
        "failure_phase": draw(st.one_of(st.none(), st.sampled_from(["headers", "body", "", "x"]))),
        "retrieval": draw(st.one_of(st.none(), st.fixed_dictionaries({
            "k": st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)),
            "metric": _labels, "analyzer": _labels,
            "INDEX_HASH": _labels, "ΔS_q_r": _floats, "coverage": _floats, "λ_state": _lambda}))),
        "probe": draw(st.one_of(st.none(), st.fixed_dictionaries({
            "question_id": _labels, "topic": _labels, "paraphrase": st.one_of(st.none(), st.integers(-9, 9)),
            "seed": st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1))}))),
        "cache": draw(st.one_of(st.none(), st.fixed_dictionaries(
            {"prefix": _labels, "hit": st.one_of(st.none(), st.booleans())}))),
        "egress": None,
        "raw": None,
    }


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.booleans().flatmap(lambda text: st.tuples(
    st.just(text), st.sampled_from(["categorical", "string"]), st.sampled_from(LAYOUTS),
    st.lists(typed_rows(text), min_size=1, max_size=25))))
def test_any_typed_row_reads_as_the_codec_decodes_its_json(
        tmp_path: Path, case: tuple[bool, str, str, list[dict[str, Any]]]) -> None:
    ts_text, strings, layout, docs = case
    path = typed_file(tmp_path / "p.parquet", docs, strings, layout,
                      **({"ts": pl.String()} if ts_text else {}))
    (batch,) = list(open_archives([path]))
    dead = dict(batch.dead)
    accepted = iter(frames.to_events(batch.frame))
    assert sorted([*dead, *batch.frame["row"].to_list()]) == list(range(len(docs)))
    for r, given_doc in enumerate(docs):
        doc, latency = given_doc, given_doc["latency_ms"]
        if layout == "flat" and latency is not None and all(v is None for v in latency.values()):
            doc = {**doc, "latency_ms": None}  # no presence column for latency_ms: no field, no block
        message = as_json(doc)
        want = codec.decode(message)
        if isinstance(want, Event):
            assert r not in dead, (doc, dead.get(r))
            assert fields(next(accepted)) == fields(want)
        else:
            got = dead[r]
            assert (got.reason, got.variant, got.ts) == (want.reason, want.variant, want.ts), doc
            odd = [k for k, v in _numbers(doc) if v is not None and not math.isfinite(v)]
            if not odd:
                assert got.detail == want.detail, doc


def _numbers(doc: dict[str, Any]) -> list[tuple[str, float | None]]:
    out = []
    blocks = (("latency_ms", ("tffb", "tusable", "tfinal")), ("retrieval", ("ΔS_q_r", "coverage")))
    for block, names in blocks:
        if doc[block] is not None:
            out += [(f"{block}.{n}", doc[block][n]) for n in names]
    return out


# --------------------------------------------------------------------------- bad paths and files


def test_bad_paths_name_the_path(tmp_path: Path) -> None:
    good = write_jsonl(tmp_path / "good.jsonl", scenario_lines("healthy")[:5])
    empty = tmp_path / "empty"
    empty.mkdir()
    (tmp_path / "notes.csv").write_text("a,b\n")
    (tmp_path / "fake.jsonl.gz").write_bytes(b"plain text, not gzip\n")
    (tmp_path / "fake.parquet").write_bytes(b"not parquet at all")
    (tmp_path / "empty.parquet").write_bytes(b"")
    cases = {
        str(tmp_path / "missing.jsonl"): "no such file",
        str(empty): "folder holds no archive",
        str(tmp_path / "*.nothing"): "no archive",
        str(tmp_path / "notes.csv"): "not an archive",
        str(tmp_path / "fake.jsonl.gz"): "not a gzip file",
        str(tmp_path / "fake.parquet"): "not a readable Parquet file",
        str(tmp_path / "empty.parquet"): "not a readable Parquet file",
    }
    for path, problem in cases.items():
        with pytest.raises(ArchiveError) as info:
            open_archives([good, path])  # checked up front, before the good file is read
        message = str(info.value)
        assert message.startswith(f"{path}: ") and problem in message and "\n" not in message
        assert isinstance(info.value, ValueError)
    with pytest.raises(ArchiveError):
        open_archives([])


def test_parquet_layout_errors_name_the_column(tmp_path: Path) -> None:
    base = pl.read_parquet(typed_file(tmp_path / "base.parquet", [ROW], layout="nested"))
    flat = pl.read_parquet(typed_file(tmp_path / "flat.parquet", [ROW]))
    latency = pl.struct(pl.col("^latency_ms\\..*$").name.map(lambda n: n.split(".")[1])).alias("latency_ms")
    cases: list[tuple[pl.DataFrame, str | None]] = [
        (base.drop("status"), "column `status` is missing"),
        (base.with_columns(pl.col("status").cast(pl.String)), "column `status` has type String"),
        (base.with_columns(pl.col("cold_start").cast(pl.Int8)), "column `cold_start` has type Int8"),
        (base.with_columns(pl.col("ts").cast(pl.Int64)), "column `ts` has type Int64"),
        (base.with_columns(pl.col("latency_ms").struct.field("tffb", "tusable").pipe(pl.struct)
                           .alias("latency_ms")), "column `latency_ms.tfinal` is missing"),
        (base.with_columns(pl.lit("x").alias("retrieval")), "column `retrieval` has type String"),
        (base.with_columns(pl.struct(prefix=pl.lit(1), hit=pl.lit(True)).alias("cache")),
         "column `cache.prefix` has type Int32"),
        (base.drop("latency_ms"), "column `latency_ms` is missing"),
        # the flat layout names its dotted columns
        (flat.drop("status"), "column `status` is missing"),
        (flat.drop("latency_ms.tffb"), "column `latency_ms.tffb` is missing"),
        (flat.drop(cs.starts_with("latency_ms")), "column `latency_ms.tffb` is missing"),
        (flat.drop("probe.topic"), "column `probe.topic` is missing"),  # the block has columns: all required
        (flat.drop("cache"), None),  # presence from the fields
        (flat.drop("cache.hit"), "column `cache.hit` is missing"),
        (flat.drop("cache", "cache.hit"), "column `cache.hit` is missing"),
        (flat.drop(cs.starts_with("probe"), cs.starts_with("cache")), None),  # blocks absent
        (flat.with_columns(pl.col("latency_ms.tfinal").cast(pl.String)),
         "column `latency_ms.tfinal` has type String, expected Float64"),
        (flat.with_columns(pl.lit(1).alias("cache.prefix")), "column `cache.prefix` has type Int32"),
        (flat.with_columns(pl.col("retrieval.k").cast(pl.Float64)),
         "column `retrieval.k` has type Float64, expected an integer type"),
        (flat.with_columns(pl.col("retrieval").cast(pl.Int8)), "column `retrieval` has type Int8"),
        (flat.with_columns(pl.col("status").cast(pl.String)), "column `status` has type String"),
        # one file, one layout
        (flat.with_columns(latency),
         "column `latency_ms.tffb` is in the flat layout but column `latency_ms` is a struct"),
        (flat.with_columns(latency).drop(cs.starts_with("latency_ms.")),
         "column `retrieval` is in the flat layout but column `latency_ms` is a struct"),
        (base.with_columns(pl.lit(3).alias("retrieval.k")),
         "column `retrieval.k` is in the flat layout but column `retrieval` is a struct"),
        (base.drop("probe").with_columns(pl.lit(None, pl.String).alias("probe.topic")),
         "column `probe.topic` is in the flat layout but column `latency_ms` is a struct"),
        (base.with_columns(pl.lit(True).alias("egress")),
         "column `egress` is in the flat layout but column `latency_ms` is a struct"),
    ]
    for i, (df, problem) in enumerate(cases):
        path = tmp_path / f"bad{i}.parquet"
        df.write_parquet(path)
        if problem is None:
            assert [b.dead for b in open_archives([str(path)])] == [[]]
            continue
        with pytest.raises(ArchiveError, match=problem) as info:
            open_archives([str(path)])
        assert str(info.value).startswith(f"{path}: ")


def test_corrupt_gzip_fails_while_reading_with_the_path(tmp_path: Path) -> None:
    data = gzip.compress(b"".join(line + b"\n" for line in scenario_lines("healthy")))
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(data[: len(data) // 2])
    opened = open_archives([str(path)])
    with pytest.raises(ArchiveError, match=f"^{path}: unreadable"):
        list(opened)


def test_empty_archives_give_one_empty_batch(tmp_path: Path) -> None:
    (tmp_path / "e.jsonl").write_bytes(b"")
    (tmp_path / "b.jsonl").write_bytes(b"\n\n")
    write_parquet([], tmp_path / "p.parquet")
    for name in ("e.jsonl", "b.jsonl", "p.parquet"):
        opened = open_archives([str(tmp_path / name)])
        (batch,) = list(opened)
        assert batch.frame.is_empty() and batch.dead == []
        assert batch.frame.schema == pl.Schema(frames.SCHEMA)
        assert batch.done_bytes == opened.total_bytes


# --------------------------------------------------------------------------- canary-gate generate


def test_generate_parquet_reads_back_as_the_jsonl(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["generate", "--scenario", "schema_violations", "--seed", "3", "--minutes", "3"]
    assert cli.main([*args, "--out", str(tmp_path / "s.jsonl")]) == 0
    jsonl_said = capsys.readouterr().err
    assert cli.main([*args, "--out", str(tmp_path / "s.parquet")]) == 0
    parquet_said = capsys.readouterr().err
    assert cli.main([*args, "--format", "parquet", "--out", str(tmp_path / "t.parquet")]) == 0
    capsys.readouterr()
    assert parquet_said == jsonl_said.replace("s.jsonl", "s.parquet")
    assert parquet_said.startswith("canary-gate: wrote ") and parquet_said.count("\n") == 1
    frame, dead, _ = read([str(tmp_path / "s.jsonl")])
    for name in ("s.parquet", "t.parquet"):
        p_frame, p_dead, _ = read([str(tmp_path / name)])
        assert len(p_frame) == len(frame) > 0
        assert_frame_equal(p_frame, frame)
        assert p_dead == dead != []


@pytest.mark.parametrize(("out", "fmt", "problem"), [
    ("-", "parquet", "--format parquet writes a file"),
    ("kafka://localhost:9092/t", "parquet", "--format parquet writes a file"),
    ("x.jsonl", "parquet", "must end with .parquet"),
    ("x.parquet", "jsonl", "ends with .parquet"),
])
def test_generate_format_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                      out: str, fmt: str, problem: str) -> None:
    target = out if out == "-" or out.startswith("kafka://") else str(tmp_path / out)
    code = cli.main(["generate", "--scenario", "healthy", "--minutes", "1", "--format", fmt, "--out", target])
    said = capsys.readouterr().err
    assert code == 2
    assert problem in said and said.count("\n") == 1
    assert not list(tmp_path.iterdir())


def test_writer_leaves_no_file_when_the_input_fails(tmp_path: Path) -> None:
    def lines() -> Any:
        yield from scenario_lines("healthy")[:10]
        raise RuntimeError("input broke")

    with pytest.raises(RuntimeError, match="input broke"):
        write_parquet(lines(), tmp_path / "x.parquet")
    assert list(tmp_path.iterdir()) == []

