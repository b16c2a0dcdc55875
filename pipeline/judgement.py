"""What one stage's verdicts carry from window to window: evidence, the promotion clock, the stop latch.

The engine (stream and replay) and `replay.rejudge` (what-if thresholds) hand
every closed window to a `Judgement`, which turns it into the verdict:

* the sequential evidence of the ratio and rate gates takes the window
  (evidence.py, fed what each gate's declaration says a window adds), then
  every gate of the registry is judged over the horizon (gates.judge);
* the promotion clock: `promote` needs every verdict clean for `sustain_s`;
* the stop latch: once a verdict of the stage says `stop`, every later one
  at that stage does too, its reasons naming the first stop, until the stage
  changes.  A rollback is never undone by the numbers drifting back.

All three belong to the stage: a verdict at another stage than the last one
starts them afresh (SIGHUP, or a resumed run with another `rollout.stage`).
"""

from __future__ import annotations

from pipeline.aggregate.stats import ClosedWindow, WindowStats
from pipeline.config import Config
from pipeline.evidence import Evidence
from pipeline.gates import Context, all_clean, decide, judge
from pipeline.model import Decision, Verdict, format_time


class Judgement:
    """The judging state of one stage; pickled with the engine for recovery."""

    stage: str
    evidence: Evidence
    clean_since: float | None  # where the current run of clean verdicts began (None: last one not clean)
    latched: str | None  # the stage's first stop, in words

    def __init__(self, stage: str) -> None:
        self._start(stage)

    def _start(self, stage: str) -> None:
        """A new stage: no evidence, no clean run, no stop yet."""
        self.stage = stage
        self.evidence = Evidence()
        self.clean_since = None
        self.latched = None

    def verdict(self, cfg: Config, wid: int, window: ClosedWindow, horizon: WindowStats,
                ctx: Context | None = None) -> Verdict:
        """The verdict of window `wid`: `window` is what it held, `horizon` the merge gates judge."""
        if cfg.stage != self.stage:
            self._start(cfg.stage)
        self.evidence.add(window, cfg)
        rows = judge(horizon, cfg, self.evidence, ctx)
        size = cfg.windows.size_s
        end = float((wid + 1) * size)
        if not all_clean(rows) or self.latched:
            self.clean_since = None
        elif self.clean_since is None:
            self.clean_since = end - size
        sustained = self.clean_since is not None and end - self.clean_since >= cfg.sustain_s
        decision = decide(rows, cfg.stage, sustained)
        if self.latched:
            return Verdict(cfg.name, cfg.stage, end, Decision.STOP, rows, self.latched)
        verdict = Verdict(cfg.name, cfg.stage, end, decision, rows)
        if decision is Decision.STOP:
            first = "; ".join(r.described for r in rows if r.hard_stop)
            self.latched = (f"stop latched at stage {cfg.stage} since the window ending "
                            f"{format_time(end)} ({verdict.id}): {first}")
        return verdict


__all__ = ["Judgement"]
