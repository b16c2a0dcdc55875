"""Golden verdict timelines: every scenario, judged by the stream core and by replay, as recorded.

The safety net of refactoring: for each scenario, at its own stage (50%) and at
1% (other gates stop there), the verdict records, the per-window records and
the dead letters must equal, byte for byte, those recorded in
tests/golden/timelines/.  The stream side is the dataflow's judge fed as the
dataflow feeds it (`feed.decode_chunk` per chunk, then `feed.Feeder`),
once with chunks of 500 messages and once event by event; the replay side is
`replay` over a JSONL archive and over Parquet.

After a change that is meant to alter verdicts, re-record with
`RECORD_TIMELINES=1 .venv/bin/python -m pytest tests/test_timelines.py` and
review the diff of the (gzip-compressed, one JSON record per line) files.
"""

from __future__ import annotations

import gzip
import io
import os
from pathlib import Path

import orjson
import pytest

from pipeline import config as config_mod
from pipeline import scenarios
from pipeline.engine import Engine, Report
from pipeline.feed import ChunkEvents, Feeder, decode_chunk
from pipeline.replay.archive import open_archives, write_parquet
from pipeline.replay.run import replay

GOLDEN = Path(__file__).parent / "golden" / "timelines"
RECORD = os.environ.get("RECORD_TIMELINES") == "1"
SEED = 7
STAGES = ("50%", "1%")


def _config(name: str, stage: str) -> config_mod.Config:
    return config_mod.parse(scenarios.scenario_config(name)).with_stage(stage)


def _lines(name: str) -> list[bytes]:
    return list(scenarios.generate(name, SEED, max(16, scenarios.SCENARIOS[name].min_minutes)))


def _records(outputs: list, cfg: config_mod.Config) -> list[bytes]:
    from pipeline.replay.run import window_record

    out = []
    for item in outputs:
        if isinstance(item, Report):
            out.append(b"V " + orjson.dumps(item.verdict.to_record(), option=orjson.OPT_SORT_KEYS))
            out.append(b"W " + orjson.dumps(window_record(item, cfg), option=orjson.OPT_SORT_KEYS))
        else:
            out.append(b"D " + orjson.dumps(item.to_record(), option=orjson.OPT_SORT_KEYS))
    return out


def _stream(cfg: config_mod.Config, lines: list[bytes], chunk: int) -> list[bytes]:
    engine = Engine(cfg)
    feeder = Feeder(engine)
    variants = (cfg.control, cfg.canary)
    max_bytes = cfg.limits.max_event_bytes
    out = []
    for start in range(0, len(lines), chunk):
        piece = lines[start:start + chunk]

        def locate(i: int, start: int = start) -> str:
            return f"archive.jsonl:{start + i + 1}"

        pieces = decode_chunk(piece, max_bytes, cfg.windows.size_s, variants)
        out.extend(feeder.feed(pieces, ChunkEvents(piece, locate, max_bytes), "0"))
    out.extend(engine.close())
    return _records(out, cfg)


def _replay(cfg: config_mod.Config, path: Path) -> list[bytes]:
    verdicts, dead, windows = io.BytesIO(), io.BytesIO(), io.BytesIO()
    outcome = replay(cfg, open_archives([str(path)], batch_rows=3000), verdicts=verdicts,
                     dead_letters=dead, windows=windows)
    out: list[bytes] = []
    # the replay writes verdicts, windows and dead letters to three files: interleave as the engine did
    v = iter(verdicts.getvalue().splitlines())
    w = iter(windows.getvalue().splitlines())
    for _ in outcome.verdicts:
        out.append(b"V " + orjson.dumps(orjson.loads(next(v)), option=orjson.OPT_SORT_KEYS))
        out.append(b"W " + orjson.dumps(orjson.loads(next(w)), option=orjson.OPT_SORT_KEYS))
    renamed = (f'"{path.name}:'.encode(), b'"archive.jsonl:')
    out.extend(b"D " + orjson.dumps(orjson.loads(line), option=orjson.OPT_SORT_KEYS).replace(*renamed)
               for line in dead.getvalue().splitlines())
    return out


def _judged(records: list[bytes]) -> list[bytes]:
    """Verdicts and windows in order, then dead letters in order (the replay writes them apart)."""
    return [r for r in records if not r.startswith(b"D ")] + [r for r in records if r.startswith(b"D ")]


def _without_lines(records: list[bytes]) -> list[bytes]:
    """Dead letters without the message text: Parquet keeps a typed row, not the line (docs/replay.md)."""
    out = []
    for r in records:
        if r.startswith(b"D "):
            record = orjson.loads(r[2:])
            del record["line"]
            out.append(b"D " + orjson.dumps(record, option=orjson.OPT_SORT_KEYS))
        else:
            out.append(r)
    return out


def _check(name: str, stage: str, label: str, got: list[bytes]) -> None:
    path = GOLDEN / f"{name}@{stage.rstrip('%')}.jsonl.gz"
    if RECORD and label == "stream":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(gzip.compress(b"\n".join(got) + b"\n", mtime=0))
        return
    # dead letters leave at once, verdicts when the clock closes their window: how the two
    # interleave depends on chunking, so each is compared in its own order
    want = _judged(gzip.decompress(path.read_bytes()).splitlines())
    got = _judged(got)
    if "parquet" in label:
        want, got = _without_lines(want), _without_lines(got)
    for i, (a, b) in enumerate(zip(got, want, strict=False)):
        assert a == b, f"{label}: record {i} of {path.name} differs:\n got  {a[:600]!r}\n want {b[:600]!r}"
    assert len(got) == len(want), f"{label}: {len(got)} records, golden {path.name} has {len(want)}"


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("name", sorted(scenarios.SCENARIOS))
def test_stream_timeline_is_the_recorded_one(name: str, stage: str) -> None:
    cfg = _config(name, stage)
    lines = _lines(name)
    _check(name, stage, "stream", _stream(cfg, lines, 500))
    _check(name, stage, "stream, one event a chunk", _stream(cfg, lines, 1) if name in {
        "healthy", "out_of_order", "schema_drift"} else _stream(cfg, lines, 37))


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("name", sorted(scenarios.SCENARIOS))
def test_replay_timeline_is_the_recorded_one(name: str, stage: str, tmp_path: Path) -> None:
    cfg = _config(name, stage)
    lines = _lines(name)
    jsonl = tmp_path / "archive.jsonl"
    jsonl.write_bytes(b"".join(line + b"\n" for line in lines))
    _check(name, stage, "replay jsonl", _replay(cfg, jsonl))
    parquet = tmp_path / "archive.parquet"
    write_parquet(iter(lines), parquet)
    _check(name, stage, "replay parquet", _replay(cfg, parquet))
