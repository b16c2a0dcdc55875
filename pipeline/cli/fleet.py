"""`canary-gate run --rollouts DIR`: one run judges every rollout of a directory (docs/fleet.md).

The same options as a one-rollout run, with a directory of rollout configs in
place of `--config`: the source, outputs, metrics, board, processes and
recovery work alike; what differs is the dataflow (`flow.build_fleet_flow`),
the rollouts it follows (`io.rollouts.FleetControl`, re-read on change and on
SIGHUP) and the metrics (every rollout's, and the fleet's own).
"""

from __future__ import annotations

import argparse
import signal
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.cli.common import UsageError, is_kafka, say
from pipeline.cli.run import (
    FLEET_NAME,
    RunOptions,
    SetupFailed,
    add_observers,
    open_plan,
    options_of,
    prepare_recovery,
    run_flow,
    run_held,
)
from pipeline.cli.signals import HUP_EARLY
from pipeline.fleet import FleetError
from pipeline.io.rollouts import DirectoryReader, FleetControl, Reader

JOURNALS = "journals"  # in --recovery-dir: one verdict journal per rollout (flow._RolloutJudge)

if TYPE_CHECKING:
    from pipeline.io.health import SourceHealth
    from pipeline.io.observe import ObserveSink


def cmd_run_fleet(args: argparse.Namespace) -> int:
    """Judge every rollout of --rollouts DIR from one source."""
    try:
        control = FleetControl(open_rollouts(args.rollouts, args.kafka_config), say)
    except FleetError as exc:
        raise UsageError(str(exc)) from None
    if not control.fleet.files:
        say(f"warning: --rollouts {args.rollouts}: no rollout loaded yet; rollouts added to it are judged "
            "from their first event")
    if is_kafka(args.rollouts) and args.processes > 1:
        say("note: each process follows the rollouts topic itself")
    opts = options_of(args, FLEET_NAME)
    return run_held(args, opts, prepare_recovery(None, args.source, opts, args.rollouts),
                    lambda: run_fleet(control, args.source, opts))


def open_rollouts(where: str, kafka_config: str | None, *, follow: bool = True) -> Reader:
    """--rollouts: a directory, or kafka://HOST:PORT/TOPIC (a compacted topic of rollout configs)."""
    if not is_kafka(where):
        return DirectoryReader(Path(where))
    from pipeline.io import kafka

    try:
        extra = kafka.load_client_config(kafka_config)
        return kafka.RolloutTopic(kafka.parse_url(where), extra, follow=follow)
    except kafka.KafkaSetupError as exc:
        raise UsageError(f"--rollouts {exc}") from None


def run_fleet(control: FleetControl, source: str, opts: RunOptions) -> int:
    """Build and run the fleet dataflow; the one-line summary; the exit code."""
    from pipeline.flow import build_fleet_flow
    from pipeline.io.health import SourceHealth

    health = SourceHealth()
    try:
        plan = open_plan(None, source, opts)
    except SetupFailed as exc:
        say(str(exc))
        return 1
    notes: list[ObserveSink] = []
    board_sink = add_observers(plan.sinks, opts, lambda: _serve_metrics(control, opts, health, notes))
    plan.sinks.notes.extend(notes)
    _install_reload(control)
    journals = Path(opts.recovery_dir) / JOURNALS if opts.recovery_dir else None
    flow = build_fleet_flow(control, plan.source, plan.sinks, partitions=plan.partitions, clock=plan.clock,
                            workers=opts.total_workers, say=say, journals=journals)
    return run_flow(flow, plan, opts, board_sink)


def _serve_metrics(control: FleetControl, opts: RunOptions, health: SourceHealth,
                   notes: list[ObserveSink]) -> ObserveSink:
    """Serve /metrics and /verdicts for every rollout; the observer of verdicts (fleet notes in `notes`)."""
    from pipeline.io.http import serve
    from pipeline.io.metrics import CanaryCollector
    from pipeline.io.observe import ObserveSink

    collector = CanaryCollector(health=health, rollouts=tuple(control.fleet.files), fleet=control)
    try:
        serve(collector, opts.metrics_port, opts.metrics_addr, stage=control.stage)
    except OSError as exc:
        raise UsageError(f"--metrics-port {opts.metrics_port}: cannot listen: {exc.strerror}") from None
    notes.append(ObserveSink(collector.note))
    return ObserveSink(collector.observe)


def _install_reload(control: FleetControl) -> None:
    """SIGHUP re-reads the rollouts directory before the next batch (one that came early, too)."""
    if not hasattr(signal, "SIGHUP"):
        return
    signal.signal(signal.SIGHUP, lambda signum, frame: control.request_reload())
    if HUP_EARLY.is_set():
        control.request_reload()


__all__ = ["cmd_run_fleet", "run_fleet"]
