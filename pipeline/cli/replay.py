"""`canary-gate replay`: judge archived telemetry as one stream; write the timeline, report and what-ifs."""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

import orjson

from pipeline import config as config_mod
from pipeline.cli.common import UsageError, say
from pipeline.model import format_time


def cmd_replay(args: argparse.Namespace) -> int:
    """Judge archives as one stream; write the timeline, dead letters, report and what-ifs."""
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    from pipeline.replay import archive, whatif
    from pipeline.replay import run as replay
    from pipeline.replay.report import render, safe_name

    cfg = config_mod.load(args.config)
    if args.batch_rows < 1:
        raise UsageError(f"--batch-rows must be >= 1, got {args.batch_rows}")
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
          open(paths["windows"], "wb") as windows,
          Progress(TextColumn("replaying"), BarColumn(), DownloadColumn(),
                   TextColumn("{task.fields[events]}"), TimeRemainingColumn(), transient=True,
                   disable=not sys.stderr.isatty(), console=Console(stderr=True)) as progress):
        task = progress.add_task("replay", total=archives.total_bytes, events="")
        seen = [0]

        def advance(batch: replay.ArchiveBatch) -> None:
            seen[0] += len(batch.frame) + len(batch.dead)
            progress.update(task, advance=batch.done_bytes, events=f"{seen[0]:,} events")

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
