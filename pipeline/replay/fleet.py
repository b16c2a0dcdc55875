"""Replay of a fleet: archives of a shared telemetry stream judged for every rollout of a directory.

`replay --rollouts DIR ARCHIVE...` reads the archives once.  Each batch is
routed as the stream routes a chunk (`fleet.Router`: accepted events by their
x_exp, route and variant, broken messages by what can still be read of them),
and each rollout's rows, keeping their places in the batch, go to that
rollout's own `Replayer` (the one-rollout replay's), so each rollout's
timeline is the one `replay --config` gives over its events alone.  Messages
no single rollout claims are the fleet's: broken ones and those two rollouts
claim go to the fleet's dead letters; accepted events of no rollout are
counted by x_exp.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np
import numpy.typing as npt
import orjson
import polars as pl

from pipeline.config import Config
from pipeline.decode.codec import readable_routing
from pipeline.engine import Output, Report
from pipeline.fleet import AMBIGUOUS, UNMATCHED, Router, UnmatchedCounts, ambiguity
from pipeline.model import DeadLetter, DeadLetterReason
from pipeline.replay.run import ArchiveBatch, Outcome, Replayer, window_record


@dataclass
class RolloutFiles:
    """Where one rollout's replay writes: its verdicts, dead letters and window statistics."""

    verdicts: IO[bytes]
    dead_letters: IO[bytes]
    windows: IO[bytes]


@dataclass
class FleetOutcome:
    """What a fleet replay found: each rollout's outcome, and what no single rollout claimed."""

    rollouts: dict[str, Outcome]
    unmatched: UnmatchedCounts = field(default_factory=UnmatchedCounts)
    dead_letters: int = 0  # the fleet's: broken messages of no rollout, messages two rollouts claim
    events: int = 0


def replay_fleet(cfgs: list[Config], batches: Iterable[ArchiveBatch], files: dict[str, RolloutFiles],
                 fleet_dead: IO[bytes],
                 on_batch: Callable[[ArchiveBatch], None] | None = None) -> FleetOutcome:
    """Judge every rollout of `cfgs` over the archives, read once; write as windows close."""
    router = Router(cfgs)
    replayers = {cfg.name: Replayer(cfg) for cfg in cfgs}
    found = FleetOutcome({cfg.name: Outcome() for cfg in cfgs})
    by_name = {cfg.name: cfg for cfg in cfgs}

    def emit(name: str, items: list[Output]) -> None:
        outcome, out = found.rollouts[name], files[name]
        for item in items:
            if isinstance(item, Report):
                outcome.verdicts.append(item.verdict)
                record = window_record(item, by_name[name])
                outcome.windows.append(record)
                out.verdicts.write(orjson.dumps(item.verdict.to_record()) + b"\n")
                out.windows.write(orjson.dumps(record) + b"\n")
            else:
                outcome.dead_letters += 1
                out.dead_letters.write(orjson.dumps(item.to_record()) + b"\n")

    for batch in batches:
        frame, dead = batch.frame, batch.dead
        found.events += len(frame) + len(dead)
        routes = router.route(frame)
        dead_routes = router.route_dead(dead)
        source = Path(batch.source).name
        _fleet_letters(batch, routes, dead_routes, router, out=fleet_dead, found=found)
        for i, name in enumerate(router.names):
            mine = routes == i
            own_dead = [d for d, to in zip(dead, dead_routes, strict=True) if to == i]
            if not mine.any() and not own_dead:
                continue
            found.rollouts[name].events += int(mine.sum()) + len(own_dead)
            own = frame.filter(pl.Series(mine)) if not mine.all() else frame
            emit(name, replayers[name].feed(own, own_dead, source, batch.raws))
        if on_batch is not None:
            on_batch(batch)
    for name, replayer in replayers.items():
        emit(name, replayer.close())
        outcome = found.rollouts[name]
        outcome.kept = replayer.engine.kept or []
        outcome.totals = {**replayer.engine.totals, "summarized": replayer.summarized,
                          "one_by_one": replayer.one_by_one}
    return found


def _fleet_letters(batch: ArchiveBatch, routes: npt.NDArray[np.int64], dead_routes: list[int], router: Router,
                   *, out: IO[bytes], found: FleetOutcome) -> None:
    """Count what no rollout claims and dead-letter what none or two claim (a batch's, in row order)."""
    frame, dead, source = batch.frame, batch.dead, Path(batch.source).name
    unmatched = routes == UNMATCHED
    if unmatched.any():
        counts = frame.filter(pl.Series(unmatched)).group_by("x_exp").len()
        found.unmatched.add_all((None if v is None else str(v), int(n)) for v, n in counts.iter_rows())
    letters: list[tuple[int, DeadLetter]] = []
    for (row, error), to in zip(dead, dead_routes, strict=True):
        if to == UNMATCHED:
            letters.append((row, DeadLetter(error.raw, error.reason, error.detail, error.variant,
                                            f"{source}:{row + 1}")))
        elif to == AMBIGUOUS:
            names = router.claimants(*readable_routing(error.raw))
            letters.append((row, _ambiguous(error.raw, names, error.variant, f"{source}:{row + 1}",
                                            f"; and {error.reason}: {error.detail}")))
    ambiguous = np.flatnonzero(routes == AMBIGUOUS)
    if len(ambiguous):
        rows = frame["row"].to_numpy()[ambiguous].tolist()
        values = frame.select("x_exp", "route", "variant")[ambiguous.tolist()].rows()
        for row, raw, (x_exp, route, variant) in zip(rows, batch.raws(rows), values, strict=True):
            letters.append((row, _ambiguous(raw, router.claimants(x_exp, route, variant), variant,
                                            f"{source}:{row + 1}", "")))
    for _, letter in sorted(letters, key=lambda x: x[0]):
        found.dead_letters += 1
        out.write(orjson.dumps(letter.to_record()) + b"\n")


def _ambiguous(raw: bytes, names: list[str], variant: str | None, source: str, also: str) -> DeadLetter:
    return DeadLetter(raw, DeadLetterReason.AMBIGUOUS_ROLLOUT, ambiguity(names, also), variant, source)


__all__ = ["FleetOutcome", "RolloutFiles", "replay_fleet"]
