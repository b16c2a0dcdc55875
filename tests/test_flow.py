"""The Bytewax dataflow over every generated scenario, with one and two workers."""

from __future__ import annotations

import functools
import itertools

import pytest
from bytewax.testing import TestingSink, TestingSource, cluster_main, run_main

from pipeline import config as config_mod
from pipeline import scenarios
from pipeline.engine import Report
from pipeline.flow import Sinks, StageControl, build_flow
from pipeline.io.chunk import Chunk
from pipeline.model import DeadLetter, GateStatus

MINUTES = 16
SEED = 11


@functools.cache
def _chunks(name: str, size: int = 500) -> list[Chunk]:
    lines = list(scenarios.generate(name, SEED, max(MINUTES, scenarios.SCENARIOS[name].min_minutes)))
    return [Chunk("0", lines[i : i + size], name, i + 1, last=i + size >= len(lines))
            for i in range(0, len(lines), size)]


def _run(name: str, workers: int, control: StageControl | None = None) -> tuple[list, list]:
    cfg = config_mod.parse(scenarios.scenario_config(name))
    verdicts: list = []
    dead: list = []
    flow = build_flow(cfg, TestingSource(_chunks(name), batch_size=4),
                      Sinks([TestingSink(verdicts)], [TestingSink(dead)]), control=control)
    if workers == 1:
        run_main(flow)
    else:
        cluster_main(flow, [], 0, worker_count_per_proc=workers)
    return [v for _, v in verdicts], [d for _, d in dead]


@pytest.mark.parametrize("name", sorted(scenarios.SCENARIOS))
def test_scenario_decision_with_one_and_two_workers(name: str) -> None:
    expected = scenarios.SCENARIOS[name]
    one, dead_one = _run(name, 1)
    two, dead_two = _run(name, 2)
    assert all(isinstance(r, Report) for r in one)
    assert all(isinstance(d, DeadLetter) for d in dead_one)
    last = one[-1].verdict
    assert last.decision == expected.expected_decision, last.reasons
    want = GateStatus.FAIL if expected.expected_decision == "stop" else GateStatus.INSUFFICIENT_DATA
    for gate in expected.expected_gates:
        assert last.gate_status(gate) is want, (gate, last.reasons)
    if expected.expected_decision == "promote":
        assert all(r.status.clean for r in last.gates), last.reasons
    # one verdict per window, in order, from the first event's window to the last
    ends = [r.verdict.window_end for r in one]
    assert ends == sorted(set(ends))
    assert all(b - a == 60 for a, b in itertools.pairwise(ends))
    # two workers judge exactly alike
    assert [r.verdict.to_record() for r in two] == [r.verdict.to_record() for r in one]
    assert [(d.reason, d.source) for d in dead_two] == [(d.reason, d.source) for d in dead_one]


def test_dead_letters_carry_reason_and_line() -> None:
    _, dead = _run("schema_violations", 1)
    assert {str(d.reason) for d in dead} >= {"invalid_json", "schema"}
    lines = _chunks("schema_violations")
    by_number = {c.first + i: line for c in lines for i, line in enumerate(c.lines)}
    for d in dead:
        name, number = d.source.rsplit(":", 1)
        assert name == "schema_violations"
        assert by_number[int(number)] == d.raw


def test_out_of_order_late_events_are_dead_lettered() -> None:
    _, dead = _run("out_of_order", 1)
    assert [str(d.reason) for d in dead] and all(str(d.reason) == "late" for d in dead)


def test_stage_control_changes_the_stage_of_later_verdicts() -> None:
    control = StageControl("1%")
    verdicts, _ = _run("coverage_drop", 1, control)
    assert {r.verdict.stage for r in verdicts} == {"1%"}
    # coverage stops only from 5%: at 1% the failing gate does not stop
    assert verdicts[-1].verdict.decision != "stop"
