"""The live terminal board renders the decision and every row that is not passing."""

from __future__ import annotations

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
