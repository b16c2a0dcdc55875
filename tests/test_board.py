"""The live terminal board renders the decision and every row that is not passing."""

from __future__ import annotations

import dataclasses

from conftest import BASE_TS, make_config, make_event
from rich.console import Console

from pipeline.engine import Engine
from pipeline.io.board import Board
from pipeline.model import DeadLetterReason, DecodeError


def _render(board: Board) -> str:
    console = Console(record=True, width=200, color_system=None)
    console.print(board.render())
    return console.export_text()


def test_board_waits_then_shows_failing_gates_with_observed_and_threshold() -> None:
    board = Board()
    assert "waiting for the first window" in _render(board)
    engine = Engine(make_config())
    events = [make_event(ts=BASE_TS + i % 60, variant=v, region="us-east",
                         tfinal=3000.0 if v == "canary-v2" else 1000.0)
              for i in range(120) for v in ("control", "canary-v2")]
    outs = engine.feed([*events, DecodeError(b"x", DeadLetterReason.INVALID_JSON, "bad")])
    for out in outs + engine.close():
        board.observe(out)
    text = _render(board)
    assert "STOP" in text and "chat-rag-v2" in text and "stage 50%" in text
    assert "p95_warm_latency" in text and "us-east" in text and "1.25" in text
    assert "canary/control p95 tfinal" in text
    assert "dead letters: invalid_json 1" in text
    assert "schema_violations" not in text  # passing rows are only counted


def test_a_fleet_board_lists_every_rollouts_latest_decision_and_the_summary_names_them() -> None:
    board = Board()
    for name, slow in (("search", 1.0), ("chat", 3.0)):
        engine = Engine(dataclasses.replace(make_config(), name=name))
        events = [make_event(ts=BASE_TS + i % 60, variant=v, region="us-east",
                             tfinal=1000.0 * (slow if v == "canary-v2" else 1.0))
                  for i in range(120) for v in ("control", "canary-v2")]
        for out in engine.feed(events) + engine.close():
            board.observe(out)
    assert set(board.latest) == {"search", "chat"}
    assert board.decisions() == f"chat stop, search {board.latest['search'].decision}"
    text = _render(board)
    first = text.splitlines()[0]
    assert "chat" in first and "search" in first and " stop " in first
    assert board.events == 2 * 240  # summed over the rollouts
