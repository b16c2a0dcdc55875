"""Live terminal board: the latest decision and every gate that is not passing."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

from bytewax.outputs import DynamicSink, StatelessSinkPartition
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from pipeline.engine import Report
from pipeline.model import DeadLetter, Decision, GateStatus, Verdict

_DECISION_STYLE = {
    Decision.STOP: "bold white on red",
    Decision.INSUFFICIENT_DATA: "bold black on yellow",
    Decision.PROMOTE: "bold white on green",
    Decision.HOLD: "bold white on blue",
}
_STATUS_STYLE = {
    GateStatus.FAIL: "red",
    GateStatus.INSUFFICIENT_DATA: "yellow",
    GateStatus.WARN: "magenta",
    GateStatus.SKIPPED: "dim",
    GateStatus.PASS: "green",
}


FLEET_SHOWN = 12  # rollouts listed by name on the board and in the summary; the rest are counted


def _num(x: float | None) -> str:
    return "—" if x is None else f"{x:.4g}"


class Board:
    """What the terminal shows; `render` is pure so it can be tested."""

    def __init__(self) -> None:
        self.verdict: Verdict | None = None
        self.verdicts = 0
        self.events = 0  # over every rollout (a fleet run judges several)
        self.events_of: dict[str, int] = {}
        self.latest: dict[str, Verdict] = {}  # per rollout (a fleet run judges several)
        self.dead: Counter[str] = Counter()

    def observe(self, item: Report | DeadLetter) -> None:
        """Fold one dataflow output in."""
        if isinstance(item, DeadLetter):
            self.dead[str(item.reason)] += 1
            return
        self.verdict = item.verdict
        self.verdicts += 1
        rollout = item.verdict.rollout
        self.latest[rollout] = item.verdict
        self.events_of[rollout] = item.totals.get("events_in", self.events_of.get(rollout, 0))
        self.events = sum(self.events_of.values())

    def decisions(self) -> str:
        """Every rollout's latest decision, by name (the first FLEET_SHOWN), for a fleet's summary."""
        shown = [f"{name} {v.decision}" for name, v in sorted(self.latest.items())[:FLEET_SHOWN]]
        more = len(self.latest) - FLEET_SHOWN
        return ", ".join(shown) + (f" and {more} more" if more > 0 else "")

    def render(self) -> Group:
        """The board as rich renderables."""
        v = self.verdict
        if v is None:
            return Group(Text(f"canary-gate: waiting for the first window to close "
                              f"({self.events} events, dead letters {sum(self.dead.values())})"))
        head = Text.assemble(
            (f" {v.decision.upper()} ", _DECISION_STYLE[v.decision]),
            f"  {v.rollout}  stage {v.stage}  window end {v.to_record()['window_end']}",
        )
        if len(self.latest) > 1:  # a fleet: every rollout's latest decision, then the last one in full
            more = len(self.latest) - FLEET_SHOWN
            fleet = Text.assemble(*(part for name, got in sorted(self.latest.items())[:FLEET_SHOWN]
                                    for part in ((f" {got.decision} ", _DECISION_STYLE[got.decision]),
                                                 f" {name}  ")),
                                  f"(+{more} more)" if more > 0 else "")
            head = Text.assemble(fleet, "\n", head)
        table = Table(expand=False, show_lines=False)
        for col in ("gate", "region", "status", "observed", "threshold", "stop", "canary n",
                    "control n"):
            table.add_column(col, no_wrap=True)
        table.add_column("reason", overflow="fold", min_width=30)
        shown = [r for r in v.gates if r.status is not GateStatus.PASS]
        for r in sorted(shown, key=lambda r: -r.status.severity):
            table.add_row(r.gate, r.region or "", Text(str(r.status), _STATUS_STYLE[r.status]),
                          _num(r.observed), _num(r.threshold), "STOP" if r.hard_stop else "",
                          str(r.canary_n), str(r.control_n), r.reason)
        passing = len(v.gates) - len(shown)
        dead = ", ".join(f"{k} {n}" for k, n in sorted(self.dead.items())) or "none"
        foot = Text(f"{passing} rows passing · {self.verdicts} verdicts · "
                    f"{self.events} events · dead letters: {dead}", style="dim")
        return Group(head, table, foot)


class _BoardPartition(StatelessSinkPartition[Any]):
    def __init__(self, sink: BoardSink) -> None:
        self.sink = sink

    def write_batch(self, items: list[Any]) -> None:
        self.sink.show(items)

    def close(self) -> None:
        self.sink.stop()


class BoardSink(DynamicSink[Any]):
    """Shows the board on the terminal while the dataflow runs (one display per process)."""

    def __init__(self, board: Board, console: Console | None = None) -> None:
        self.board = board
        self.console = console or Console()
        if not self.console.is_terminal:
            self.console.width = max(self.console.width, 200)  # a log file has no edge to fit
        self.live: Live | None = None
        self.lock = threading.Lock()

    def show(self, items: list[Any]) -> None:
        """Fold items in and redraw."""
        with self.lock:
            for item in items:
                self.board.observe(item)
            if self.live is None:
                self.live = Live(self.board.render(), console=self.console, refresh_per_second=4)
                self.live.start()
            else:
                self.live.update(self.board.render())

    def stop(self) -> None:
        """Draw the last state and release the terminal."""
        with self.lock:
            if self.live is not None:
                self.live.update(self.board.render())
                self.live.stop()
                self.live = None
                if not self.console.is_terminal:
                    self.console.line()

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _BoardPartition:
        return _BoardPartition(self)
