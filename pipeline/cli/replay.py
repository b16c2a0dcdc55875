"""`canary-gate replay`: judge archived telemetry as one stream; write the timeline, report and what-ifs."""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import orjson

from pipeline import config as config_mod
from pipeline.cli.common import UsageError, say
from pipeline.model import format_time


def cmd_replay(args: argparse.Namespace) -> int:
    """Judge archives as one stream; write the timeline, dead letters, report and what-ifs."""
    from pipeline.replay import archive, whatif
    from pipeline.replay import run as replay
    from pipeline.replay.report import render, safe_name

    if args.batch_rows < 1:
        raise UsageError(f"--batch-rows must be >= 1, got {args.batch_rows}")
    if args.rollouts:
        return replay_fleet(args)
    cfg = config_mod.load(args.config)
    base_text = config_mod.read_text(args.config)
    what_ifs = []
    for path in args.thresholds:
        try:
            what_ifs.append((path, whatif.what_if_config(base_text, config_mod.read_text(path))))
        except config_mod.ConfigError as exc:  # names the file itself when it could not be read
            raise UsageError(f"--thresholds {exc if exc.key == path else f'{path}: {exc}'}") from None
    out_dir = Path(args.out)
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out {out_dir}: not a directory")
    try:
        archives = archive.open_archives(args.archives, args.batch_rows, cfg.limits.max_event_bytes)
    except archive.ArchiveError as exc:
        raise UsageError(str(exc)) from None
    out_dir.mkdir(parents=True, exist_ok=True)
    base = out_dir / safe_name(cfg.name)
    paths = {kind: Path(f"{base}.{kind}.jsonl") for kind in ("verdicts", "dead-letters", "windows")}
    started = time.monotonic()
    with (open(paths["verdicts"], "wb") as verdicts, open(paths["dead-letters"], "wb") as dead,
          open(paths["windows"], "wb") as windows, _progress(archives.total_bytes) as advance):
        try:
            outcome = replay.replay(cfg, archives, verdicts=verdicts, dead_letters=dead, windows=windows,
                                    on_batch=advance)
        except archive.ArchiveError as exc:
            say(f"{exc}; verdicts so far are in {paths['verdicts']}")
            return 1
    elapsed = time.monotonic() - started
    decisions = Counter(str(v.decision) for v in outcome.verdicts)
    first = whatif.first_stop(outcome.verdicts)
    say(f"replayed {outcome.events:,} events from {len(archives.files)} archive(s) in {elapsed:.1f} s "
         f"({outcome.events / max(elapsed, 1e-9):,.0f} events/s): {len(outcome.verdicts)} verdicts ("
         + ", ".join(f"{d} {n}" for d, n in sorted(decisions.items())) + f"), first stop "
         f"{format_time(first.window_end) if first else 'never'}, {outcome.dead_letters} dead letters; "
         f"timeline in {paths['verdicts']}")
    records = []
    for path, alt_cfg in what_ifs:
        alt = list(whatif.rejudge(alt_cfg, outcome.kept))
        text, record = whatif.describe(Path(path).name, whatif.config_changes(cfg, alt_cfg),
                                       outcome.verdicts, alt)
        print(text)
        records.append(record)
        what_if_path = Path(f"{base}.what-if-{safe_name(Path(path).stem)}.verdicts.jsonl")
        what_if_path.write_bytes(b"".join(orjson.dumps(v.to_record()) + b"\n" for v in alt))
    if not args.no_report:
        page = render(out_dir, cfg, [v.to_record() for v in outcome.verdicts], outcome.windows,
                      records or None)
        say(f"report in {page}")
    return 0


def replay_fleet(args: argparse.Namespace) -> int:
    """`replay --rollouts DIR`: every rollout of the directory over the archives, read once."""
    from pipeline.cli.fleet import open_rollouts
    from pipeline.fleet import FleetError
    from pipeline.replay import archive
    from pipeline.replay import fleet as fleet_replay
    from pipeline.replay.report import render, safe_name

    if args.thresholds:
        raise UsageError("--thresholds applies to one rollout: replay it with --config (its what-ifs)")
    try:
        fleet = open_rollouts(args.rollouts, None, follow=False).load(None, 0)
    except FleetError as exc:
        raise UsageError(str(exc)) from None
    for problem in fleet.problems:
        say(f"rollouts: skipped {problem}")
    if not fleet.files:
        raise UsageError(f"--rollouts {args.rollouts}: no rollout to judge")
    cfgs = fleet.configs
    out_dir = Path(args.out)
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out {out_dir}: not a directory")
    try:
        archives = archive.open_archives(args.archives, args.batch_rows,
                                         max(cfg.limits.max_event_bytes for cfg in cfgs))
    except archive.ArchiveError as exc:
        raise UsageError(str(exc)) from None
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        def opened(path: Path) -> IO[bytes]:
            return stack.enter_context(open(path, "wb"))

        files = {cfg.name: fleet_replay.RolloutFiles(
            *(opened(out_dir / f"{safe_name(cfg.name)}.{kind}.jsonl")
              for kind in ("verdicts", "dead-letters", "windows"))) for cfg in cfgs}
        fleet_dead = opened(out_dir / "fleet.dead-letters.jsonl")
        advance = stack.enter_context(_progress(archives.total_bytes))
        try:
            found = fleet_replay.replay_fleet(cfgs, archives, files, fleet_dead, on_batch=advance)
        except archive.ArchiveError as exc:
            say(f"{exc}; verdicts so far are in {out_dir}")
            return 1
    elapsed = time.monotonic() - started
    say(f"replayed {found.events:,} events from {len(archives.files)} archive(s) for {len(cfgs)} rollouts in "
        f"{elapsed:.1f} s ({found.events / max(elapsed, 1e-9):,.0f} events/s); "
        f"{sum(found.unmatched.counts.values()):,} events of no rollout, {found.dead_letters} fleet dead "
        f"letters in {out_dir / 'fleet.dead-letters.jsonl'}")
    for cfg in cfgs:
        outcome = found.rollouts[cfg.name]
        decisions = Counter(str(v.decision) for v in outcome.verdicts)
        say(f"  {cfg.name}: {outcome.events:,} events, {len(outcome.verdicts)} verdicts ("
            + ", ".join(f"{d} {n}" for d, n in sorted(decisions.items())) + f"), last "
            f"{outcome.verdicts[-1].decision if outcome.verdicts else 'none'}; "
            f"{out_dir / (safe_name(cfg.name) + '.verdicts.jsonl')}")
        if not args.no_report:
            render(out_dir, cfg, [v.to_record() for v in outcome.verdicts], outcome.windows, None)
    return 0


@contextlib.contextmanager
def _progress(total_bytes: int) -> Iterator[Callable[[Any], None]]:
    """A progress bar on stderr (when it is a terminal); yields what advances it by a read batch."""
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("replaying"), BarColumn(), DownloadColumn(), TextColumn("{task.fields[events]}"),
                  TimeRemainingColumn(), transient=True, disable=not sys.stderr.isatty(),
                  console=Console(stderr=True)) as progress:
        task = progress.add_task("replay", total=total_bytes, events="")
        seen = [0]

        def advance(batch: Any) -> None:  # a replay.ArchiveBatch
            seen[0] += len(batch.frame) + len(batch.dead)
            progress.update(task, advance=batch.done_bytes, events=f"{seen[0]:,} events")

        yield advance
