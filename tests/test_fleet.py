"""Fleet mode's pure core: the [match] rule in both forms, reading a rollouts directory, routing a chunk."""

from __future__ import annotations

from datetime import datetime
from itertools import pairwise
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from conftest import make_event
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline import config as config_mod
from pipeline import frame as frames
from pipeline import scenarios
from pipeline.config import ConfigError, Match
from pipeline.engine import Engine, Report
from pipeline.feed import ChunkEvents, Feeder, Piece, Summary, decode_chunk, route_chunk
from pipeline.fleet import (
    AMBIGUOUS,
    MAX_UNMATCHED,
    OTHER,
    UNMATCHED,
    FleetError,
    Router,
    UnmatchedCounts,
    load_dir,
    matches,
)
from pipeline.io.chunk import Chunk
from pipeline.io.rollouts import FleetControl
from pipeline.model import DeadLetterReason


def _rollout(name: str, match: str, extra: str = "") -> str:
    return (f'[rollout]\nname = "{name}"\ncontrol = "control"\ncanary = "canary-{name}"\nstage = "5%"\n'
            f"{extra}\n[match]\n{match}\n")


_VALUES = st.sampled_from(["exp-a", "exp-b", "exp-ab", "chat.rag", "chat.rag.answer", "search", "control",
                           "canary-v2", ""])
_MATCHES = st.builds(
    Match,
    x_exp=st.lists(_VALUES.filter(bool), max_size=2, unique=True).map(tuple),
    route_prefix=st.lists(_VALUES.filter(bool), max_size=2, unique=True).map(tuple),
    variants=st.lists(_VALUES.filter(bool), max_size=2, unique=True).map(tuple),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_MATCHES, min_size=1, max_size=4),
       st.lists(st.tuples(st.none() | _VALUES.filter(bool), _VALUES.filter(bool), _VALUES.filter(bool)),
                min_size=1, max_size=30))
def test_scalar_and_column_routes_agree(ms: list[Match], values: list[tuple[str | None, str, str]]) -> None:
    cfgs = [config_mod.Config(f"r{i}", "control", "canary-v2", "5%", match=m) for i, m in enumerate(ms)]
    router = Router(cfgs)
    events = [make_event(x_exp=x, route=r, variant=v) for x, r, v in values]
    frame = frames.from_events(events, range(len(events)))
    column = router.route(frame).tolist()
    assert column == [router.route_one(e) for e in events] == router.route_columns(frame).tolist()
    for e, got in zip(events, column, strict=True):
        hits = [i for i, m in enumerate(ms) if matches(m, e.x_exp, e.route, e.variant)]
        assert got == (hits[0] if len(hits) == 1 else AMBIGUOUS if hits else UNMATCHED)


def test_match_rule_each_key_must_hold() -> None:
    m = Match(x_exp=("exp-1",), route_prefix=("chat.",), variants=("control", "canary-v2"))
    assert matches(m, "exp-1", "chat.rag.answer", "canary-v2")
    assert not matches(m, None, "chat.rag.answer", "canary-v2")
    assert not matches(m, "exp-1", "search.answer", "canary-v2")
    assert not matches(m, "exp-1", "chat.rag.answer", "shadow")
    assert matches(Match(route_prefix=("chat.", "search.")), None, "search.answer", "x")


def test_match_table_is_validated() -> None:
    cfg = config_mod.parse(_rollout("a", 'x_exp = "exp-1"\nroute_prefix = ["chat.", "chat."]'))
    assert cfg.match == Match(x_exp=("exp-1",), route_prefix=("chat.",))
    assert cfg.effective()["match"] == {"x_exp": ["exp-1"], "route_prefix": ["chat."], "variants": []}
    for bad, key in (('x_exp = ""', "match.x_exp"), ("variants = []", "match.variants"),
                     ("route_prefix = [1]", "match.route_prefix"), ('name = "x"', "match.name")):
        with pytest.raises(ConfigError) as caught:
            config_mod.parse(_rollout("a", bad))
        assert caught.value.key == key
    with pytest.raises(ConfigError, match=r"limits\.max_rollouts"):
        config_mod.parse(_rollout("a", 'x_exp = "e"', "[limits]\nmax_rollouts = 0"))


def test_load_dir_skips_bad_files_with_one_line_each(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text(_rollout("a", 'x_exp = "exp-a"'))
    (tmp_path / "b.toml").write_text(_rollout("b", 'x_exp = "exp-b"'))
    (tmp_path / "broken.toml").write_text("[rollout\n")
    (tmp_path / "nomatch.toml").write_text(_rollout("c", "").replace("[match]\n", ""))
    (tmp_path / "twin.toml").write_text(_rollout("a", 'x_exp = "exp-other"'))
    (tmp_path / "notes.txt").write_text("not a rollout")
    fleet = load_dir(tmp_path)
    assert list(fleet.files) == ["a", "b"]
    assert [p.split(":")[0] for p in fleet.problems] == ["broken.toml", "nomatch.toml", "twin.toml"]
    assert all("\n" not in p for p in fleet.problems)
    assert "already a.toml's" in fleet.problems[2]
    with pytest.raises(FleetError, match="not a directory"):
        load_dir(tmp_path / "a.toml")


def test_load_dir_bound_never_displaces_a_running_rollout(tmp_path: Path) -> None:
    limit = "[limits]\nmax_rollouts = 2"
    for name in ("b", "c"):
        (tmp_path / f"{name}.toml").write_text(_rollout(name, f'x_exp = "exp-{name}"', limit))
    running = load_dir(tmp_path)
    assert list(running.files) == ["b", "c"]
    (tmp_path / "a.toml").write_text(_rollout("a", 'x_exp = "exp-a"', limit))
    fleet = load_dir(tmp_path, previous=running)
    assert list(fleet.files) == ["b", "c"]
    assert fleet.problems == ("a.toml: limits.max_rollouts: the fleet already judges 2 rollouts",)
    assert list(load_dir(tmp_path).files) == ["a", "b"]  # a fresh start takes them in file order


def test_a_running_rollout_whose_file_turns_bad_goes_on_under_its_last_good_config(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text(_rollout("a", 'x_exp = "exp-a"'))
    running = load_dir(tmp_path)
    (tmp_path / "a.toml").write_text("[rollout\n")  # e.g. half written
    fleet = load_dir(tmp_path, previous=running, generation=1)
    assert fleet.files == running.files
    (problem,) = fleet.problems
    assert problem.startswith("a.toml: ") and "goes on under its last good config" in problem
    assert load_dir(tmp_path).files == {}  # not running: refused


def test_generations_tell_a_rollout_added_again_from_one_that_stayed(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text(_rollout("a", 'x_exp = "exp-a"'))
    first = load_dir(tmp_path, generation=0)
    (tmp_path / "a.toml").write_text(_rollout("a", 'x_exp = "exp-a"', "[limits]\nmax_rollouts = 7"))
    changed = load_dir(tmp_path, previous=first, generation=1)
    assert changed.files["a"].generation == 0  # the same rollout, its file changed
    (tmp_path / "a.toml").unlink()
    gone = load_dir(tmp_path, previous=changed, generation=2)
    (tmp_path / "a.toml").write_text(_rollout("a", 'x_exp = "exp-a"'))
    assert load_dir(tmp_path, previous=gone, generation=3).files["a"].generation == 3


def test_unmatched_counts_are_bounded() -> None:
    counts = UnmatchedCounts()
    for i in range(MAX_UNMATCHED + 50):
        counts.add(f"exp-{i}", 2)
    counts.add(None)
    assert len(counts.counts) == MAX_UNMATCHED + 1
    assert counts.counts[OTHER] == 2 * 50 + 1 and counts.counts["exp-0"] == 2


def _lines(scenario: str, x_exp: str, minutes: int = 3) -> list[bytes]:
    return list(scenarios.generate(scenario, 5, minutes, experiment=x_exp))


def test_route_chunk_gives_each_rollout_what_a_chunk_of_its_own_would() -> None:
    cfgs = [config_mod.parse(_rollout(n, f'x_exp = ["exp-{n}"]')) for n in ("a", "b")]
    a = [line for line in _lines("healthy", "exp-a") if b'"x_exp":"exp-a"' in line]  # pings carry no x_exp
    b = [line for line in _lines("warm_latency_regression", "exp-b") if b'"x_exp":"exp-b"' in line]
    other = [line.replace(b"exp-a", b"exp-zz", 1) for line in a[:40]]
    broken = [b"{not json", b'{"x_exp": "exp-a"}']
    mixed = [x for pair in zip(a, b, strict=False) for x in pair] + other + broken
    chunk = Chunk("0", mixed, "mixed.jsonl", 1, last=True)
    routed = route_chunk(chunk, Router(cfgs), cfgs, 1 << 20)
    assert set(routed.mine) == {"a", "b"}
    for name, own in (("a", a[:len(b)]), ("b", b[:len(a)])):
        sub, pieces = routed.mine[name]
        assert sub.lines[:len(own)] == own and sub.last
        assert sub.locate(0) == ("mixed.jsonl:1" if name == "a" else "mixed.jsonl:2")
        cfg = cfgs[0] if name == "a" else cfgs[1]
        alone = decode_chunk(sub.lines, 1 << 20, 60, (cfg.control, cfg.canary))
        assert any(isinstance(p, Summary) for p in pieces)
        assert _judged(cfg, pieces, sub) == _judged(cfg, alone, sub)
    # the broken line whose x_exp is readable went to rollout a, as a dead letter in its place
    _, pieces_a = routed.mine["a"]
    assert isinstance(pieces_a[-1], tuple) and pieces_a[-1][1].reason is DeadLetterReason.SCHEMA
    assert [d.reason for d in routed.dead] == [DeadLetterReason.INVALID_JSON]
    assert routed.dead[0].source == f"mixed.jsonl:{len(mixed) - 1}"
    assert sum(routed.unmatched.counts.values()) == len(other)


def _judged(cfg: config_mod.Config, pieces: list[Piece], chunk: Chunk) -> list[dict[str, object]]:
    """The verdict records and dead letters an engine makes of a chunk's pieces, fed and then closed."""
    engine = Engine(cfg)
    out = Feeder(engine).feed(pieces, ChunkEvents(chunk.lines, chunk.locate, 1 << 20), "0") + engine.close()
    assert any(type(x) is Report for x in out)
    return [x.verdict.to_record() if type(x) is Report else {"dead": x.reason, "at": x.source} for x in out]


def test_route_chunk_dead_letters_what_two_rollouts_claim() -> None:
    cfgs = [config_mod.parse(_rollout("a", 'x_exp = "exp-a"')),
            config_mod.parse(_rollout("b", 'route_prefix = "chat."'))]
    lines = [line for line in _lines("healthy", "exp-a", 1) if b'"x_exp":"exp-a"' in line][:5]
    routed = route_chunk(Chunk("3", lines, "telemetry/3", 0, offsets=list(range(10, 15))), Router(cfgs), cfgs,
                         1 << 20)
    assert routed.mine == {}
    assert [d.reason for d in routed.dead] == [DeadLetterReason.AMBIGUOUS_ROLLOUT] * 5
    assert "rollouts a, b" in routed.dead[0].detail and routed.dead[0].source == "telemetry/3@10"


def test_route_chunk_tells_every_rollout_a_partition_ended() -> None:
    cfgs = [config_mod.parse(_rollout(n, f'x_exp = "{n}"')) for n in ("a", "b")]
    routed = route_chunk(Chunk("0", [], "f.jsonl", 1, last=True), Router(cfgs), cfgs, 1 << 20)
    assert {n: (c.lines, c.last, p) for n, (c, p) in routed.mine.items()} == {
        "a": ([], True, []), "b": ([], True, [])}
    assert route_chunk(Chunk("0", [], "f.jsonl", 1), Router(cfgs), cfgs, 1 << 20).mine == {}


def test_router_handles_a_frame_without_events() -> None:
    cfgs = [config_mod.parse(_rollout("a", 'x_exp = "a"'))]
    assert Router(cfgs).route(frames.empty()).tolist() == []
    assert Router([]).route(frames.from_events([make_event()], [0])).tolist() == [UNMATCHED]
    assert np.array_equal(Router(cfgs).route(pl.DataFrame(schema=frames.SCHEMA)), np.zeros(0))


def test_the_control_rereads_the_directory_when_it_changes_and_at_once_on_request(tmp_path: Path) -> None:
    now = [0.0]
    said: list[str] = []
    (tmp_path / "a.toml").write_text(_rollout("a", 'x_exp = "exp-a"'))
    control = FleetControl(tmp_path, said.append, scan_s=60.0, clock=lambda: now[0])
    assert list(control.current()[0].files) == ["a"]
    (tmp_path / "b.toml").write_text(_rollout("b", 'x_exp = "exp-b"'))
    assert list(control.current()[0].files) == ["a"]  # not looked at again before scan_s
    control.request_reload()  # SIGHUP
    fleet, router = control.current()
    assert list(fleet.files) == ["a", "b"] and router.names == ("a", "b")
    assert control.generation("b") == 1 and control.generation("a") == 0 and control.reloads == 1
    (tmp_path / "a.toml").unlink()
    now[0] = 61.0  # the next look finds the change by itself
    assert control.config("a") is None and control.stage("b") == "5%"
    assert said == ["rollouts: + b (b.toml): judged from its next event",
                    "rollouts: - a: its file is gone; its open windows close and it stops"]
    now[0] = 200.0
    control.current()
    assert control.reloads == 2  # nothing changed since: not read again


def test_rollouts_with_their_own_window_sizes_and_variant_names_are_summarised_in_one_pass_as_alone() -> None:
    """One summarising pass over every rollout of a chunk takes each rollout's window size and variants."""
    def config(name: str, control: str, canary: str, windows: str) -> config_mod.Config:
        return config_mod.parse(f'[rollout]\nname = "{name}"\ncontrol = "{control}"\ncanary = "{canary}"\n'
                                f'stage = "50%"\n[windows]\n{windows}\n[match]\nx_exp = "exp-{name}"\n')

    a_cfg = config("a", "control", "canary-v2", "size_s = 60\nhorizon_s = 600")
    b_cfg = config("b", "ctl-b", "can-b", "size_s = 30\nhorizon_s = 300")
    a = [line for line in _lines("healthy", "exp-a") if b'"x_exp":"exp-a"' in line]
    b = [line.replace(b'"variant":"control"', b'"variant":"ctl-b"').replace(b'"variant":"canary-v2"',
                                                                             b'"variant":"can-b"')
         for line in _lines("warm_latency_regression", "exp-b") if b'"x_exp":"exp-b"' in line]
    mixed = [x for pair in zip(a, b, strict=False) for x in pair]
    cfgs = [a_cfg, b_cfg]
    routed = route_chunk(Chunk("0", mixed, "mixed.jsonl", 1, last=True), Router(cfgs), cfgs, 1 << 20)
    for name, cfg in (("a", a_cfg), ("b", b_cfg)):
        sub, pieces = routed.mine[name]
        assert any(isinstance(p, Summary) for p in pieces)
        summary = next(p for p in pieces if isinstance(p, Summary))
        assert all(set(w.sticky) == {cfg.control, cfg.canary} for w in summary.partial.windows)
        assert any(w.sticky[cfg.canary] for w in summary.partial.windows)
        alone = decode_chunk(sub.lines, 1 << 20, cfg.windows.size_s, (cfg.control, cfg.canary))
        judged = _judged(cfg, pieces, sub)
        assert judged == _judged(cfg, alone, sub)
        ends = [datetime.fromisoformat(str(r["window_end"])).timestamp() for r in judged if "window_end" in r]
        assert len(ends) >= 3 and {b - a for a, b in pairwise(ends)} == {cfg.windows.size_s}
