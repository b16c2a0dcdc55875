"""Replay and backtest: the same verdicts as the stream, what-ifs over the same aggregates."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys
from pathlib import Path

import msgspec
import numpy as np
import polars as pl
import pytest
from conftest import ROOT

from pipeline import config, frame, scenarios
from pipeline.aggregate.partial import summarize_frame
from pipeline.aggregate.stats import WindowStats
from pipeline.cli import main
from pipeline.clock import windows_of
from pipeline.decode import codec
from pipeline.dedupe import repeats_in_events
from pipeline.engine import Engine, Report
from pipeline.model import DecodeError, Event
from pipeline.population import label_row, sticky_keys, users_of
from pipeline.replay import archive, whatif

MINUTES = 25


def _stream(tmp_path: Path, cfg_path: Path, source: Path) -> tuple[list[dict], list[dict]]:
    """Verdicts and dead letters of `canary-gate run` (the Bytewax dataflow) over a JSONL file."""
    verdicts, dead = tmp_path / "stream.verdicts.jsonl", tmp_path / "stream.dead.jsonl"
    res = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", "--config", str(cfg_path),
                          "--source", str(source), "--verdicts", str(verdicts), "--dead-letters", str(dead),
                          "--board", "off"], cwd=ROOT, capture_output=True, timeout=300, check=False)
    assert res.returncode == 0, res.stderr.decode()
    return _records(verdicts), _records(dead)


def _records(path: Path) -> list[dict]:
    """JSONL records of a file; none when the run wrote none (the stream opens its files lazily)."""
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _replay(cfg_path: Path, out: Path, *archives: Path | str, extra: tuple[str, ...] = ()) -> tuple[
        list[dict], list[dict]]:
    assert main(["replay", "--config", str(cfg_path), *map(str, archives), "--out", str(out), *extra]) == 0
    name = config.load(cfg_path).name
    return _records(out / f"{name}.verdicts.jsonl"), _records(out / f"{name}.dead-letters.jsonl")


def _scenario(tmp_path: Path, name: str, seed: int = 5) -> tuple[Path, Path, list[bytes]]:
    cfg_path = tmp_path / "rollout.toml"
    cfg_path.write_text(scenarios.scenario_config(name))
    lines = list(scenarios.generate(name, seed, MINUTES))
    jsonl = tmp_path / "archive.jsonl"
    jsonl.write_bytes(b"".join(line + b"\n" for line in lines))
    return cfg_path, jsonl, lines


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(scenarios.SCENARIOS))
def test_replay_timeline_equals_the_streaming_run(tmp_path: Path, name: str) -> None:
    cfg_path, jsonl, lines = _scenario(tmp_path, name)
    parquet = tmp_path / "archive.parquet"
    archive.write_parquet(lines, parquet)
    gz = tmp_path / "archive.jsonl.gz"
    gz.write_bytes(gzip.compress(jsonl.read_bytes()))
    stream, stream_dead = _stream(tmp_path, cfg_path, jsonl)
    assert len(stream) >= MINUTES - 1

    for source in (jsonl, gz, parquet):
        verdicts, dead = _replay(cfg_path, tmp_path / f"out-{source.name}", source, extra=("--no-report",))
        # the whole record: decision, every gate's status, observed value, counts and reason
        assert verdicts == stream, source.name
        # the same message: JSONL keeps its line, a typed Parquet row comes back as canonical JSON
        text = source.suffix != ".parquet"
        assert [(d["reason"], d["detail"], d["variant"], d["line"] if text else _event(d["line"]))
                for d in dead] == \
            [(d["reason"], d["detail"], d["variant"], d["line"] if text else _event(d["line"]))
             for d in stream_dead], source.name
        # the archive's own name and line, as the file source names them
        assert [d["source"].split(":")[1] for d in dead] == [d["source"].split(":")[1] for d in stream_dead]


@pytest.mark.parametrize("name", ["schema_violations", "out_of_order", "healthy"])
def test_batch_boundaries_and_archive_splits_change_nothing(tmp_path: Path, name: str) -> None:
    cfg_path, jsonl, lines = _scenario(tmp_path, name, seed=9)
    whole, whole_dead = _replay(cfg_path, tmp_path / "whole", jsonl, extra=("--no-report",))
    small, small_dead = _replay(cfg_path, tmp_path / "small", jsonl,
                                extra=("--no-report", "--batch-rows", "777"))
    assert small == whole and small_dead == whole_dead
    # the same stream cut into three Parquet parts in a folder, read by name
    parts = tmp_path / "parts"
    parts.mkdir()
    third = len(lines) // 3
    for i, piece in enumerate((lines[:third], lines[third:2 * third], lines[2 * third:])):
        archive.write_parquet(piece, parts / f"part-{i}.parquet")
    split, split_dead = _replay(cfg_path, tmp_path / "split", parts, extra=("--no-report",))
    assert split == whole
    # a typed Parquet row's dead letter carries the row as canonical JSON: the same event
    assert [(d["reason"], d["variant"], _event(d["line"])) for d in split_dead] == \
        [(d["reason"], d["variant"], _event(d["line"])) for d in whole_dead]


def _event(line: str) -> object:
    """What a dead letter's line decodes to, without the original bytes."""
    item = codec.decode(line.encode())
    return msgspec.structs.replace(item, raw=b"") if isinstance(item, Event) else item.reason


Reference = list[tuple[int, WindowStats, dict[str, list[str]]]]


def _reference(events: list[Event], size: float, variants: tuple[str, ...]) -> Reference:
    """Per window in order of first appearance, event by event: raw counters and sketches, sticky keys."""
    kept, wids, _, _ = repeats_in_events(events, windows_of(np.array([e.ts for e in events]), size))
    by_window: dict[int, list[Event]] = {}
    for e, w in zip(kept, wids.tolist(), strict=True):
        by_window.setdefault(w, []).append(e)
    out = []
    for wid, evs in by_window.items():
        stats = WindowStats.new()
        stats.add_many(evs, None)
        out.append((wid, stats, sticky_keys(users_of(evs), variants)))
    return out


def test_summaries_equal_the_event_by_event_aggregates() -> None:
    """summarize_frame (polars) builds what WindowStats builds event by event, window by window."""
    cfg = config.parse(scenarios.scenario_config("cache_prefix_collision"))
    items = [codec.decode(line) for line in scenarios.generate("cache_prefix_collision", 3, 8)]
    events = [e for e in items if isinstance(e, Event)]
    # repeats: the same request ids again, in the same window
    events = events + [e for e in events[-40:] if e.request_id is not None]
    variants = (cfg.control, cfg.canary)
    ours = summarize_frame(frame.from_events(events, list(range(len(events)))), cfg.windows.size_s, variants)
    kept, _, repeated, repeats = repeats_in_events(events, windows_of(ours.ts, cfg.windows.size_s))
    assert ours.repeats == repeats and len(repeats) > 0
    assert repeated is not None and ours.repeated is not None and (ours.repeated == repeated).all()
    assert ours.labels["rows"] == list(dict.fromkeys(map(label_row, kept)))
    theirs = _reference(events, cfg.windows.size_s, variants)
    assert [w.wid for w in ours.windows] == [wid for wid, _, _ in theirs]
    for a, (wid, b, sticky) in zip(ours.windows, theirs, strict=True):
        assert {f: dict(c) for f, c in a.stats.c.items()} == {f: dict(c) for f, c in b.c.items() if c}
        assert {v: sorted(k) for v, k in a.sticky.items()} == {v: sorted(k) for v, k in sticky.items()}
        ids = [e.request_id for e in kept
               if e.request_id is not None and int(e.ts // cfg.windows.size_s) == wid]
        assert ours.ids.values(wid) == ids
        assert ours.ids.hashes[wid].tolist() == pl.Series(ids, dtype=pl.String).hash().to_list()
        mine = WindowStats.new()
        mine.merge(a.stats)
        assert mine.latency.keys() == b.latency.keys()
        for key, sketches in mine.latency.items():
            for x, y in zip(sketches, b.latency[key], strict=True):
                assert (x.counts == y.counts).all() and x.zero == y.zero


def test_duplicates_across_batches_and_late_events_fall_back_exactly(tmp_path: Path) -> None:
    """A batch that repeats an earlier batch's request ids, or holds late events, is judged event by event."""
    cfg_path, _jsonl, lines = _scenario(tmp_path, "late_regression", seed=2)
    # every 50th line again 700 lines later: duplicates that cross batch boundaries
    mixed = []
    for i, line in enumerate(lines):
        mixed.append(line)
        if i >= 700 and i % 50 == 0:
            mixed.append(lines[i - 700])
    dup = tmp_path / "dup.jsonl"
    dup.write_bytes(b"".join(line + b"\n" for line in mixed))
    stream, stream_dead = _stream(tmp_path, cfg_path, dup)
    verdicts, dead = _replay(cfg_path, tmp_path / "out", dup, extra=("--no-report", "--batch-rows", "2000"))
    assert verdicts == stream
    assert [d["line"] for d in dead] == [d["line"] for d in stream_dead]
    cfg = config.load(cfg_path)
    engine_dups = Engine(cfg)
    engine_dups.feed([codec.decode(line) for line in mixed])
    assert engine_dups.totals["duplicates"] > 0  # the test does exercise duplicates


def test_rejudge_with_the_same_config_reproduces_the_replay(tmp_path: Path) -> None:
    cfg_path, _jsonl, lines = _scenario(tmp_path, "new_5xx_class")
    cfg = config.load(cfg_path)
    items: list[Event | DecodeError] = [codec.decode(line) for line in lines]
    engine = Engine(cfg)
    engine.kept = []
    reports = [o for o in engine.feed(items) + engine.close() if isinstance(o, Report)]
    again = list(whatif.rejudge(cfg, engine.kept))
    assert [v.to_record() for v in again] == [r.verdict.to_record() for r in reports]


def test_what_if_thresholds_print_what_changes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg_path, jsonl, _ = _scenario(tmp_path, "warm_latency_regression")
    loose = tmp_path / "loose.toml"
    loose.write_text("[thresholds]\nlatency_ratio_max = 3.0\n")
    strict = tmp_path / "strict.toml"
    strict.write_text("[thresholds]\nlatency_ratio_max = 1.01\nerror_rate_tolerance = 0.0\n")
    verdicts, _ = _replay(cfg_path, tmp_path / "out", jsonl,
                          extra=("--thresholds", str(loose), "--thresholds", str(strict), "--no-report"))
    out = capsys.readouterr().out
    first = next(v["window_end"] for v in verdicts if v["decision"] == "stop")
    assert "what-if loose.toml: thresholds.latency_ratio_max 1.25 -> 3.0" in out
    assert f"first stop: never (replay: {first})" in out
    assert "p95_warm_latency us-east fail -> pass" in out
    assert "what-if strict.toml: thresholds.latency_ratio_max 1.25 -> 1.01, " \
           "thresholds.error_rate_tolerance 0.002 -> 0.0" in out
    name = config.load(cfg_path).name
    loose_timeline = _records(tmp_path / "out" / f"{name}.what-if-loose.verdicts.jsonl")
    assert [v["window_end"] for v in loose_timeline] == [v["window_end"] for v in verdicts]
    assert all(v["decision"] != "stop" for v in loose_timeline)
    # the what-if equals a replay under the changed config, from scratch
    changed = tmp_path / "changed.toml"
    assert "[thresholds]" not in cfg_path.read_text()
    changed.write_text(cfg_path.read_text() + "\n[thresholds]\nlatency_ratio_max = 3.0\n")
    fresh, _ = _replay(changed, tmp_path / "fresh", jsonl, extra=("--no-report",))
    assert loose_timeline == fresh


@pytest.mark.parametrize(("text", "key"), [
    ("[windows]\nsize_s = 30\n", "windows"),
    ("[rollout]\ncanary = \"x\"\n", "rollout.canary"),
    ("[thresholds]\nlatency_ratio_max = -1\n", "thresholds.latency_ratio_max"),
    ("[thresholds\n", "toml"),
])
def test_bad_what_if_file_is_refused_in_one_line(tmp_path: Path, text: str, key: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    cfg_path, jsonl, _ = _scenario(tmp_path, "healthy")
    bad = tmp_path / "bad.toml"
    bad.write_text(text)
    assert main(["replay", "--config", str(cfg_path), str(jsonl), "--out", str(tmp_path / "o"),
                 "--thresholds", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and key in err[0] and str(bad) in err[0]
    assert not (tmp_path / "o").exists()  # refused before anything was read or written


def test_bad_archives_are_refused_before_anything_is_written(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    cfg_path, jsonl, _ = _scenario(tmp_path, "healthy")
    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(b"PAR1 not really")
    for bad in (tmp_path / "missing.parquet", corrupt, tmp_path / "nothing-*.jsonl",
                tmp_path / "rollout.toml"):
        assert main(["replay", "--config", str(cfg_path), str(jsonl), str(bad),
                     "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and str(bad) in err[0], err
    assert not (tmp_path / "o").exists()


def test_report_and_outputs_are_written(tmp_path: Path) -> None:
    cfg_path, jsonl, _ = _scenario(tmp_path, "coverage_drop")
    out = tmp_path / "out"
    verdicts, _ = _replay(cfg_path, out, jsonl)
    name = config.load(cfg_path).name
    windows = _records(out / f"{name}.windows.jsonl")
    assert [w["window_end"] for w in windows] == [v["window_end"] for v in verdicts]
    html = (out / f"{name}.report.html").read_text()
    assert "fig-coverage" in html and "data:image/png;base64," in html
    assert (out / f"{name}-figures" / "coverage.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_generate_parquet_round_trips_through_replay(tmp_path: Path) -> None:
    cfg_path = tmp_path / "rollout.toml"
    assert main(["generate", "--scenario", "schema_violations", "--minutes", "6", "--seed", "4",
                 "--out", str(tmp_path / "a.parquet"), "--config-out", str(cfg_path)]) == 0
    assert main(["generate", "--scenario", "schema_violations", "--minutes", "6", "--seed", "4",
                 "--out", str(tmp_path / "a.jsonl")]) == 0
    from_parquet, dead_p = _replay(cfg_path, tmp_path / "p", tmp_path / "a.parquet", extra=("--no-report",))
    from_jsonl, dead_j = _replay(cfg_path, tmp_path / "j", tmp_path / "a.jsonl", extra=("--no-report",))
    assert from_parquet == from_jsonl and dead_p
    for d in dead_p + dead_j:
        d["source"] = d["source"].split(":")[1]  # the archive's name aside, the same line
    assert dead_p == dead_j
    rows = pl.read_parquet(tmp_path / "a.parquet").height
    assert rows == len((tmp_path / "a.jsonl").read_text().splitlines())


def test_glob_of_jsonl_archives_reads_them_in_name_order(tmp_path: Path) -> None:
    cfg_path, jsonl, lines = _scenario(tmp_path, "healthy", seed=12)
    whole, _ = _replay(cfg_path, tmp_path / "whole", jsonl, extra=("--no-report",))
    half = len(lines) // 2
    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "b.jsonl").write_bytes(b"".join(line + b"\n" for line in lines[half:]))
    first_half = b"".join(line + b"\n" for line in lines[:half])
    (tmp_path / "g" / "a.jsonl.gz").write_bytes(gzip.compress(first_half))
    globbed, _ = _replay(cfg_path, tmp_path / "globbed", str(tmp_path / "g" / "*"), extra=("--no-report",))
    assert globbed == whole
    shutil.rmtree(tmp_path / "g")


def test_far_off_event_times_are_dead_letters_as_in_the_stream(tmp_path: Path) -> None:
    """A valid event from years ago (late) or far ahead (future) mid-archive: no window, same verdicts."""
    cfg_path, _, lines = _scenario(tmp_path, "healthy", seed=21)
    odd = []
    for i, line in enumerate(lines):
        odd.append(line)
        if i in (3000, 9000):
            record = json.loads(line)
            record["ts"] = "1971-01-01T00:00:00Z" if i == 3000 else "2100-01-01T00:00:00Z"
            odd.append(json.dumps(record).encode())
    hostile = tmp_path / "odd.jsonl"
    hostile.write_bytes(b"".join(line + b"\n" for line in odd))
    parquet = tmp_path / "odd.parquet"
    archive.write_parquet(odd, parquet)
    stream, stream_dead = _stream(tmp_path, cfg_path, hostile)
    assert sorted(d["reason"] for d in stream_dead) == ["future", "late"]
    for source in (hostile, parquet):
        verdicts, dead = _replay(cfg_path, tmp_path / f"out-{source.suffix}", source, extra=("--no-report",))
        assert verdicts == stream
        assert [(d["reason"], d["detail"]) for d in dead] == [(d["reason"], d["detail"]) for d in stream_dead]


def test_progress_bar_shows_on_a_terminal(tmp_path: Path) -> None:
    """On a terminal the replay draws a progress bar (bytes and events); piped, only the summary line."""
    import os
    import pty

    cfg_path, jsonl, _ = _scenario(tmp_path, "healthy", seed=30)
    argv = [sys.executable, "-m", "pipeline.cli", "replay", "--config", str(cfg_path), str(jsonl),
            "--out", str(tmp_path / "out"), "--no-report", "--batch-rows", "2000"]
    primary, secondary = pty.openpty()
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=secondary,
                            env={**os.environ, "COLUMNS": "120"})
    os.close(secondary)
    seen = b""
    while True:
        try:
            chunk = os.read(primary, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    assert proc.wait(timeout=120) == 0
    os.close(primary)
    assert b"replaying" in seen and b"events" in seen, seen[-500:]
    piped = subprocess.run(argv, cwd=ROOT, capture_output=True, timeout=120, check=False)
    assert piped.returncode == 0
    assert b"replaying" not in piped.stderr and len(piped.stderr.decode().strip().splitlines()) == 1


def test_archive_broken_half_way_exits_1_keeping_what_was_judged(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    cfg_path, jsonl, _ = _scenario(tmp_path, "healthy", seed=31)
    whole = gzip.compress(jsonl.read_bytes())
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(whole[: len(whole) * 2 // 3])  # the gzip header is fine, the stream ends early
    out = tmp_path / "out"
    assert main(["replay", "--config", str(cfg_path), str(jsonl), str(cut), "--out", str(out),
                 "--no-report"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(cut) in err[0] and "verdicts so far" in err[0]
    # the first archive's windows were judged and written before the second broke
    written = _records(out / f"{config.load(cfg_path).name}.verdicts.jsonl")
    assert len(written) >= MINUTES - 2
